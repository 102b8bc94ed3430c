//! The snapshotter proper: containerd's snapshot semantics over overlayfs,
//! the same mounts containerd's built-in `overlayfs` snapshotter returns, so
//! `--snapshotter berth` behaves exactly like it for normal pulls.
//!
//! Layout under the root directory:
//! - `metadata.redb`: [`Store`], the only source of truth;
//! - `snapshots/<id>/fs`: the snapshot's tree (the upper dir while active);
//! - `snapshots/<id>/work`: overlayfs's work dir.
//!
//! A directory whose id the store does not know is garbage (a crash between
//! mkdir and commit, or a remove whose delete failed): Cleanup removes it.

use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::mounts::LABEL_LAZY;
use crate::store::{Info, Kind, LabelUpdate, Resolved, Store};
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One mount containerd performs to assemble a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

pub struct Snapshotter {
    root: PathBuf,
    store: Store,
    /// overlayfs's `index=off`, passed when the kernel knows the option (as
    /// containerd does): with index on, a lower dir may only be used by one
    /// overlay at a time.
    index_off: bool,
}

impl Snapshotter {
    pub fn open(root: &Path) -> Result<Snapshotter> {
        let snaps = root.join("snapshots");
        std::fs::create_dir_all(&snaps).map_err(Error::io(format!("cannot create {}", snaps.display())))?;
        let store = Store::open(&root.join("metadata.redb"))?;
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        Ok(Snapshotter { root: root.to_owned(), store, index_off })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// Prepare (`Kind::Active`) or View (`Kind::View`).
    pub fn create(&self, kind: Kind, key: &str, parent: &str, labels: BTreeMap<String, String>) -> Result<Vec<Mount>> {
        let parent = (!parent.is_empty()).then_some(parent);
        let resolved = self.store.create(key, parent, kind, labels, |id| {
            let dir = self.dir(id);
            // A stale directory with this id can only be garbage.
            let _ = std::fs::remove_dir_all(&dir);
            for sub in ["fs", "work"] {
                let p = dir.join(sub);
                std::fs::create_dir_all(&p).map_err(Error::io(format!("cannot create {}", p.display())))?;
            }
            Ok(())
        })?;
        Ok(self.mounts_of(&resolved))
    }

    /// Records `name` as a committed snapshot whose tree `make` provides
    /// (a lazy mount) in the snapshot's directory; nothing is recorded when
    /// `make` fails.
    pub fn create_committed(
        &self,
        name: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let parent = (!parent.is_empty()).then_some(parent);
        self.store.create(name, parent, Kind::Committed, labels, |id| {
            let dir = self.dir(id);
            let _ = std::fs::remove_dir_all(&dir);
            let fs = dir.join("fs");
            std::fs::create_dir_all(&fs).map_err(Error::io(format!("cannot create {}", fs.display())))?;
            if let Err(e) = make(&dir) {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Directories of the snapshots served by lazy mounts.
    pub fn lazy_dirs(&self) -> Vec<PathBuf> {
        let all = self.store.list().unwrap_or_default();
        all.into_iter().filter(|(_, r)| r.labels.contains_key(LABEL_LAZY)).map(|(_, r)| self.dir(r.id)).collect()
    }

    /// The directories of the snapshots `key` stacks on, nearest first.
    pub fn parent_dirs(&self, key: &str) -> Result<Vec<PathBuf>> {
        let resolved = self.store.get(key)?;
        Ok(resolved.parent_ids.iter().map(|id| self.dir(*id)).collect())
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let resolved = self.store.get(key)?;
        if resolved.record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed; only active and view snapshots have mounts"
            )));
        }
        Ok(self.mounts_of(&resolved))
    }

    fn mounts_of(&self, s: &Resolved) -> Vec<Mount> {
        let own = self.fs(s.record.id);
        let parents: Vec<String> = s.parent_ids.iter().map(|id| self.fs(*id).display().to_string()).collect();
        let bind = |source: &Path, ro: bool| Mount {
            kind: "bind".into(),
            source: source.display().to_string(),
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        match (s.record.kind, parents.len()) {
            (Kind::Active, 0) => vec![bind(&own, false)],
            (Kind::Active, _) => {
                let dir = self.dir(s.record.id);
                options.push(format!("workdir={}", dir.join("work").display()));
                options.push(format!("upperdir={}", own.display()));
                options.push(format!("lowerdir={}", parents.join(":")));
                vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
            }
            (_, 0) => vec![bind(&own, true)],
            (_, 1) => vec![bind(Path::new(&parents[0]), true)],
            (_, _) => {
                options.push(format!("lowerdir={}", parents.join(":")));
                vec![Mount { kind: "overlay".into(), source: "overlay".into(), options }]
            }
        }
    }

    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let resolved = self.store.get(key)?;
        let usage = disk_usage(&self.fs(resolved.record.id))?;
        let labels = (!labels.is_empty()).then_some(labels);
        self.store.commit(name, key, labels, usage)?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        let rec = self.store.remove(key)?;
        let dir = self.dir(rec.id);
        release_mount(&dir);
        crate::stats::retire(&self.root, &dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                // The record is gone; Cleanup retries the directory.
                tracing::warn!(dir = %dir.display(), error = %e, "removed snapshot's directory is left for Cleanup");
            }
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<Info> {
        let r = self.store.get(key)?;
        Ok(Info { name: r.key, record: r.record })
    }

    /// Update: labels are the only mutable field. `paths` is the request's
    /// field mask: empty or `labels` replaces all labels, `labels.<k>`
    /// replaces one.
    pub fn update(&self, key: &str, labels: BTreeMap<String, String>, paths: &[String]) -> Result<Info> {
        let mut only = Vec::new();
        let mut all = paths.is_empty();
        for p in paths {
            if p == "labels" {
                all = true;
            } else if let Some(k) = p.strip_prefix("labels.") {
                only.push(k.to_string());
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {p:?}: only labels (\"labels\" or \"labels.<key>\") can change"
                )));
            }
        }
        let which = if all { LabelUpdate::All } else { LabelUpdate::Only(only) };
        let record = self.store.update_labels(key, labels, which)?;
        Ok(Info { name: key.to_owned(), record })
    }

    /// Walk: every snapshot matching any of `filters` (all when empty).
    pub fn walk(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filters.iter().filter(|f| !f.is_empty()).map(|f| Filter::parse(f)).collect::<Result<Vec<_>>>()?;
        let all = self.store.list()?;
        Ok(all
            .into_iter()
            .map(|(name, record)| Info { name, record })
            .filter(|i| filters.is_empty() || filters.iter().any(|f| f.matches(i)))
            .collect())
    }

    /// Usage: measured now for active snapshots, recorded at commit otherwise.
    pub fn usage(&self, key: &str) -> Result<(i64, i64)> {
        let r = self.store.get(key)?;
        match r.record.kind {
            // What is on this node's disk of a lazy layer so far.
            Kind::Committed if r.record.labels.contains_key(LABEL_LAZY) => {
                disk_usage(&self.dir(r.record.id).join("lazy"))
            }
            Kind::Committed => Ok((r.record.size, r.record.inodes)),
            _ => disk_usage(&self.fs(r.record.id)),
        }
    }

    /// Removes directories no snapshot owns.
    pub fn cleanup(&self) -> Result<usize> {
        let owned: HashSet<u64> = self.store.list()?.into_iter().map(|(_, r)| r.id).collect();
        let snaps = self.root.join("snapshots");
        let mut removed = 0;
        let entries = std::fs::read_dir(&snaps).map_err(Error::io(format!("cannot list {}", snaps.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let owned_dir = name.to_str().and_then(|n| n.parse::<u64>().ok()).is_some_and(|id| owned.contains(&id));
            if !owned_dir {
                release_mount(&entry.path());
                crate::stats::retire(&self.root, &entry.path());
                std::fs::remove_dir_all(entry.path())
                    .map_err(Error::io(format!("cannot remove {}", entry.path().display())))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Unmounts a lazy snapshot's file system before its directory goes.
fn release_mount(dir: &Path) {
    let fs = dir.join("fs");
    if crate::mounts::is_mounted(&fs) && !crate::mounts::unmount(&fs) {
        tracing::warn!(mount = %fs.display(), "cannot unmount a removed lazy layer");
    }
}

/// Bytes allocated and inodes used under `root`, hard links counted once
/// (what containerd's overlayfs snapshotter reports).
fn disk_usage(root: &Path) -> Result<(i64, i64)> {
    let mut seen = HashSet::new();
    let (mut size, mut inodes) = (0i64, 0i64);
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(Error::io(format!("cannot stat {}", p.display())))?;
        if seen.insert((md.dev(), md.ino())) {
            inodes += 1;
            size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() {
            let rd = std::fs::read_dir(&p).map_err(Error::io(format!("cannot list {}", p.display())))?;
            for e in rd {
                stack.push(e.map_err(Error::io(format!("cannot list {}", p.display())))?.path());
            }
        }
    }
    Ok((size, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_the_overlayfs_snapshotter() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path()).unwrap();
        let m = s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        assert_eq!(m[0].kind, "bind");
        assert!(m[0].options.contains(&"rw".to_string()));
        std::fs::write(s.fs(1).join("file"), vec![7u8; 10_000]).unwrap();
        s.commit("l1", "a", BTreeMap::new()).unwrap();
        let (size, inodes) = s.usage("l1").unwrap();
        assert!(size >= 10_000 && inodes == 2, "{size} {inodes}");
        s.create(Kind::Active, "b", "l1", BTreeMap::new()).unwrap();
        s.commit("l2", "b", BTreeMap::new()).unwrap();
        let m = s.create(Kind::Active, "c", "l2", BTreeMap::new()).unwrap();
        assert_eq!(m[0].kind, "overlay");
        let lower = m[0].options.iter().find(|o| o.starts_with("lowerdir=")).unwrap();
        assert_eq!(lower, &format!("lowerdir={}:{}", s.fs(2).display(), s.fs(1).display()));
        let v = s.create(Kind::View, "v", "l1", BTreeMap::new()).unwrap();
        assert_eq!((v[0].kind.as_str(), v[0].source.clone()), ("bind", s.fs(1).display().to_string()));
        assert!(v[0].options.contains(&"ro".to_string()));
        assert!(matches!(s.mounts("l1"), Err(Error::FailedPrecondition(_))));
        assert_eq!(s.mounts("c").unwrap(), m);
    }

    #[test]
    fn remove_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path()).unwrap();
        s.create(Kind::Active, "a", "", BTreeMap::new()).unwrap();
        std::fs::create_dir_all(dir.path().join("snapshots/99/fs")).unwrap();
        assert_eq!(s.cleanup().unwrap(), 1);
        assert!(s.fs(1).exists());
        s.remove("a").unwrap();
        assert!(!s.dir(1).exists());
        assert!(matches!(s.remove("a"), Err(Error::NotFound(_))));
    }

    #[test]
    fn update_field_masks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path()).unwrap();
        let labels = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]);
        s.create(Kind::Active, "k", "", labels).unwrap();
        let up = BTreeMap::from([("a".to_string(), "3".to_string())]);
        let i = s.update("k", up.clone(), &["labels.a".into()]).unwrap();
        assert_eq!(i.record.labels.get("a").unwrap(), "3");
        assert_eq!(i.record.labels.get("b").unwrap(), "2");
        let i = s.update("k", up.clone(), &[]).unwrap();
        assert_eq!(i.record.labels, up);
        assert!(matches!(s.update("k", up, &["parent".into()]), Err(Error::InvalidArgument(_))));
    }
}
