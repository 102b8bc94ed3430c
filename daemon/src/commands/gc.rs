//! `berthd gc [--config FILE] [--dry-run] [--delete-untagged] [--delay
//! DURATION]`: one garbage collection against the configured storage
//! while every node keeps serving (see [`crate::registry::gc`]). Prints
//! what it removes in registry:2's words (`blob eligible for deletion:
//! <digest>`, `manifest eligible for deletion: <repo>@<digest>`) and a
//! summary. Exit status: 0 done, 1 another collection holds the lease, 2
//! the configuration or the storage could not be used.

use super::progress::Bar;
use crate::config::Config;
use crate::registry::gc::{GarbageReport, GcOptions};
use std::io::Write;
use std::time::Duration;

/// The command line's say; the configuration fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub dry_run: bool,
    /// `storage.gc.delay` unless given.
    pub delay: Option<Duration>,
    /// Or `storage.gc.deleteuntagged`.
    pub delete_untagged: bool,
}

/// Runs one collection (or, with `dry_run`, reports what it would do),
/// never through the node cache.
pub async fn run(config: &Config, flags: &Flags, out: &mut dyn Write) -> Result<GarbageReport, crate::Error> {
    let registry = crate::server::build_maintenance_registry(config).await?;
    let bar = Bar::new();
    let gc = &config.storage.gc;
    let opts = GcOptions {
        dry_run: flags.dry_run,
        delay: flags.delay.unwrap_or(gc.delay),
        holder: crate::registry::gc::this_collector(),
        delete_untagged: flags.delete_untagged || gc.delete_untagged,
        retention: config.storage.retention.clone(),
    };
    let report = registry.collect(&opts, &bar).await;
    bar.finish();
    let report = report?;
    print(&report, &opts, out).map_err(crate::Error::Serve)?;
    Ok(report)
}

fn print(r: &GarbageReport, opts: &GcOptions, out: &mut dyn Write) -> std::io::Result<()> {
    let mib = |n: u64| n as f64 / 1048576.0;
    for tag in &r.tags_removed {
        writeln!(out, "tag removed by retention: {tag}")?;
    }
    for m in &r.manifests_removed {
        writeln!(out, "manifest eligible for deletion: {m}")?;
    }
    for (digest, _) in &r.eligible {
        writeln!(out, "blob eligible for deletion: {digest}")?;
    }
    let (would, delay) = (if opts.dry_run { "would be " } else { "" }, opts.delay.as_secs());
    writeln!(
        out,
        "{} repositories, {} manifests; {} tags {would}removed by retention, {} manifests {would}moved to the trash (untagged, or referrers whose subject is gone)",
        r.repositories,
        r.manifests,
        r.tags_removed.len(),
        r.manifests_removed.len(),
    )?;
    writeln!(
        out,
        "{} blobs ({:.1} MiB) stored, {} eligible for deletion ({:.1} MiB)",
        r.blobs,
        mib(r.bytes),
        r.eligible.len(),
        mib(r.eligible_bytes())
    )?;
    writeln!(
        out,
        "{} blobs ({:.1} MiB) {would}moved to the trash (written more than {delay}s ago); {} trash entries ({:.1} MiB) {would}deleted, {} {would}moved back",
        r.trashed,
        mib(r.trashed_bytes),
        r.deleted,
        mib(r.deleted_bytes),
        r.restored
    )?;
    writeln!(
        out,
        "{} trashed manifests {would}deleted, {} {would}moved back; {} layer links and {} empty repositories {would}removed",
        r.manifests_deleted, r.manifests_restored, r.links, r.repositories_removed
    )?;
    for (phase, secs) in &r.timings {
        writeln!(out, "  {phase}: {secs:.1} s")?;
    }
    // What the run cost: storage requests (S3 calls on S3) and memory.
    let requests = crate::metrics::get().storage_requests_all.get();
    let peak_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    writeln!(out, "  storage requests: {requests}; peak memory: {:.1} MiB", peak_kib as f64 / 1024.0)?;
    if opts.dry_run {
        writeln!(out, "dry run: nothing was changed")?;
    } else if r.trashed > 0 || !r.manifests_removed.is_empty() {
        writeln!(out, "what was trashed is deleted by a collection that runs more than {delay}s from now")?;
    }
    Ok(())
}
