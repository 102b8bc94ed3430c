//! What configure wrote, kept beside the hosts files
//! (`.berthd-configure.json`), so a later run or `--remove` knows its own
//! files and directories and restores what was there before.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Default)]
pub(super) struct State {
    pub files: Vec<Managed>,
    /// Directories configure created (they did not exist before), removed
    /// again by `--remove` when empty.
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize, Clone)]
pub(super) struct Managed {
    pub path: PathBuf,
    /// Content before berthd first wrote the file; `None`: it did not exist.
    pub original: Option<String>,
    /// What berthd wrote last.
    pub written: String,
}

impl State {
    /// Records the directories that writing `file` will create.
    pub fn note_new_dirs(&mut self, file: &Path) {
        let mut missing = Vec::new();
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in missing {
            if !self.created_dirs.contains(&d) {
                self.created_dirs.push(d);
            }
        }
    }

    /// Removes the directories configure created that are empty now,
    /// deepest first; returns those removed.
    pub fn remove_created_dirs(&mut self) -> Vec<PathBuf> {
        let mut dirs = std::mem::take(&mut self.created_dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for d in dirs {
            match std::fs::remove_dir(&d) {
                Ok(()) => removed.push(d),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Not empty: something else lives there now.
                Err(_) => kept.push(d),
            }
        }
        self.created_dirs = kept;
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_dirs_are_removed_deepest_first_and_only_when_empty() {
        let root = tempfile::tempdir().unwrap();
        let mut s = State::default();
        let a = root.path().join("certs.d/docker.io/hosts.toml");
        let b = root.path().join("certs.d/ghcr.io/hosts.toml");
        s.note_new_dirs(&a);
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        s.note_new_dirs(&b);
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        assert_eq!(s.created_dirs.len(), 3, "certs.d once, and each registry's directory");
        std::fs::write(root.path().join("certs.d/ghcr.io/mine"), "x").unwrap();
        let removed = s.remove_created_dirs();
        assert_eq!(removed, vec![root.path().join("certs.d/docker.io")]);
        assert!(root.path().join("certs.d/ghcr.io/mine").exists(), "a directory with other files stays");
        assert_eq!(s.created_dirs.len(), 2);
    }
}
