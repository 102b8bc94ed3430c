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
//!   when it could take the lock exclusively and the last such read ended
//!   a quiet period ago (the file's modification time) — reads a container
//!   waits for go first, whichever layer they are in.
#![allow(unsafe_code)] // flock

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a paused fill looks again whether reads are still waiting.
const IDLE_POLL: Duration = Duration::from_millis(20);

/// How long after the node's last waiting read ended a fill holds back.
const QUIET: Duration = Duration::from_secs(1);

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
    // SAFETY: flock takes no pointers; the descriptor is borrowed from a
    // live `File`, so it stays open (and is not reused) for the call.
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
///
/// A container's start is a burst of reads with short gaps between them;
/// a fill run that slipped into a gap would hold the link for a second
/// or more on a slow one while the next read queues behind it. So fills
/// also wait out a quiet period after the last read ended (and after a
/// layer was mounted, before its container's first read), published as
/// the lock file's modification time.
pub struct ReadGate {
    /// Open for the shared lock readers hold; `None`: only this process's
    /// own fill sees its readers.
    shared: Option<File>,
    /// A second descriptor of the same file, for the fill's exclusive probe
    /// (flock locks belong to an open file, so this one conflicts with
    /// `shared` as another process's would).
    probe: Option<File>,
    quiet: Duration,
    local: Mutex<Local>,
}

struct Local {
    waiting: usize,
    last_end: Instant,
}

/// A container read in flight; the fills of the node wait until it drops.
pub struct ReadWait<'a> {
    gate: &'a ReadGate,
}

impl ReadGate {
    /// A gate published on `path`, or a process-local one when `path` is
    /// `None` or cannot be opened. Counts as a read that just ended.
    pub fn new(path: Option<&Path>) -> ReadGate {
        Self::with_quiet(path, QUIET)
    }

    fn with_quiet(path: Option<&Path>, quiet: Duration) -> ReadGate {
        let shared = path.and_then(open_lock);
        let probe = shared.as_ref().and(path).and_then(open_lock);
        let gate = ReadGate { shared, probe, quiet, local: Mutex::new(Local { waiting: 0, last_end: Instant::now() }) };
        gate.publish_end();
        gate
    }

    fn publish_end(&self) {
        if let Some(f) = &self.shared {
            // Best effort: without it the node's other fills wait for the
            // lock only, not the quiet period.
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Marks a read that waits for berthd until the returned guard drops.
    pub fn enter(&self) -> ReadWait<'_> {
        let mut local = self.local.lock().unwrap();
        if local.waiting == 0 {
            if let Some(f) = &self.shared {
                // Blocks only while a fill's probe holds the lock, which is
                // two system calls long.
                flock(f, libc::LOCK_SH);
            }
        }
        local.waiting += 1;
        ReadWait { gate: self }
    }

    /// Whether no container read waits or ended within the quiet period, in
    /// this process or, when the gate is published, anywhere on the node.
    pub fn idle(&self) -> bool {
        {
            let local = self.local.lock().unwrap();
            if local.waiting > 0 || local.last_end.elapsed() < self.quiet {
                return false;
            }
        }
        let Some(p) = &self.probe else { return true };
        if !flock(p, libc::LOCK_EX | libc::LOCK_NB) {
            return false;
        }
        flock(p, libc::LOCK_UN);
        // A time in the future (the clock went back) counts as quiet, so a
        // clock step never stops the fills.
        let since = p.metadata().and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        since.is_none_or(|d| d >= self.quiet)
    }

    /// Returns once no container read waits or ended within the quiet
    /// period.
    pub async fn wait_idle(&self) {
        while !self.idle() {
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}

impl Drop for ReadWait<'_> {
    fn drop(&mut self) {
        let mut local = self.gate.local.lock().unwrap();
        local.waiting -= 1;
        if local.waiting == 0 {
            local.last_end = Instant::now();
            self.gate.publish_end();
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

    const SHORT: Duration = Duration::from_millis(400);

    #[test]
    fn a_read_of_one_layer_pauses_the_fills_of_every_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = reads_lock_path(&dir.path().join("fill.lock"));
        // Two layers' gates, as two mount processes would hold them.
        let a = ReadGate::with_quiet(Some(&path), SHORT);
        let b = ReadGate::with_quiet(Some(&path), SHORT);
        assert!(!b.idle(), "a fill started the moment a layer was mounted");
        std::thread::sleep(SHORT * 2);
        assert!(a.idle() && b.idle());
        let first = a.enter();
        let second = a.enter();
        assert!(!a.idle(), "a fill ignored a read of its own layer");
        assert!(!b.idle(), "a fill ignored a read of another layer");
        drop(first);
        assert!(!b.idle(), "one of two reads ended and the fills went on");
        drop(second);
        assert!(!b.idle(), "a fill started in the gap between two reads");
        std::thread::sleep(SHORT * 2);
        assert!(a.idle() && b.idle(), "the reads ended and the fills stayed paused");
    }

    #[test]
    fn an_unpublished_gate_still_pauses_its_own_fill() {
        let gate = ReadGate::with_quiet(None, SHORT);
        std::thread::sleep(SHORT * 2);
        let read = gate.enter();
        assert!(!gate.idle());
        drop(read);
        assert!(!gate.idle());
        std::thread::sleep(SHORT * 2);
        assert!(gate.idle());
    }

    #[tokio::test]
    async fn wait_idle_returns_a_quiet_period_after_the_last_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reads.lock");
        let reader = ReadGate::with_quiet(Some(&path), SHORT);
        let fill = ReadGate::with_quiet(Some(&path), SHORT);
        let read = reader.enter();
        let waiting = tokio::spawn(async move { fill.wait_idle().await });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished(), "the fill went on while a read waited");
        let ended = Instant::now();
        drop(read);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("fill resumed").unwrap();
        assert!(ended.elapsed() >= SHORT, "the fill did not wait out the quiet period");
    }
}
