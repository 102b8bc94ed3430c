//! The last answers seen for paths that are not content-addressed (links,
//! tags): served only while the backend is unreachable, so everything in
//! the cache stays pullable through an S3 outage; what was never seen
//! fails fast.

use crate::metrics;
use crate::storage::{FileInfo, Result, StorageError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// Bound on remembered paths (past it the memory starts over).
const MAX_REMEMBERED: usize = 20_000;

/// The last content and metadata seen for a path.
type Last = (Option<Bytes>, Option<FileInfo>);

#[derive(Default)]
pub(super) struct Remembered {
    map: Mutex<HashMap<String, Last>>,
}

impl Remembered {
    pub(super) fn content(&self, path: &str, content: Bytes) {
        self.update(path, |e| e.0 = Some(content));
    }

    pub(super) fn info(&self, path: &str, info: FileInfo) {
        self.update(path, |e| e.1 = Some(info));
    }

    fn update(&self, path: &str, f: impl FnOnce(&mut Last)) {
        let mut map = self.map.lock().unwrap();
        if map.len() >= MAX_REMEMBERED && !map.contains_key(path) {
            map.clear();
        }
        f(map.entry(path.to_string()).or_default());
    }

    /// Forgets `path` and everything under it (deleted).
    pub(super) fn forget(&self, path: &str) {
        let prefix = format!("{path}/");
        self.map.lock().unwrap().retain(|k, _| k != path && !k.starts_with(&prefix));
    }

    /// The answer of a backend call for `path`: remembered when it
    /// succeeded, forgotten when the object is gone, and — only when the
    /// backend is unreachable — the last answer seen (`pick` chooses which).
    pub(super) fn through<T: Clone>(
        &self,
        path: &str,
        answer: Result<T>,
        remember: impl FnOnce(&Self, &T),
        pick: impl FnOnce(&Last) -> Option<T>,
    ) -> Result<T> {
        match answer {
            Ok(v) => {
                remember(self, &v);
                Ok(v)
            }
            Err(e @ StorageError::Unavailable { .. }) => {
                let stale = self.map.lock().unwrap().get(path).and_then(pick);
                match stale {
                    Some(v) => {
                        metrics::get().cache_stale_served.inc();
                        Ok(v)
                    }
                    None => Err(e),
                }
            }
            Err(e) => {
                if e.is_not_found() {
                    self.map.lock().unwrap().remove(path);
                }
                Err(e)
            }
        }
    }
}
