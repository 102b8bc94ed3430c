//! `berthd gc [--config FILE] [--dry-run] [--delay DURATION]`: one garbage
//! collection against the configured storage while every node keeps
//! serving (see [`crate::registry::gc`]). Prints each blob no manifest
//! reaches in registry:2's words (`blob eligible for deletion: <digest>`)
//! and a summary. Exit status: 0 done, 1 another collection holds the
//! lease, 2 the configuration or the storage could not be used.

use super::progress::Bar;
use crate::config::Config;
use crate::registry::gc::{GarbageReport, GcOptions};
use std::io::Write;
use std::time::Duration;

/// Runs one collection (or, with `dry_run`, reports what it would do),
/// never through the node cache.
pub async fn run(
    config: &Config,
    dry_run: bool,
    delay: Duration,
    out: &mut dyn Write,
) -> Result<GarbageReport, crate::Error> {
    let registry = crate::server::build_maintenance_registry(config).await?;
    let bar = Bar::new();
    let opts = GcOptions { dry_run, delay, holder: crate::registry::gc::this_collector() };
    let report = registry.collect(&opts, &bar).await;
    bar.finish();
    let report = report?;
    print(&report, dry_run, delay, out).map_err(crate::Error::Serve)?;
    Ok(report)
}

fn print(r: &GarbageReport, dry_run: bool, delay: Duration, out: &mut dyn Write) -> std::io::Result<()> {
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
    let (would, verb) = if dry_run { ("would be ", "would be ") } else { ("", "") };
    writeln!(
        out,
        "{} blobs ({:.1} MiB) {would}moved to the trash (written more than {}s ago); {} trash entries ({:.1} MiB) {verb}deleted, {} {verb}moved back",
        r.trashed,
        mib(r.trashed_bytes),
        delay.as_secs(),
        r.deleted,
        mib(r.deleted_bytes),
        r.restored
    )?;
    for (phase, secs) in &r.timings {
        writeln!(out, "  {phase}: {secs:.1} s")?;
    }
    // What the run cost: storage requests (S3 calls on S3) and memory.
    let requests = crate::metrics::get().storage_requests.load(std::sync::atomic::Ordering::Relaxed);
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    writeln!(out, "  storage requests: {requests}; peak memory: {:.1} MiB", peak_kib as f64 / 1024.0)?;
    if dry_run {
        writeln!(out, "dry run: nothing was changed")?;
    } else if r.trashed > 0 {
        writeln!(out, "trashed blobs are deleted by a collection that runs more than {}s from now", delay.as_secs())?;
    }
    Ok(())
}
