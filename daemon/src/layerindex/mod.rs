//! Seek indexes for layer blobs, so the snapshotter can mount a layer and
//! read any file without downloading or unpacking the layer first.
//!
//! An index is built from one pass over the blob: the tar's table of
//! contents ([`toc`]), zran checkpoints every [`CHECKPOINT_SPACING`] bytes
//! of uncompressed stream for gzip layers ([`zran`]), and a sha256 per
//! [`CHUNK_SIZE`] chunk of the uncompressed stream, so every byte the
//! snapshotter serves can be checked. It holds nothing but facts derived
//! from content-addressed bytes, so one node builds it and every node of
//! the cluster reuses it from the shared storage.
//!
//! A gzip checkpoint needs the 32 KiB of output before it (the inflate
//! window). Windows are most of an index's bytes, yet a range read needs
//! only one, so they are kept apart, in a windows object beside the index
//! ([`Built::windows`]), and read one at a time: a node fetches the small
//! index before a layer's first read, not every window of the layer.
//!
//! zstd layers are indexed when they are made of several frames (each frame
//! start is a resume point, [`zstd`]); a single-frame zstd layer has no
//! resumable points and is not indexed (the snapshotter falls back to a
//! normal pull).

pub mod signing;
pub mod toc;
pub mod zran;
pub mod zstd;

use crate::digest::Digest;
use base64::Engine;
pub use berth_wire::layer_index::{Compression, LayerIndex, StoredCheckpoint, FORMAT};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

/// Uncompressed bytes per verified chunk: the unit the snapshotter fetches.
pub const CHUNK_SIZE: u64 = 512 * 1024;
/// Uncompressed bytes between zran checkpoints. A read fetches from
/// storage the compressed spans that hold it, so the spacing bounds what
/// one scattered read of a container's start costs on the link; each
/// checkpoint costs a 32 KiB window in the windows object, which is read
/// one window per range and never before the first read. At one chunk
/// the windows take 6 % of the tar's size in storage (17 % of the
/// compressed Python image the benchmark starts), and that start sends
/// 12 % fewer bytes over the link than at 1 MiB (docs/benchmarks.md).
pub const CHECKPOINT_SPACING: u64 = 512 * 1024;
/// The most uncompressed bytes one range read returns.
pub const MAX_RANGE: u64 = 16 * 1024 * 1024;

/// What a build makes: the index, and its checkpoints' windows end to end
/// (empty when there are none: plain tar, zstd), stored beside it.
#[derive(Debug)]
pub struct Built {
    pub index: LayerIndex,
    pub windows: Vec<u8>,
}

/// Counts and hashes bytes as they pass: the compressed side (to check the
/// blob digest) or the uncompressed side (chunk digests).
struct Tap<R> {
    inner: R,
    whole: Option<Sha256>,
    chunk: Option<(Sha256, u64, Vec<String>)>,
    count: u64,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut data = &buf[..n];
        self.count += n as u64;
        if let Some(h) = &mut self.whole {
            h.update(data);
        }
        if let Some((h, filled, done)) = &mut self.chunk {
            while !data.is_empty() {
                let take = data.len().min((CHUNK_SIZE - *filled) as usize);
                h.update(&data[..take]);
                *filled += take as u64;
                data = &data[take..];
                if *filled == CHUNK_SIZE {
                    done.push(hex::encode(std::mem::take(h).finalize()));
                    *filled = 0;
                }
            }
        }
        Ok(n)
    }
}

/// Builds the index of blob `digest` read from `blob`. Fails on a digest
/// mismatch, a corrupt stream, or a tar lazy mounting cannot represent.
pub fn build(blob: impl Read, digest: &Digest, compression: Compression) -> io::Result<Built> {
    if digest.algorithm() != crate::digest::Algorithm::Sha256 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "only sha256 layers are indexed"));
    }
    let compressed = Tap { inner: blob, whole: Some(Sha256::new()), chunk: None, count: 0 };
    let (entries, chunks, size, checkpoints, compressed) = match compression {
        Compression::Gzip => {
            let inflated = zran::IndexingReader::new(compressed, CHECKPOINT_SPACING)?;
            let mut tar = Tap { inner: inflated, whole: None, chunk: Some((Sha256::new(), 0, Vec::new())), count: 0 };
            let entries = toc::read_toc(&mut tar)?;
            // Whatever follows the end-of-archive marker is part of the stream.
            io::copy(&mut tar, &mut io::sink())?;
            let (chunks, size) = finish_chunks(&mut tar);
            let inflated = tar.inner;
            let cps = inflated.checkpoints.clone();
            (entries, chunks, size, cps, inflated.into_inner())
        }
        Compression::Zstd => {
            let frames = zstd::FramesReader::new(compressed);
            let mut tar = Tap { inner: frames, whole: None, chunk: Some((Sha256::new(), 0, Vec::new())), count: 0 };
            let entries = toc::read_toc(&mut tar)?;
            io::copy(&mut tar, &mut io::sink())?;
            let (chunks, size) = finish_chunks(&mut tar);
            let frames = tar.inner;
            if frames.frames.len() < 2 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a single-frame zstd layer has no resume points; it is pulled normally",
                ));
            }
            // Frame starts, at least CHECKPOINT_SPACING apart (producers
            // that write a frame per file would otherwise bloat the index).
            let mut cps: Vec<zran::Checkpoint> = Vec::new();
            for &(input, out) in &frames.frames {
                if cps.last().is_none_or(|l| out - l.out >= CHECKPOINT_SPACING) {
                    cps.push(zran::Checkpoint { out, input, bits: 0, window: Vec::new() });
                }
            }
            (entries, chunks, size, cps, frames.into_inner())
        }
        Compression::None => {
            let mut tar = Tap { inner: compressed, whole: None, chunk: Some((Sha256::new(), 0, Vec::new())), count: 0 };
            let entries = toc::read_toc(&mut tar)?;
            io::copy(&mut tar, &mut io::sink())?;
            let (chunks, size) = finish_chunks(&mut tar);
            (entries, chunks, size, Vec::new(), tar.inner)
        }
    };
    let got = hex::encode(compressed.whole.expect("hashed").finalize());
    if got != digest.hex() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("blob {digest} read back as sha256:{got}; storage is corrupt"),
        ));
    }
    let mut windows = Vec::with_capacity(checkpoints.iter().map(|c| c.window.len()).sum());
    let checkpoints = checkpoints
        .into_iter()
        .map(|c| {
            let at = windows.len() as u64;
            windows.extend_from_slice(&c.window);
            let window_len = c.window.len() as u32;
            let window_sha256 = (!c.window.is_empty()).then(|| hex::encode(Sha256::digest(&c.window)));
            StoredCheckpoint {
                out: c.out,
                input: c.input,
                bits: c.bits,
                window_at: at,
                window_len,
                window_sha256,
                window: String::new(),
            }
        })
        .collect();
    let index = LayerIndex {
        format: FORMAT,
        digest: digest.to_string(),
        compression,
        compressed_size: compressed.count,
        size,
        chunk_size: CHUNK_SIZE,
        chunks,
        checkpoints,
        entries,
    };
    Ok(Built { index, windows })
}

fn finish_chunks<R>(tap: &mut Tap<R>) -> (Vec<String>, u64) {
    let (h, filled, mut done) = tap.chunk.take().expect("chunk hashing");
    if filled > 0 {
        done.push(hex::encode(h.finalize()));
    }
    (done, tap.count)
}

/// Where and how to read the blob for an uncompressed range.
pub struct RangePlan {
    /// Byte of the blob to start reading at.
    pub blob_offset: u64,
    /// How many blob bytes the read needs at most (up to the checkpoint
    /// after the range): a ranged read of the blob, never all of it.
    pub blob_len: u64,
    checkpoint: Option<zran::Checkpoint>,
    /// The window the checkpoint needs from the windows object, until
    /// [`RangePlan::set_window`] supplies it.
    window_needed: Option<(u64, u32)>,
    /// What the needed window must hash to, when the index says.
    window_sha256: Option<String>,
    compression: Compression,
    offset: u64,
    len: usize,
}

/// Plans reading `len` uncompressed bytes at `offset` of the layer `idx`
/// indexes (clamped to the end of the tar and to [`MAX_RANGE`]).
pub fn plan(idx: &LayerIndex, offset: u64, len: u64) -> io::Result<RangePlan> {
    if offset >= idx.size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("offset {offset} is past the end of the {}-byte tar", idx.size),
        ));
    }
    let len = len.min(idx.size - offset).min(MAX_RANGE) as usize;
    match idx.compression {
        compression @ Compression::None => Ok(RangePlan {
            blob_offset: offset,
            blob_len: len as u64,
            checkpoint: None,
            window_needed: None,
            window_sha256: None,
            compression,
            offset,
            len,
        }),
        compression @ (Compression::Gzip | Compression::Zstd) => {
            let i = idx.checkpoints.partition_point(|c| c.out <= offset);
            let c = i.checked_sub(1).map(|i| &idx.checkpoints[i]).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "index has no checkpoint at the start of the stream")
            })?;
            let window = base64::engine::general_purpose::STANDARD
                .decode(&c.window)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("index window: {e}")))?;
            let window_needed = (window.is_empty() && c.window_len > 0).then_some((c.window_at, c.window_len));
            let cp = zran::Checkpoint { out: c.out, input: c.input, bits: c.bits, window };
            let blob_offset = c.input - u64::from(c.bits > 0);
            // Every byte before the next checkpoint's `out` is encoded
            // before its `input` (plus the byte holding its bits); a
            // little slack covers inflate's look-ahead.
            let end = offset + len as u64;
            let blob_end = idx.checkpoints[i..]
                .iter()
                .find(|c| c.out >= end)
                .map_or(idx.compressed_size, |c| (c.input + 64).min(idx.compressed_size));
            Ok(RangePlan {
                blob_offset,
                blob_len: blob_end - blob_offset,
                checkpoint: Some(cp),
                window_needed,
                window_sha256: c.window_sha256.clone(),
                compression,
                offset,
                len,
            })
        }
    }
}

/// The stored form of an index: JSON, zstd-compressed. A large image's
/// table of contents is megabytes of repetitive JSON, and a node reads it
/// from storage before a layer's first read.
pub fn encode(idx: &LayerIndex) -> Vec<u8> {
    let json = serde_json::to_vec(idx).expect("index serializes");
    ruzstd::encoding::compress_to_vec(&json[..], ruzstd::encoding::CompressionLevel::Fastest)
}

/// Reads the stored form; plain JSON too, as berthd stored it before.
pub fn decode(stored: &[u8]) -> io::Result<LayerIndex> {
    let bad = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    if stored.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut json = Vec::new();
        // An index is far smaller than its layer; bound what a damaged
        // object could make this read.
        ruzstd::decoding::StreamingDecoder::new(stored).map_err(|e| bad(&e))?.take(1 << 30).read_to_end(&mut json)?;
        serde_json::from_slice(&json).map_err(|e| bad(&e))
    } else {
        serde_json::from_slice(stored).map_err(|e| bad(&e))
    }
}

/// The span between two checkpoints (`start`, `end` in the tar) that
/// holds all of `[offset, offset + len)`, for a compressed layer: a read
/// inflates from `start` anyway, so the whole span can be kept for the
/// next read of it. `None` for plain tar or a range across spans.
pub fn span_of(idx: &LayerIndex, offset: u64, len: u64) -> Option<(u64, u64)> {
    if idx.compression == Compression::None || offset >= idx.size {
        return None;
    }
    let i = idx.checkpoints.partition_point(|c| c.out <= offset);
    let start = idx.checkpoints.get(i.checked_sub(1)?)?.out;
    let end = idx.checkpoints.get(i).map_or(idx.size, |c| c.out);
    (offset + len.min(idx.size - offset) <= end).then_some((start, end))
}

impl RangePlan {
    /// The (offset, length) in the windows object of the window this read
    /// needs, if it is not in hand yet.
    pub fn window_needed(&self) -> Option<(u64, u32)> {
        self.window_needed
    }

    /// Supplies the window [`RangePlan::window_needed`] named.
    pub fn set_window(&mut self, window: Vec<u8>) -> io::Result<()> {
        let Some((_, len)) = self.window_needed else { return Ok(()) };
        if window.len() != len as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("window of {} bytes where the index says {len}", window.len()),
            ));
        }
        if let Some(want) = &self.window_sha256 {
            let got = hex::encode(Sha256::digest(&window));
            if &got != want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("window hashes to {got} where the index says {want}"),
                ));
            }
        }
        if let Some(cp) = &mut self.checkpoint {
            cp.window = window;
        }
        self.window_needed = None;
        Ok(())
    }

    /// Reads the planned bytes from `blob`, positioned at `blob_offset`.
    pub fn read(self, mut blob: impl Read) -> io::Result<Vec<u8>> {
        if self.window_needed.is_some() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range read planned without its window"));
        }
        match &self.checkpoint {
            None => {
                let mut out = vec![0; self.len];
                blob.read_exact(&mut out)?;
                Ok(out)
            }
            Some(cp) => {
                let out = match self.compression {
                    Compression::Zstd => zstd::read_at(blob, cp.out, self.offset, self.len)?,
                    _ => zran::read_at(blob, cp, self.offset, self.len)?,
                };
                if out.len() != self.len {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "layer stream ended early"));
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn digest(b: &[u8]) -> Digest {
        format!("sha256:{}", hex::encode(Sha256::digest(b))).parse().unwrap()
    }

    /// Plans a read and hands it its window, as the registry does.
    fn planned(b: &Built, offset: u64, len: u64) -> RangePlan {
        let mut p = super::plan(&b.index, offset, len).unwrap();
        if let Some((at, n)) = p.window_needed() {
            p.set_window(b.windows[at as usize..at as usize + n as usize].to_vec()).unwrap();
        }
        p
    }

    #[test]
    fn gzip_index_serves_every_file_and_checks_chunks() {
        let big = noise(5 << 20, 7);
        let tar = layer(&[("a.txt", b"small file".to_vec()), ("big.bin", big.clone()), ("z.txt", b"last".to_vec())]);
        let gz = zran::tests::gzip(&tar, "-6");
        let built = build(&gz[..], &digest(&gz), Compression::Gzip).unwrap();
        let idx = &built.index;
        assert_eq!(idx.size, tar.len() as u64);
        assert_eq!(idx.chunks.len() as u64, tar.len() as u64 / CHUNK_SIZE + 1);
        assert!(idx.checkpoints.len() >= 2);
        // Windows live apart from the index, 32 KiB per checkpoint but the first.
        assert!(idx.checkpoints.iter().all(|c| c.window.is_empty()));
        assert_eq!(built.windows.len(), idx.checkpoints.iter().map(|c| c.window_len as usize).sum::<usize>());
        assert!(idx.checkpoints[1..].iter().all(|c| c.window_len == 32 << 10));
        for e in &idx.entries {
            let p = planned(&built, e.offset, e.size.max(1));
            let got = p.read(&gz[plan(idx, e.offset, 1).unwrap().blob_offset as usize..]).unwrap();
            assert_eq!(&got[..e.size as usize], &tar[e.offset as usize..(e.offset + e.size) as usize], "{}", e.path);
        }
        // Every chunk digest matches the uncompressed bytes.
        for (i, want) in idx.chunks.iter().enumerate() {
            let start = i as u64 * CHUNK_SIZE;
            let p = planned(&built, start, CHUNK_SIZE);
            let (off, n) = (p.blob_offset as usize, p.blob_len as usize);
            assert!(n as u64 <= 3 * CHECKPOINT_SPACING, "chunk {i} reads {n} of {} blob bytes", gz.len());
            let got = p.read(&gz[off..off + n]).unwrap();
            assert_eq!(&hex::encode(Sha256::digest(&got)), want, "chunk {i}");
        }
        // The index round-trips through its stored form, and through plain
        // JSON (how older berthd stored it); the stored form is smaller.
        let stored = encode(idx);
        assert_eq!(&decode(&stored).unwrap(), idx);
        let json = serde_json::to_vec(idx).unwrap();
        assert_eq!(&decode(&json).unwrap(), idx);
        assert!(stored.len() < json.len(), "{} bytes stored for {} of JSON", stored.len(), json.len());
        assert!(decode(&stored[..stored.len() / 2]).is_err(), "a cut index is refused");
        // A read planned without its window refuses rather than guess.
        let bare = plan(idx, idx.checkpoints[1].out, 10).unwrap();
        assert!(bare.window_needed().is_some());
        assert!(bare.read(&gz[..]).is_err());
        let mut short = plan(idx, idx.checkpoints[1].out, 10).unwrap();
        assert!(short.set_window(vec![0; 10]).is_err(), "a window of the wrong size is refused");
    }

    #[test]
    fn spans_lie_between_checkpoints() {
        let tar = layer(&[("big.bin", noise(5 << 20, 9))]);
        let gz = zran::tests::gzip(&tar, "-6");
        let idx = build(&gz[..], &digest(&gz), Compression::Gzip).unwrap().index;
        let (c1, c2) = (idx.checkpoints[1].out, idx.checkpoints[2].out);
        assert_eq!(span_of(&idx, c1, 10), Some((c1, c2)));
        assert_eq!(span_of(&idx, c2 - 10, 10), Some((c1, c2)));
        assert_eq!(span_of(&idx, c2 - 10, 11), None, "across two spans");
        let last = idx.checkpoints.last().unwrap().out;
        assert_eq!(span_of(&idx, idx.size - 1, 100), Some((last, idx.size)), "clamped to the end");
        assert_eq!(span_of(&idx, idx.size, 1), None);
        let plain = build(&tar[..], &digest(&tar), Compression::None).unwrap().index;
        assert_eq!(span_of(&plain, 0, 10), None);
    }

    #[test]
    fn indexes_with_windows_inline_still_read() {
        // Built before windows had their own object.
        let tar = layer(&[("big.bin", noise(5 << 20, 5)), ("z.txt", b"last".to_vec())]);
        let gz = zran::tests::gzip(&tar, "-6");
        let built = build(&gz[..], &digest(&gz), Compression::Gzip).unwrap();
        let mut old = built.index.clone();
        let b64 = base64::engine::general_purpose::STANDARD;
        for c in &mut old.checkpoints {
            c.window =
                b64.encode(&built.windows[c.window_at as usize..(c.window_at + u64::from(c.window_len)) as usize]);
            (c.window_at, c.window_len) = (0, 0);
        }
        let json = serde_json::to_string(&old).unwrap();
        let old: LayerIndex = serde_json::from_str(&json).unwrap();
        let e = old.entries.iter().find(|e| e.path == "z.txt").unwrap();
        let p = plan(&old, e.offset, e.size).unwrap();
        assert!(p.window_needed().is_none());
        let off = p.blob_offset as usize;
        assert_eq!(p.read(&gz[off..]).unwrap(), b"last");
    }

    #[test]
    fn multi_frame_zstd_is_indexed_single_frame_is_not() {
        let big = noise(5 << 20, 11);
        let tar = layer(&[("a.txt", b"first".to_vec()), ("big.bin", big), ("z.txt", b"last".to_vec())]);
        let third = tar.len() / 3;
        let z = zstd::tests::zstd_frames(&[&tar[..third], &tar[third..2 * third], &tar[2 * third..]]);
        let built = build(&z[..], &digest(&z), Compression::Zstd).unwrap();
        let idx = &built.index;
        assert_eq!(idx.size, tar.len() as u64);
        assert!(idx.checkpoints.len() >= 2);
        assert!(built.windows.is_empty(), "frame starts need no window");
        for (i, want) in idx.chunks.iter().enumerate() {
            let p = planned(&built, i as u64 * CHUNK_SIZE, CHUNK_SIZE);
            let (off, n) = (p.blob_offset as usize, p.blob_len as usize);
            let got = p.read(&z[off..off + n]).unwrap();
            assert_eq!(&hex::encode(Sha256::digest(&got)), want, "chunk {i}");
        }
        let one = zstd::tests::zstd_frames(&[&tar]);
        let e = build(&one[..], &digest(&one), Compression::Zstd).unwrap_err();
        assert!(e.to_string().contains("single-frame"), "{e}");
    }

    #[test]
    fn plain_tar_and_bad_input() {
        let tar = layer(&[("f", noise(100_000, 3))]);
        let built = build(&tar[..], &digest(&tar), Compression::None).unwrap();
        let idx = &built.index;
        assert!(idx.checkpoints.is_empty() && built.windows.is_empty());
        let e = &idx.entries[0];
        let p = plan(idx, e.offset, e.size).unwrap();
        let off = p.blob_offset as usize;
        assert_eq!(p.read(&tar[off..]).unwrap(), &tar[e.offset as usize..(e.offset + e.size) as usize]);
        assert!(plan(idx, idx.size, 1).is_err());

        let wrong = digest(b"something else");
        let e = build(&tar[..], &wrong, Compression::None).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(build(&tar[..], &digest(&tar), Compression::Gzip).is_err(), "not gzip");
    }
}
