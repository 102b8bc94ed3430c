//! Nothing leaves the registry under a digest unless it hashes to it.
//!
//! - A whole blob read is hashed on its way out and its last chunk is held
//!   back until the hash checked out: a stored blob that does not match
//!   its name (damaged on disk, tampered with in the bucket) ends the
//!   response early, so the client sees a broken transfer — never a clean
//!   200 with wrong bytes — and the blob is quarantined, so the next HEAD
//!   says it is missing and a push repairs it.
//! - Once a blob verified, the object's size and modification time are
//!   remembered ([`Verified`]): later reads of the same object are served
//!   without hashing again (and so can use `sendfile`), while a replaced or
//!   rewritten object (another time stamp) is verified anew.
//! - Quarantined objects are moved under `/berth/quarantine/`, never
//!   deleted: an operator can still look at them (`berthd fsck`).

use super::{paths, Registry};
use crate::digest::{Digest, Hasher};
use crate::storage::{ByteStream, FileInfo};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// Most remembered verifications; past it the memory starts over (a miss
/// only costs one more hash).
const MAX_REMEMBERED: usize = 65_536;

/// Objects known to hash to their digest, by what `stat` said of them.
#[derive(Default)]
pub(super) struct Verified {
    map: Mutex<HashMap<Digest, (u64, SystemTime)>>,
}

impl Verified {
    pub(super) fn record(&self, d: &Digest, st: &FileInfo) {
        let mut map = self.map.lock().unwrap();
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
        map.insert(d.clone(), (st.size, st.modified));
    }

    pub(super) fn contains(&self, d: &Digest, st: &FileInfo) -> bool {
        self.map.lock().unwrap().get(d) == Some(&(st.size, st.modified))
    }

    pub(super) fn forget(&self, d: &Digest) {
        self.map.lock().unwrap().remove(d);
    }
}

struct St<F> {
    inner: ByteStream,
    hasher: Hasher,
    read: u64,
    /// The last chunk read, sent only once the next one (or a good end)
    /// arrived.
    held: Option<Bytes>,
    /// `None` once a verdict was given or the read broke off.
    done: Option<F>,
    digest: Digest,
    size: u64,
}

/// How a verified read ended.
pub(super) enum Verdict {
    Good,
    /// The bytes ended cleanly but do not match: (bytes read, their digest).
    Bad(u64, Digest),
}

/// Hashes `stream` (the whole object, `size` bytes expected) while passing
/// it on, holding back the last chunk until the end: a mismatch becomes an
/// error item instead of the final bytes. `done` hears the verdict; a
/// stream that broke off (I/O error, client gone) gives none.
pub(super) fn verifying(
    stream: ByteStream,
    digest: Digest,
    size: u64,
    done: impl FnOnce(Verdict) + Send + 'static,
) -> ByteStream {
    let st = St {
        inner: stream,
        hasher: Hasher::new(digest.algorithm()),
        read: 0,
        held: None,
        done: Some(done),
        digest,
        size,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        st.done.as_ref()?;
        loop {
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.read += chunk.len() as u64;
                    st.hasher.update(&chunk);
                    if st.read > st.size {
                        return Some((Err(mismatch(&mut st)), st));
                    }
                    if let Some(prev) = st.held.replace(chunk) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(e)) => {
                    st.done = None;
                    return Some((Err(e), st));
                }
                None => {
                    let actual = std::mem::replace(&mut st.hasher, Hasher::new(st.digest.algorithm())).finish();
                    if actual != st.digest || st.read != st.size {
                        return Some((Err(mismatch(&mut st)), st));
                    }
                    if let Some(f) = st.done.take() {
                        f(Verdict::Good);
                    }
                    return st.held.take().map(|last| (Ok(last), st));
                }
            }
        }
    })
    .boxed()
}

fn mismatch<F: FnOnce(Verdict)>(st: &mut St<F>) -> std::io::Error {
    let actual = std::mem::replace(&mut st.hasher, Hasher::new(st.digest.algorithm())).finish();
    if let Some(f) = st.done.take() {
        f(Verdict::Bad(st.read, actual.clone()));
    }
    st.held = None;
    std::io::Error::other(format!(
        "stored content of {} does not match its digest ({} bytes with digest {actual}); the transfer was aborted and the blob quarantined, push it again",
        st.digest, st.read
    ))
}

impl Registry {
    /// Moves a stored object that does not hash to `digest` out of the way,
    /// unless it changed since it was read (`seen`: a push may have
    /// repaired it meanwhile).
    pub(super) async fn quarantine(&self, digest: &Digest, seen: Option<&FileInfo>, why: &str) {
        self.verified.forget(digest);
        let path = paths::blob_data(digest);
        if let Some(seen) = seen {
            match self.driver.stat(&path).await {
                Ok(now) if now.size == seen.size && now.modified == seen.modified => {}
                _ => return,
            }
        }
        let dest = paths::quarantine(digest);
        match self.driver.move_object(&path, &dest).await {
            Ok(()) => {
                crate::metrics::get().quarantined.inc();
                tracing::error!(%digest, quarantined_to = %dest, "stored content does not match its digest: {why}; quarantined, push it again");
            }
            Err(e) => {
                tracing::error!(%digest, "stored content does not match its digest ({why}) and cannot be quarantined: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;
    use std::sync::Arc;

    fn chunks(data: &[u8]) -> ByteStream {
        let parts: Vec<std::io::Result<Bytes>> = data.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures_util::stream::iter(parts).boxed()
    }

    async fn run(data: &[u8], digest: Digest, size: u64) -> (std::io::Result<Vec<u8>>, Option<bool>) {
        let verdict = Arc::new(Mutex::new(None));
        let v = verdict.clone();
        let s = verifying(chunks(data), digest, size, move |r| {
            *v.lock().unwrap() = Some(matches!(r, Verdict::Good));
        });
        let got: std::io::Result<Vec<Bytes>> = s.try_collect().await;
        let v = *verdict.lock().unwrap();
        (got.map(|c| c.concat()), v)
    }

    #[tokio::test]
    async fn good_content_passes_whole() {
        let data = b"the quick brown fox jumps over the lazy dog".to_vec();
        let (got, verdict) = run(&data, Digest::sha256_of(&data), data.len() as u64).await;
        assert_eq!(got.unwrap(), data);
        assert_eq!(verdict, Some(true));
    }

    #[tokio::test]
    async fn wrong_content_never_arrives_whole() {
        let want = b"the quick brown fox jumps over the lazy dog".to_vec();
        let d = Digest::sha256_of(&want);
        for bad in [
            b"the quick brown fox jumps over the lazy cat".to_vec(),
            [&want[..], b"extra"].concat(),
            want[..10].to_vec(),
        ] {
            let (got, verdict) = run(&bad, d.clone(), want.len() as u64).await;
            assert!(got.is_err(), "a mismatch is an error, not a clean end");
            assert_eq!(verdict, Some(false));
        }
    }

    #[tokio::test]
    async fn a_broken_read_gives_no_verdict() {
        let s: ByteStream =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err(std::io::Error::other("gone"))])
                .boxed();
        let verdict = Arc::new(Mutex::new(None));
        let v = verdict.clone();
        let got: std::io::Result<Vec<Bytes>> = verifying(s, Digest::sha256_of(b"abcdef"), 6, move |r| {
            *v.lock().unwrap() = Some(matches!(r, Verdict::Good));
        })
        .try_collect()
        .await;
        assert!(got.is_err());
        assert_eq!(*verdict.lock().unwrap(), None);
    }
}
