//! Durable local writes, the one way berthd puts a file on a local disk
//! (the filesystem backend, the node cache): write a temporary file beside
//! the target, flush and `fsync` it, `rename` it over the target, then
//! `fsync` the directory so the rename itself survives a power cut. Every
//! step's result is checked, so a full disk (`ENOSPC` can surface at
//! `write`, at `close` or only at `fsync`) fails the write and leaves the
//! previous file intact — containerd's content store and registry:2's
//! filesystem driver do the same.
//!
//! These functions block; async callers run them on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A temporary sibling name for atomic replacement; the leading dot keeps
/// it out of every listing (`storage::check_path` never names it).
pub fn temp_sibling(full: &Path) -> PathBuf {
    let name = full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    full.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()))
}

/// `fsync` of a directory: makes the entries created, renamed or removed
/// in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `mkdir -p` that also makes each directory it creates durable (the new
/// entry lives in its parent, so the parent is synced).
pub fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Replaces `dest` with `data` atomically and durably: after an error
/// (disk full, I/O error) `dest` is what it was before. A replaced file
/// keeps its permissions (a k3s `registries.yaml` holding credentials
/// stays private).
pub fn write_file(dest: &Path, data: &[u8]) -> io::Result<()> {
    let parent = dest.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    create_dirs(parent)?;
    let tmp = temp_sibling(dest);
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Ok(md) = fs::metadata(dest) {
            f.set_permissions(md.permissions())?;
        }
        f.write_all(data)?;
        f.flush()?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dest)?;
        sync_dir(parent)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Moves a synced file into place: `rename`, then `fsync` of the
/// destination directory (and of the source's, when it differs).
pub fn rename(src: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    create_dirs(parent)?;
    fs::rename(src, dest)?;
    sync_dir(parent)?;
    match src.parent() {
        Some(p) if p != parent => sync_dir(p),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/c/link");
        write_file(&dest, b"one").unwrap();
        write_file(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
        write_file(&dest, b"two").unwrap();
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600, "permissions kept");
        let moved = dir.path().join("x/y/data");
        rename(&dest, &moved).unwrap();
        assert_eq!(fs::read(&moved).unwrap(), b"two");
        assert!(!dest.exists());
    }

    /// A write that fails leaves the old content: here the target is a
    /// directory, so the final rename fails after the data was written.
    #[test]
    fn a_failed_write_keeps_the_previous_content() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("keep"), b"x").unwrap();
        assert!(write_file(&dest, b"new").is_err());
        assert_eq!(fs::read(dest.join("keep")).unwrap(), b"x");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file was removed");
    }
}
