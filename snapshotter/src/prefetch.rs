//! Prefetch lists, the snapshotter's side (berthd stores them beside the
//! layer's seek index; see its `registry/prefetch.rs`).
//!
//! A lazy start reads a few scattered parts of each layer, and each read
//! that misses waits a round trip to berthd and from there to S3: over a
//! link with tens of milliseconds of latency, a Python start's hundreds of
//! small reads add up to seconds. So a mount asks berthd for the layer's
//! list first:
//! - **a list exists**: its chunks are fetched at once, several requests
//!   in flight, in runs of adjacent chunks, ahead of the container's reads
//!   (which wait for a run already in flight instead of asking again);
//! - **none yet**: this mount records which chunks the container's reads
//!   fetched, in order, and stores the list once the reads go quiet, so
//!   every later mount of the layer on any node starts from it.
//!
//! The list is only a hint: every chunk is still checked against the
//! index's digest, and a list that cannot be read or stored costs nothing
//! but the speed-up.

use crate::layer::{Layer, FILL_RUN};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// Requests a list's fetch keeps in flight.
const IN_FLIGHT: usize = 4;
/// The reads count as a start's once no new chunk was fetched for this long.
const QUIET: Duration = Duration::from_secs(2);
/// A recording ends this long after it began, quiet or not.
const RECORD_AT_MOST: Duration = Duration::from_secs(60);

/// Fetches the layer's prefetch list, or records one (see the module docs).
pub async fn run(layer: Arc<Layer>) {
    let (berthd, source) = layer.source();
    match berthd.prefetch_list(source).await {
        Ok(Some(chunks)) => fetch_listed(&layer, &chunks).await,
        Ok(None) => record(&layer).await,
        Err(e) => {
            tracing::info!(layer = %source.digest, error = %e, "no prefetch list; reads are fetched as they come")
        }
    }
}

/// The list's missing chunks as runs `(first, n)` of adjacent chunks, at
/// most [`FILL_RUN`] long (what berthd inflates in one request), in the
/// order the list first names a chunk of each run; chunks past `total` or
/// already `present` dropped.
pub fn runs(chunks: &[u32], total: usize, present: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
    let mut sorted: Vec<usize> = chunks.iter().map(|&c| c as usize).filter(|&c| c < total && !present(c)).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for c in sorted {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == c && *n < FILL_RUN => *n += 1,
            _ => runs.push((c, 1)),
        }
    }
    let first_named = |run: &(usize, usize)| {
        chunks.iter().position(|&c| (run.0..run.0 + run.1).contains(&(c as usize))).unwrap_or(usize::MAX)
    };
    runs.sort_by_key(first_named);
    runs
}

async fn fetch_listed(layer: &Layer, chunks: &[u32]) {
    let runs = runs(chunks, layer.index.chunks.len(), |c| layer.has_chunk(c));
    let started = std::time::Instant::now();
    let fetched: Vec<_> = futures_util::stream::iter(runs.iter().copied())
        .map(|(first, n)| async move { layer.fetch_ahead(first, n).await })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let (mut chunks_done, mut bytes, mut failed) = (0, 0, 0);
    for r in fetched {
        match r {
            Ok((c, b)) => (chunks_done, bytes) = (chunks_done + c, bytes + b),
            Err(e) => {
                failed += 1;
                tracing::debug!(error = %e, "a prefetch run failed; its reads fetch it themselves");
            }
        }
    }
    tracing::info!(
        layer = %layer.source().1.digest,
        runs = runs.len(),
        chunks = chunks_done,
        bytes,
        failed,
        ms = started.elapsed().as_millis() as u64,
        "prefetched the layer's list"
    );
}

async fn record(layer: &Layer) {
    layer.record();
    let began = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Some((n, last)) = layer.recorded() else { return };
        let quiet = last.is_some_and(|t| t.elapsed() >= QUIET);
        if (n > 0 && quiet) || began.elapsed() >= RECORD_AT_MOST {
            break;
        }
    }
    let Some(rec) = layer.take_recording() else { return };
    if rec.chunks.is_empty() {
        return;
    }
    let (berthd, source) = layer.source();
    let n = rec.chunks.len();
    match berthd.put_prefetch_list(source, rec.chunks).await {
        Ok(()) => tracing::info!(layer = %source.digest, chunks = n, "recorded the layer's prefetch list"),
        // Storing needs push access on berthd's listener: without it the
        // layer's lazy starts go on without a list.
        Err(e) => tracing::warn!(layer = %source.digest, error = %e, "cannot store the layer's prefetch list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_adjacent_chunks_and_keep_the_reads_order() {
        // Read order 9, 2, 3, 10, 4, 5, 0: runs of at most four adjacent
        // chunks, the run of the first chunk read first.
        let none = |_| false;
        assert_eq!(runs(&[9, 2, 3, 10, 4, 5, 0], 11, none), vec![(9, 2), (2, 4), (0, 1)]);
        // Chunks on disk already split runs; chunks past the layer's end (a
        // list for other chunking) are dropped.
        assert_eq!(runs(&[2, 3, 4, 5], 11, |c| c == 3), vec![(2, 1), (4, 2)]);
        assert_eq!(runs(&[1, 50], 4, none), vec![(1, 1)]);
        assert!(runs(&[], 4, none).is_empty());
    }
}
