//! Shared downloads into a local file: one producer writes a stream that
//! should hash to a known digest into a temporary file, while any number
//! of readers stream from that file at their own pace.
//!
//! Used by the node cache (filling from S3) and by pull-through mirrors
//! (filling from an upstream registry). What both need:
//! - **one download, many readers**: the first reader starts it; later
//!   ones attach and read what has arrived, then the rest as it comes;
//! - **each reader at its own pace**: the download runs at the source's
//!   speed into the file; a slow reader never slows the download or the
//!   other readers (memory per reader is one read buffer);
//! - **never a clean wrong answer**: the last byte is held back from every
//!   reader until the whole file hashed to the digest; on a mismatch
//!   readers get an error instead, so a client sees a broken transfer;
//! - **independent of any request**: the download runs in its own task, so
//!   a client that gives up does not stop it, and waiters always learn how
//!   it ended.

use crate::digest::{Digest, Hasher};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes gathered before each write of a download.
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes per chunk a reader is served in. With WRITE_BATCH this bounds the
/// memory one slow reader holds (a Pi runs berthd in 64 MiB).
pub const READ_CHUNK: usize = 256 * 1024;

/// How a download failed; cloneable so every reader gets it.
#[derive(Clone, Debug, PartialEq)]
pub enum FillError {
    /// The source does not have it.
    NotFound(String),
    /// The source could not be reached or broke off.
    Unavailable(String),
    /// The local disk is full.
    Full(String),
    /// The bytes did not hash to the digest.
    Mismatch(String),
    Other(String),
}

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillError::NotFound(m)
            | FillError::Unavailable(m)
            | FillError::Full(m)
            | FillError::Mismatch(m)
            | FillError::Other(m) => f.write_str(m),
        }
    }
}

impl FillError {
    fn local(e: std::io::Error) -> FillError {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                FillError::Full(format!("the local disk is full: {e}"))
            }
            _ => FillError::Other(format!("writing the download to local disk: {e}")),
        }
    }
}

/// Where a download stands.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The download began (its size may still be unknown).
    pub begun: bool,
    /// Size of the object, once known.
    pub total: Option<u64>,
    /// Bytes in the file so far.
    pub written: u64,
    /// Every byte is written and the digest checked out.
    pub verified: bool,
    /// The producer decided not to download (e.g. too large for the cache):
    /// readers go to the source themselves.
    pub bypass: bool,
    pub done: Option<Result<(), FillError>>,
}

impl Progress {
    /// Bytes a reader may be given: all once verified, else all but the
    /// last (a transfer cannot end before the verdict).
    fn readable(&self) -> u64 {
        if self.verified {
            self.written
        } else {
            self.written.saturating_sub(1)
        }
    }
}

/// A download others can read while it runs. Its temporary file is
/// removed when the last reader is done with it (a completed download was
/// moved elsewhere by then, or is no longer needed).
pub struct Fill {
    /// The file being written.
    pub tmp: PathBuf,
    /// Where the file is moved once complete (readers reopen it there if
    /// it moved before they opened it).
    pub final_path: Option<PathBuf>,
    progress: watch::Receiver<Progress>,
}

/// The producer's side of a [`Fill`].
pub struct Producer {
    tx: watch::Sender<Progress>,
}

impl Fill {
    pub fn new(tmp: PathBuf, final_path: Option<PathBuf>) -> (Arc<Fill>, Producer) {
        let (tx, rx) = watch::channel(Progress::default());
        (Arc::new(Fill { tmp, final_path, progress: rx }), Producer { tx })
    }

    /// Waits until the download began (with its size when the source gave
    /// one), was bypassed or ended, and returns where it stands then.
    pub async fn started(&self) -> Progress {
        let mut rx = self.progress.clone();
        loop {
            let p = rx.borrow_and_update().clone();
            if p.begun || p.total.is_some() || p.bypass || p.done.is_some() {
                return p;
            }
            if rx.changed().await.is_err() {
                let mut p = rx.borrow().clone();
                p.done.get_or_insert(Err(FillError::Other("the download stopped".into())));
                return p;
            }
        }
    }

    /// Waits for the end of the download.
    pub async fn finished(&self) -> Result<(), FillError> {
        let mut rx = self.progress.clone();
        loop {
            if let Some(done) = rx.borrow_and_update().done.clone() {
                return done;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().done.clone().unwrap_or(Err(FillError::Other("the download stopped".into())));
            }
        }
    }

    /// The bytes from `offset` on, as they arrive (see the module docs).
    pub fn reader(self: &Arc<Self>, offset: u64) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        struct St {
            fill: Arc<Fill>,
            rx: watch::Receiver<Progress>,
            file: Option<Arc<std::fs::File>>,
            pos: u64,
            failed: bool,
        }
        let st = St { rx: self.progress.clone(), fill: self.clone(), file: None, pos: offset, failed: false };
        futures_util::stream::unfold(st, |mut st| async move {
            if st.failed {
                return None;
            }
            loop {
                let p = st.rx.borrow_and_update().clone();
                if p.readable() > st.pos {
                    if st.file.is_none() {
                        match st.fill.open() {
                            Ok(f) => st.file = Some(Arc::new(f)),
                            Err(e) => {
                                st.failed = true;
                                return Some((Err(e), st));
                            }
                        }
                    }
                    let n = (p.readable() - st.pos).min(READ_CHUNK as u64) as usize;
                    let file = st.file.clone().expect("opened above");
                    let read = match read_at(file, st.pos, n).await {
                        Ok(b) if b.len() < n => Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "the download's file ended at {} of {}",
                                st.pos + b.len() as u64,
                                st.pos + n as u64
                            ),
                        )),
                        other => other,
                    };
                    match read {
                        Ok(b) => {
                            st.pos += n as u64;
                            return Some((Ok(b), st));
                        }
                        Err(e) => {
                            st.failed = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                if p.verified && p.total.is_none_or(|t| st.pos >= t) && p.readable() <= st.pos {
                    return None;
                }
                match p.done {
                    Some(Ok(())) if p.readable() <= st.pos => return None,
                    Some(Err(e)) => {
                        st.failed = true;
                        return Some((Err(std::io::Error::other(e.to_string())), st));
                    }
                    _ => {}
                }
                if st.rx.changed().await.is_err() && st.rx.borrow().done.is_none() {
                    st.failed = true;
                    return Some((Err(std::io::Error::other("the download stopped")), st));
                }
            }
        })
    }

    /// The download's file: the temporary one, or where it was moved.
    fn open(&self) -> std::io::Result<std::fs::File> {
        match std::fs::File::open(&self.tmp) {
            Ok(f) => Ok(f),
            Err(e) => match &self.final_path {
                Some(p) => std::fs::File::open(p),
                None => Err(e),
            },
        }
    }
}

/// Reads `len` bytes of `f` at `pos` on the blocking pool, by `pread`
/// straight into the buffer that is handed on (fewer than `len` only at
/// the end of the file). The buffer is allocated by the caller's thread:
/// with glibc each thread allocates from its own arena, and buffers made on
/// many short-lived blocking threads but freed on the runtime's workers
/// would spread the heap over as many arenas.
/// The read starts at once (so a caller may hold the future as a read
/// ahead).
pub fn read_at(
    f: Arc<std::fs::File>,
    pos: u64,
    len: usize,
) -> impl std::future::Future<Output = std::io::Result<Bytes>> + Send + 'static {
    let mut buf = vec![0u8; len];
    let read = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut filled = 0;
        while filled < len {
            match f.read_at(&mut buf[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    });
    async move { read.await.map_err(std::io::Error::other)? }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Producer {
    /// Tells readers to fetch from the source themselves.
    pub fn bypass(&self, total: u64) {
        self.tx.send_modify(|p| {
            p.total = Some(total);
            p.bypass = true;
        });
    }

    /// Ends the download: readers get the outcome.
    pub fn finish(&self, res: Result<(), FillError>) {
        self.tx.send_modify(|p| p.done = Some(res));
    }

    /// Lets readers have the last byte: the download verified (and whatever
    /// the producer had to do before readers may finish is done).
    pub fn release(&self) {
        self.tx.send_modify(|p| p.verified = true);
    }

    /// Writes `source` into `tmp` while hashing it, and checks it against
    /// `digest` (and `total`, when known). Returns the file once verified,
    /// not yet synced: whoever keeps it syncs it, after letting readers
    /// finish (their bytes are right whether or not the copy is on disk
    /// yet). Readers get the last byte once the producer calls
    /// [`release`](Self::release). A blocking thread writes batches while
    /// this task keeps reading and hashing, so network, hash and disk
    /// overlap.
    pub async fn download(
        &self,
        mut source: impl Stream<Item = std::io::Result<Bytes>> + Unpin,
        digest: &Digest,
        total: Option<u64>,
        tmp: &Path,
    ) -> Result<std::fs::File, FillError> {
        let file = std::fs::File::create(tmp).map_err(FillError::local)?;
        self.tx.send_modify(|p| {
            p.total = total.or(p.total);
            p.begun = true;
        });
        // A batch is the source's own chunks, up to WRITE_BATCH bytes: the
        // writer hands them to the kernel as they came, without copying
        // them into one buffer first.
        let (batches, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(4);
        let progress = self.tx.clone();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, u64)> {
            use std::io::Write;
            let mut file = file;
            let mut written = 0u64;
            while let Some(batch) = rx.blocking_recv() {
                // One `writev` for the batch (more only when the kernel
                // takes part of it).
                let mut slices: Vec<std::io::IoSlice> = batch.iter().map(|c| std::io::IoSlice::new(c)).collect();
                let mut left = &mut slices[..];
                while !left.is_empty() {
                    // (std passes at most IOV_MAX slices per call.)
                    match file.write_vectored(left) {
                        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            written += n as u64;
                            std::io::IoSlice::advance_slices(&mut left, n);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                progress.send_modify(|p| p.written = written);
            }
            file.flush()?;
            Ok((file, written))
        });
        let mut hasher = Hasher::new(digest.algorithm());
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0;
        let mut read = 0u64;
        let fetched: Result<(), FillError> = async {
            while let Some(chunk) = source.next().await {
                let chunk =
                    chunk.map_err(|e| FillError::Unavailable(format!("the download of {digest} broke off: {e}")))?;
                read += chunk.len() as u64;
                if total.is_some_and(|t| read > t) {
                    return Err(FillError::Mismatch(format!(
                        "the source sent more than the {} bytes of {digest}",
                        total.unwrap_or_default()
                    )));
                }
                hasher.update(&chunk);
                pending_len += chunk.len();
                pending.push(chunk);
                if pending_len >= WRITE_BATCH {
                    pending_len = 0;
                    if batches.send(std::mem::take(&mut pending)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
            }
            if !pending.is_empty() {
                let _ = batches.send(pending).await;
            }
            Ok(())
        }
        .await;
        drop(batches);
        let written = writer.await.map_err(|e| FillError::Other(e.to_string()))?.map_err(FillError::local);
        fetched?;
        let (file, written) = written?;
        let actual = hasher.finish();
        if &actual != digest || total.is_some_and(|t| t != written) {
            return Err(FillError::Mismatch(format!(
                "the source sent {written} bytes with digest {actual} for {digest}{}",
                total.map(|t| format!(" ({t} bytes expected)")).unwrap_or_default()
            )));
        }
        self.tx.send_modify(|p| p.total = Some(written));
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    fn source(data: Vec<u8>, pause_ms: u64) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
        let chunks: Vec<Bytes> = data.chunks(1000).map(Bytes::copy_from_slice).collect();
        futures_util::stream::iter(chunks)
            .then(move |c| async move {
                tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                Ok(c)
            })
            .boxed()
    }

    async fn run(
        data: Vec<u8>,
        digest: Digest,
        total: Option<u64>,
    ) -> (Result<Vec<u8>, String>, Result<(), FillError>) {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("fill");
        let (fill, producer) = Fill::new(tmp.clone(), None);
        let reader = fill.reader(0);
        let task = tokio::spawn(async move {
            let res = producer.download(source(data, 1), &digest, total, &tmp).await.map(|_| ());
            if res.is_ok() {
                producer.release();
            }
            producer.finish(res.clone());
            res
        });
        let got: Result<Vec<Bytes>, _> = reader.try_collect().await;
        let res = task.await.unwrap();
        (got.map(|c| c.concat()).map_err(|e| e.to_string()), res)
    }

    #[tokio::test]
    async fn readers_get_every_byte_of_a_good_download() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let (got, res) = run(data.clone(), Digest::sha256_of(&data), Some(data.len() as u64)).await;
        assert_eq!(got.unwrap(), data);
        assert_eq!(res, Ok(()));
    }

    #[tokio::test]
    async fn a_wrong_download_never_reaches_a_reader_whole() {
        let want: Vec<u8> = vec![1; 30_000];
        let d = Digest::sha256_of(&want);
        for (bad, total) in
            [(vec![2u8; 30_000], Some(30_000)), (vec![1u8; 30_005], Some(30_000)), (vec![2u8; 30_000], None)]
        {
            let (got, res) = run(bad, d.clone(), total).await;
            assert!(got.is_err(), "the reader sees an error, not a clean end");
            assert!(matches!(res, Err(FillError::Mismatch(_))), "{res:?}");
        }
    }

    /// A source of tiny chunks fills write batches of more slices than one
    /// `writev` takes (IOV_MAX): every byte still lands, in order.
    #[tokio::test]
    async fn a_source_of_tiny_chunks_is_written_whole() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
        let chunks: Vec<std::io::Result<Bytes>> = data.chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("fill");
        let (_fill, producer) = Fill::new(tmp.clone(), None);
        let d = Digest::sha256_of(&data);
        producer.download(futures_util::stream::iter(chunks), &d, Some(data.len() as u64), &tmp).await.unwrap();
        assert_eq!(std::fs::read(&tmp).unwrap(), data);
    }

    /// A reader that does not read does not hold the download back.
    #[tokio::test]
    async fn a_slow_reader_does_not_slow_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("fill");
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let d = Digest::sha256_of(&data);
        let (fill, producer) = Fill::new(tmp.clone(), None);
        let mut slow = Box::pin(fill.reader(0));
        let body = data.clone();
        let download = tokio::spawn(async move {
            let res = producer.download(source(body, 0), &d, Some(2_000_000), &tmp).await.map(|_| ());
            producer.release();
            producer.finish(res.clone());
            res
        });
        assert!(slow.next().await.unwrap().is_ok(), "the slow reader takes one chunk, then nothing");
        download.await.unwrap().unwrap();
        // The download is complete though the reader took one chunk; a
        // late reader gets everything.
        let late: Vec<Bytes> = fill.reader(0).try_collect().await.unwrap();
        assert_eq!(late.concat(), data);
    }
}
