//! `berthd fsck [--config FILE] [--repair]`: verifies the registry's
//! storage (see [`crate::registry::fsck`]) and prints what it found.
//! Exit status: 0 clean, 1 problems found (quarantined with `--repair`),
//! 2 the configuration or the storage could not be used.

use super::progress::Bar;
use crate::config::Config;
use crate::registry::fsck::Report;
use std::io::Write;

/// Runs the check against the configured storage, never through the node
/// cache (it checks the shared bucket, and would otherwise fill the cache
/// with every blob).
pub async fn run(config: &Config, repair: bool, out: &mut dyn Write) -> Result<bool, crate::Error> {
    let registry = crate::server::build_maintenance_registry(config).await?;
    let bar = Bar::new();
    let report = registry.fsck(repair, &bar).await;
    bar.finish();
    let report = report?;
    print_summary(&report, repair, out).map_err(crate::Error::Serve)?;
    Ok(report.is_clean())
}

fn print_summary(r: &Report, repair: bool, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "checked {} blobs ({:.1} MiB), {} links, {} manifests",
        r.blobs,
        r.bytes as f64 / 1048576.0,
        r.links,
        r.manifests
    )?;
    for (phase, secs) in &r.timings {
        writeln!(out, "  {phase}: {secs:.1} s")?;
    }
    if r.is_clean() {
        writeln!(out, "no problems found")?;
        return Ok(());
    }
    writeln!(
        out,
        "problems: {} damaged blobs, {} unreadable links, {} dangling links, {} manifests missing references",
        r.damaged_blobs.len(),
        r.unreadable_links.len(),
        r.dangling_links.len(),
        r.incomplete_manifests.len()
    )?;
    if repair {
        writeln!(out, "quarantined {} objects under /berth/quarantine; push the affected images again", r.quarantined)?;
    } else if !r.damaged_blobs.is_empty() || !r.unreadable_links.is_empty() {
        writeln!(out, "run `berthd fsck --repair` to quarantine what is damaged, then push the affected images again")?;
    } else {
        writeln!(out, "push the affected images again")?;
    }
    Ok(())
}
