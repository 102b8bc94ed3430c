//! Streaming a local file to a client: `pread` on the blocking pool into
//! the buffer that is sent (one copy, not tokio's two), one chunk read
//! ahead so the disk and the socket work at the same time, and never a
//! blocking thread parked on a slow client. Used by the filesystem backend
//! and the node cache.

use super::ByteStream;
use futures_util::StreamExt;
use std::sync::Arc;

/// Bytes per read (and per chunk handed to the socket).
pub const CHUNK: usize = 256 * 1024;

/// The bytes of `f` from `offset` to `size` (its size when opened), one
/// chunk read ahead: the next chunk is read from disk while the current
/// one goes to the client, and no blocking thread waits on a slow client.
pub fn stream(f: std::fs::File, offset: u64, size: u64) -> ByteStream {
    let f = Arc::new(f);
    let chunk = move |pos: u64| (size - pos).min(CHUNK as u64) as usize;
    let first = (offset < size).then(|| crate::fill::read_at(f.clone(), offset, chunk(offset)));
    futures_util::stream::unfold((f, offset, first), move |(f, pos, pending)| async move {
        let bytes = match pending?.await {
            Ok(b) => b,
            Err(e) => return Some((Err(e), (f, size, None))),
        };
        if bytes.is_empty() {
            // Shorter than when it was opened: the reader sees the end.
            return None;
        }
        let next = pos + bytes.len() as u64;
        let ahead = (next < size).then(|| crate::fill::read_at(f.clone(), next, chunk(next)));
        Some((Ok(bytes), (f, next, ahead)))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::TryStreamExt;

    #[tokio::test]
    async fn streams_the_file_from_an_offset_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for offset in [0, 1, CHUNK as u64, data.len() as u64 - 1, data.len() as u64] {
            let f = std::fs::File::open(&path).unwrap();
            let chunks: Vec<Bytes> = stream(f, offset, data.len() as u64).try_collect().await.unwrap();
            assert!(chunks.iter().all(|c| c.len() <= CHUNK && !c.is_empty()));
            assert_eq!(chunks.concat(), &data[offset as usize..], "from {offset}");
        }
    }
}
