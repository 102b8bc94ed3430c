//! How the background fills of a node's lazy layers share its link.
//!
//! Every lazy layer is served by its own `mount-layer` process, so the
//! processes coordinate through two lock files in the snapshotter's root
//! (`flock`, which the kernel releases when a process dies, so a crash
//! never leaves a fill stopped):
//!
//! - `fill.lock` ([`NodeTurn`]): a fill holds it exclusively while it
//!   fetches a run and waits out that run's share of the rate, so all the
//!   layers of the node together fetch at the node's rate.
//! - `reads.lock` ([`ReadGate`]): a process holds it shared while any
//!   container read of its layer waits for berthd. A fill fetches only
//!   when it could take the lock exclusively, that is when no container on
//!   the node waits for a lazy read — reads a container waits for go
//!   first, whichever layer they are in.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How often a paused fill looks again whether reads are still waiting.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// The readers' lock that sits beside a node's fill lock.
pub fn reads_lock_path(fill_lock: &Path) -> PathBuf {
    fill_lock.with_file_name("reads.lock")
}

fn open_lock(path: &Path) -> Option<File> {
    match std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open a lock file; fills of this layer are not coordinated with the node");
            None
        }
    }
}

fn flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor borrowed from a live `File`.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

/// A turn of the node's background fill: an exclusive `flock` on the fill
/// lock, released when dropped (or when the process dies).
pub struct NodeTurn {
    _locked: File,
}

impl NodeTurn {
    /// Waits for the turn; `None` (fill without one) if the lock file
    /// cannot be used, which only loses the node-wide bound.
    pub async fn take(path: &Path) -> Option<NodeTurn> {
        let file = open_lock(path)?;
        let locked =
            tokio::task::spawn_blocking(move || flock(&file, libc::LOCK_EX).then_some(file)).await.ok().flatten();
        locked.map(|f| NodeTurn { _locked: f })
    }
}

/// The container reads of one process that wait for berthd, published to
/// the node's fills.
pub struct ReadGate {
    /// Open for the shared lock readers hold; `None`: only this process's
    /// own fill sees its readers.
    shared: Option<File>,
    /// A second descriptor of the same file, for the fill's exclusive probe
    /// (flock locks belong to an open file, so this one conflicts with
    /// `shared` as another process's would).
    probe: Option<File>,
    waiting: Mutex<usize>,
}

/// A container read in flight; the fills of the node wait until it drops.
pub struct ReadWait<'a> {
    gate: &'a ReadGate,
}

impl ReadGate {
    /// A gate published on `path`, or a process-local one when `path` is
    /// `None` or cannot be opened.
    pub fn new(path: Option<&Path>) -> ReadGate {
        let shared = path.and_then(open_lock);
        let probe = shared.as_ref().and(path).and_then(open_lock);
        ReadGate { shared, probe, waiting: Mutex::new(0) }
    }

    /// Marks a read that waits for berthd until the returned guard drops.
    pub fn enter(&self) -> ReadWait<'_> {
        let mut n = self.waiting.lock().unwrap();
        if *n == 0 {
            if let Some(f) = &self.shared {
                // Blocks only while a fill's probe holds the lock, which is
                // two system calls long.
                flock(f, libc::LOCK_SH);
            }
        }
        *n += 1;
        ReadWait { gate: self }
    }

    /// Whether no container read waits, in this process or, when the gate
    /// is published, anywhere on the node.
    pub fn idle(&self) -> bool {
        if *self.waiting.lock().unwrap() > 0 {
            return false;
        }
        match &self.probe {
            Some(p) if flock(p, libc::LOCK_EX | libc::LOCK_NB) => flock(p, libc::LOCK_UN),
            Some(_) => false,
            None => true,
        }
    }

    /// Returns once no container read waits.
    pub async fn wait_idle(&self) {
        while !self.idle() {
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}

impl Drop for ReadWait<'_> {
    fn drop(&mut self) {
        let mut n = self.gate.waiting.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            if let Some(f) = &self.gate.shared {
                flock(f, libc::LOCK_UN);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fill_turns_are_exclusive_across_holders() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("fill.lock");
        let first = NodeTurn::take(&lock).await.expect("a turn");
        let second = tokio::spawn({
            let lock = lock.clone();
            async move { NodeTurn::take(&lock).await.map(|_| tokio::time::Instant::now()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "a second fill got a turn while the first held it");
        let released = tokio::time::Instant::now();
        drop(first);
        let got = second.await.unwrap().expect("a turn after the first");
        assert!(got >= released);
    }

    #[test]
    fn a_read_of_one_layer_pauses_the_fills_of_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = reads_lock_path(&dir.path().join("fill.lock"));
        // Two layers' gates, as two mount processes would hold them.
        let a = ReadGate::new(Some(&path));
        let b = ReadGate::new(Some(&path));
        assert!(a.idle() && b.idle());
        let first = a.enter();
        let second = a.enter();
        assert!(!a.idle(), "a fill ignored a read of its own layer");
        assert!(!b.idle(), "a fill ignored a read of another layer");
        drop(first);
        assert!(!b.idle(), "one of two reads ended and the fills went on");
        drop(second);
        assert!(a.idle() && b.idle(), "the reads ended and the fills stayed paused");
    }

    #[test]
    fn an_unpublished_gate_still_pauses_its_own_fill() {
        let gate = ReadGate::new(None);
        let read = gate.enter();
        assert!(!gate.idle());
        drop(read);
        assert!(gate.idle());
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_read_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reads.lock");
        let reader = ReadGate::new(Some(&path));
        let fill = ReadGate::new(Some(&path));
        let read = reader.enter();
        let waiting = tokio::spawn(async move { fill.wait_idle().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the fill went on while a read waited");
        drop(read);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("fill resumed").unwrap();
    }
}
