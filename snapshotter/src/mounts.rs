//! Mount points of lazy layers: the label that marks a lazily mounted
//! snapshot, and whether a mount is there and answering. A leaf: the
//! snapshot store and the lazy-layer manager both ask it.
#![allow(unsafe_code)] // umount2

use std::path::Path;

/// Set on snapshots berth mounted lazily; the value is the layer digest.
pub const LABEL_LAZY: &str = "berth.io/lazy-layer";

/// Whether a FUSE mount at `fs` is up and answering (a mount whose process
/// died still shows in mountinfo but fails every call with `ENOTCONN`).
pub fn is_served(fs: &Path) -> bool {
    is_mounted(fs) && std::fs::read_dir(fs).is_ok()
}

/// Whether `path` is a mount point (in this mount namespace).
pub fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == want))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Detaches the mount at `path`; its serving process then exits.
pub fn unmount(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call;
    // umount2 reads it and keeps no pointer.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}
