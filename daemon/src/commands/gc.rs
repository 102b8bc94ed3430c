//! `berthd gc --dry-run [--config FILE]`: reports what a garbage
//! collection would free (see [`crate::registry::gc`]), in registry:2's
//! words (`blob eligible for deletion: <digest>`), and deletes nothing.
//! Exit status: 0 reported, 2 the configuration or the storage could not
//! be used, or asked to delete (not built yet).

use super::progress::Bar;
use crate::config::Config;
use crate::registry::gc::GarbageReport;
use std::io::Write;

/// Runs the mark against the configured storage (never through the node
/// cache) and prints what is eligible.
pub async fn run(config: &Config, out: &mut dyn Write) -> Result<GarbageReport, crate::Error> {
    let registry = crate::server::build_maintenance_registry(config).await?;
    let bar = Bar::new();
    let report = registry.garbage(&bar).await;
    bar.finish();
    let report = report?;
    print(&report, out).map_err(crate::Error::Serve)?;
    Ok(report)
}

fn print(r: &GarbageReport, out: &mut dyn Write) -> std::io::Result<()> {
    let mib = |n: u64| n as f64 / 1048576.0;
    for (digest, _) in &r.eligible {
        writeln!(out, "blob eligible for deletion: {digest}")?;
    }
    writeln!(
        out,
        "{} repositories, {} manifests marked; {} blobs ({:.1} MiB) stored, {} eligible for deletion ({:.1} MiB)",
        r.repositories,
        r.manifests,
        r.blobs,
        mib(r.bytes),
        r.eligible.len(),
        mib(r.eligible_bytes())
    )?;
    for (phase, secs) in &r.timings {
        writeln!(out, "  {phase}: {secs:.1} s")?;
    }
    writeln!(out, "dry run: nothing was deleted")
}
