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

/// Most chunks one prefetch request asks for (4 MiB of tar): long enough
/// that a list's runs seldom split a compressed span between two requests,
/// short enough that [`IN_FLIGHT`] requests share the link.
pub const MAX_RUN: usize = 8;

/// What planning needs of a layer's index: its chunking, and where
/// inflating can start (the checkpoints' tar offsets; none for a plain tar).
pub struct Layout {
    pub chunk_size: u64,
    pub size: u64,
    pub chunks: usize,
    pub checkpoints: Vec<u64>,
}

impl Layout {
    pub fn of(index: &berth_wire::layer_index::LayerIndex) -> Layout {
        Layout {
            chunk_size: index.chunk_size,
            size: index.size,
            chunks: index.chunks.len(),
            checkpoints: index.checkpoints.iter().map(|c| c.out).collect(),
        }
    }

    fn start(&self, chunk: usize) -> u64 {
        chunk as u64 * self.chunk_size
    }

    fn end(&self, chunk: usize) -> u64 {
        (self.start(chunk) + self.chunk_size).min(self.size)
    }

    /// The span (between two checkpoints) holding tar offset `at`.
    fn span(&self, at: u64) -> usize {
        self.checkpoints.partition_point(|&c| c <= at).saturating_sub(1)
    }

    /// Where span `s` ends.
    fn span_end(&self, s: usize) -> u64 {
        self.checkpoints.get(s + 1).copied().unwrap_or(self.size)
    }
}

/// The list's missing chunks as requests `(first, n)` of adjacent chunks,
/// in the order the list first names a chunk of each; chunks past the
/// layer's end or already `present` are left out.
///
/// berthd answers a range of a compressed layer by reading the compressed
/// spans that hold it whole, from the checkpoint before the range to the
/// one after it. So requests are planned on spans: listed chunks that share
/// a span go into one request (with the chunks between them), and each
/// request takes along the chunks that lie wholly inside the spans it
/// reads anyway. No span then crosses the link twice, and the chunks
/// around a read come free. A plain tar costs what is asked: runs of
/// listed chunks, at most [`FILL_RUN`] long (the fill's unit).
pub fn runs(chunks: &[u32], layout: &Layout, present: impl Fn(usize) -> bool) -> Vec<(usize, usize)> {
    let mut wanted: Vec<usize> =
        chunks.iter().map(|&c| c as usize).filter(|&c| c < layout.chunks && !present(c)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let spans = !layout.checkpoints.is_empty();
    let max = if spans { MAX_RUN } else { FILL_RUN };
    // Whether chunk `c` can join a request ending at chunk `last`.
    let joins = |last: usize, c: usize| {
        if spans {
            layout.span(layout.start(c)) <= layout.span(layout.end(last) - 1) && !(last + 1..c).any(&present)
        } else {
            c == last + 1
        }
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for c in wanted {
        match runs.last_mut() {
            Some((first, n)) if c - *first < max && joins(*first + *n - 1, c) => *n = c - *first + 1,
            _ => runs.push((c, 1)),
        }
    }
    if spans {
        // Take along the chunks wholly inside the first and the last span a
        // request reads, up to its neighbours and to chunks on disk.
        for i in 0..runs.len() {
            let (first, n) = runs[i];
            let floor = if i == 0 { 0 } else { runs[i - 1].0 + runs[i - 1].1 };
            let span_start = layout.checkpoints[layout.span(layout.start(first))];
            let mut from = first;
            while from > floor && first + n - from < max && layout.start(from - 1) >= span_start && !present(from - 1) {
                from -= 1;
            }
            let last = first + n - 1;
            let ceiling = runs.get(i + 1).map_or(layout.chunks, |r| r.0);
            let span_end = layout.span_end(layout.span(layout.end(last) - 1));
            let mut to = last;
            while to + 1 < ceiling && to + 1 - from < max && layout.end(to + 1) <= span_end && !present(to + 1) {
                to += 1;
            }
            runs[i] = (from, to - from + 1);
        }
    }
    let first_named = |run: &(usize, usize)| {
        chunks.iter().position(|&c| (run.0..run.0 + run.1).contains(&(c as usize))).unwrap_or(usize::MAX)
    };
    runs.sort_by_key(first_named);
    runs
}

async fn fetch_listed(layer: &Layer, chunks: &[u32]) {
    let runs = runs(chunks, &Layout::of(&layer.index), |c| layer.has_chunk(c));
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

    fn plain(chunks: usize) -> Layout {
        Layout { chunk_size: 1, size: chunks as u64, chunks, checkpoints: Vec::new() }
    }

    /// Ten chunks of 4 bytes; spans [0,10) [10,22) [22,30) [30,40), so
    /// chunks 2, 5 and 7 straddle a checkpoint.
    fn spans() -> Layout {
        Layout { chunk_size: 4, size: 40, chunks: 10, checkpoints: vec![0, 10, 22, 30] }
    }

    #[test]
    fn plain_tar_runs_join_adjacent_chunks_and_keep_the_reads_order() {
        // Read order 9, 2, 3, 10, 4, 5, 0: runs of at most four adjacent
        // chunks, the run of the first chunk read first.
        let none = |_| false;
        assert_eq!(runs(&[9, 2, 3, 10, 4, 5, 0], &plain(11), none), vec![(9, 2), (2, 4), (0, 1)]);
        // Chunks on disk already split runs; chunks past the layer's end (a
        // list for other chunking) are dropped.
        assert_eq!(runs(&[2, 3, 4, 5], &plain(11), |c| c == 3), vec![(2, 1), (4, 2)]);
        assert_eq!(runs(&[1, 50], &plain(4), none), vec![(1, 1)]);
        assert!(runs(&[], &plain(4), none).is_empty());
    }

    #[test]
    fn compressed_runs_read_each_span_once_and_take_along_what_it_holds() {
        let none = |_| false;
        // Chunk 4 lies in span 1, which berthd reads whole: chunk 3 comes
        // along; chunk 2 (which needs span 0 too) and chunk 5 do not.
        assert_eq!(runs(&[4], &spans(), none), vec![(3, 2)]);
        // Chunks 3 and 5 share span 1: one request, chunk 4 between them,
        // and chunk 6, wholly inside span 2 that chunk 5 reaches into.
        assert_eq!(runs(&[5, 3], &spans(), none), vec![(3, 4)]);
        // Chunks in spans apart: two requests, each filled out to its spans,
        // in the list's order.
        assert_eq!(runs(&[8, 1], &spans(), none), vec![(8, 2), (0, 2)]);
        // A chunk on disk splits a request and is never fetched again.
        assert_eq!(runs(&[3, 5], &spans(), |c| c == 4), vec![(3, 1), (5, 2)]);
        // Requests are at most MAX_RUN chunks; past the end is dropped.
        let all: Vec<u32> = (0..12).collect();
        assert_eq!(runs(&all, &spans(), none), vec![(0, MAX_RUN), (MAX_RUN, 10 - MAX_RUN)]);
    }
}
