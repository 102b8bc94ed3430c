//! How much room the snapshotter's disk has left.
#![allow(unsafe_code)] // statvfs
// The statvfs fields are u32 on 32-bit targets, u64 here.
#![allow(clippy::unnecessary_cast)]

use std::path::Path;

/// Bytes available to unprivileged writers on the file system holding
/// `path`; `None` when it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call,
    // and `st` is writable memory of `statvfs`'s size and alignment, which
    // statvfs fills on success; `assume_init` runs only after it returned
    // 0, and neither pointer is kept past the call.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The default reserve: a tenth of the file system, at most 2 GiB — room
/// for the metadata store, the logs and the containers' own writes.
pub fn default_reserve(path: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return 0 };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: as in `free_bytes`: `c` is a valid NUL-terminated path that
    // outlives the call, `st` is writable memory of `statvfs`'s size which
    // statvfs fills on success, and it is read only after it returned 0.
    let size = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return 0;
        }
        let st = st.assume_init();
        st.f_blocks as u64 * st.f_frsize as u64
    };
    (size / 10).min(2 << 30)
}
