//! Snapshot metadata in an embedded transactional store (redb): every
//! change is one write transaction, so a crash leaves either the old or the
//! new state, never a half-written file. Only metadata lives here; the file
//! trees are directories named by the snapshot's numeric id (see
//! [`crate::snapshots`]), so renaming a snapshot on commit moves no files.
//!
//! containerd's own metadata layer namespaces keys before they reach a
//! proxy snapshotter, so keys here are opaque strings.

use crate::error::{Error, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// key → JSON [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Counters: `next_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// Wall-clock time as stored: seconds and nanoseconds since the epoch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time {
    pub secs: i64,
    pub nanos: i32,
}

impl Time {
    pub fn now() -> Time {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Names the snapshot's directory; survives Commit (key → name).
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: Time,
    pub updated: Time,
    /// Disk usage, recorded at commit (committed snapshots never change).
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub inodes: i64,
}

/// What Stat, Update and Walk return about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub record: Record,
}

/// A snapshot with its ancestry: the ids of its parent chain, nearest first.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub key: String,
    pub record: Record,
    pub parent_ids: Vec<u64>,
}

/// Which labels an Update replaces: all of them, or the named ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelUpdate {
    All,
    Only(Vec<String>),
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|e| Error::Store(e.into(), path.to_owned()))?;
        let store = Store { db, path: path.to_owned() };
        // Create the tables so read transactions never meet a missing one.
        store.write(|tx| {
            tx.open_table(SNAPSHOTS)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn db_err(&self) -> impl Fn(redb::Error) -> Error + '_ {
        |e| Error::Store(e, self.path.clone())
    }

    /// Runs `f` in one write transaction; commits only when it returns Ok.
    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T, TxError>) -> Result<T> {
        let tx = self.db.begin_write().map_err(|e| self.db_err()(e.into()))?;
        match f(&tx) {
            Ok(v) => {
                tx.commit().map_err(|e| self.db_err()(e.into()))?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.abort();
                Err(e.into_error(&self.path))
            }
        }
    }

    /// Records a new active or view snapshot under `key` and calls `make`
    /// with its id before committing (to create its directories): if `make`
    /// fails nothing is recorded.
    pub fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
        make: impl FnOnce(u64) -> Result<()>,
    ) -> Result<Resolved> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key must not be empty".into()));
        }
        self.write(|tx| {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            if snaps.get(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_owned()).into());
            }
            let parent_ids = match parent {
                Some(p) => {
                    let rec = get(&snaps, p)?.ok_or_else(|| Error::NotFound(p.to_owned()))?;
                    if rec.kind != Kind::Committed {
                        return Err(Error::FailedPrecondition(format!(
                            "parent {p:?} is not committed; commit it before using it as a parent"
                        ))
                        .into());
                    }
                    chain(&snaps, p, rec)?
                }
                None => Vec::new(),
            };
            let mut meta = tx.open_table(META)?;
            let id = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            meta.insert("next_id", id + 1)?;
            let now = Time::now();
            let record = Record {
                id,
                kind,
                parent: parent.map(str::to_owned),
                labels,
                created: now,
                updated: now,
                size: 0,
                inodes: 0,
            };
            put(&mut snaps, key, &record)?;
            make(id)?;
            Ok(Resolved { key: key.to_owned(), record, parent_ids })
        })
    }

    pub fn get(&self, key: &str) -> Result<Resolved> {
        let tx = self.db.begin_read().map_err(|e| self.db_err()(e.into()))?;
        let read = || -> Result<Resolved, TxError> {
            let snaps = tx.open_table(SNAPSHOTS)?;
            let record = get(&snaps, key)?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
            let parent_ids = match &record.parent {
                Some(p) => {
                    let rec = get(&snaps, p)?.ok_or_else(|| Error::NotFound(p.clone()))?;
                    chain(&snaps, p, rec)?
                }
                None => Vec::new(),
            };
            Ok(Resolved { key: key.to_owned(), record, parent_ids })
        };
        read().map_err(|e| e.into_error(&self.path))
    }

    /// Turns active `key` into committed `name` with the usage measured by
    /// the caller; `labels` replace the active snapshot's labels when given.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: Option<BTreeMap<String, String>>,
        usage: (i64, i64),
    ) -> Result<Record> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("commit name must not be empty".into()));
        }
        self.write(|tx| {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            let mut rec = get(&snaps, key)?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
            if rec.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is a {:?} snapshot; only active snapshots can be committed",
                    rec.kind
                ))
                .into());
            }
            if snaps.get(name)?.is_some() {
                return Err(Error::AlreadyExists(name.to_owned()).into());
            }
            rec.kind = Kind::Committed;
            if let Some(l) = labels {
                rec.labels = l;
            }
            let now = Time::now();
            rec.created = now;
            rec.updated = now;
            (rec.size, rec.inodes) = usage;
            snaps.remove(key)?;
            put(&mut snaps, name, &rec)?;
            Ok(rec)
        })
    }

    /// Removes `key`; refused while another snapshot names it as parent.
    pub fn remove(&self, key: &str) -> Result<Record> {
        self.write(|tx| {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            let rec = get(&snaps, key)?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
            for entry in snaps.iter()? {
                let (k, v) = entry?;
                let child: Record = decode(v.value())?;
                if child.parent.as_deref() == Some(key) {
                    return Err(Error::FailedPrecondition(format!(
                        "snapshot {key:?} is the parent of {:?}; remove its children first",
                        k.value()
                    ))
                    .into());
                }
            }
            snaps.remove(key)?;
            Ok(rec)
        })
    }

    /// Replaces labels (the only mutable field) and returns the new record.
    pub fn update_labels(&self, key: &str, labels: BTreeMap<String, String>, which: LabelUpdate) -> Result<Record> {
        self.write(|tx| {
            let mut snaps = tx.open_table(SNAPSHOTS)?;
            let mut rec = get(&snaps, key)?.ok_or_else(|| Error::NotFound(key.to_owned()))?;
            match which {
                LabelUpdate::All => rec.labels = labels,
                LabelUpdate::Only(names) => {
                    for n in names {
                        match labels.get(&n) {
                            Some(v) => rec.labels.insert(n, v.clone()),
                            None => rec.labels.remove(&n),
                        };
                    }
                }
            }
            rec.updated = Time::now();
            put(&mut snaps, key, &rec)?;
            Ok(rec)
        })
    }

    /// Every snapshot, in key order.
    pub fn list(&self) -> Result<Vec<(String, Record)>> {
        let tx = self.db.begin_read().map_err(|e| self.db_err()(e.into()))?;
        let read = || -> Result<Vec<(String, Record)>, TxError> {
            let snaps = tx.open_table(SNAPSHOTS)?;
            let mut out = Vec::new();
            for entry in snaps.iter()? {
                let (k, v) = entry?;
                out.push((k.value().to_owned(), decode(v.value())?));
            }
            Ok(out)
        };
        read().map_err(|e| e.into_error(&self.path))
    }
}

/// Errors inside a transaction: redb's many error types, or ours.
enum TxError {
    Db(redb::Error),
    Ours(Error),
}

impl TxError {
    fn into_error(self, path: &Path) -> Error {
        match self {
            TxError::Db(e) => Error::Store(e, path.to_owned()),
            TxError::Ours(e) => e,
        }
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> TxError {
        TxError::Ours(e)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for TxError {
            fn from(e: $t) -> TxError {
                TxError::Db(e.into())
            }
        }
    )*};
}
from_redb!(redb::TableError, redb::StorageError);

fn decode(bytes: &[u8]) -> Result<Record, TxError> {
    serde_json::from_slice(bytes)
        .map_err(|e| TxError::Db(redb::Error::Corrupted(format!("snapshot record is not valid JSON: {e}"))))
}

fn get(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Record>, TxError> {
    match table.get(key)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn put(table: &mut redb::Table<&'static str, &'static [u8]>, key: &str, rec: &Record) -> Result<(), TxError> {
    let bytes = serde_json::to_vec(rec).expect("records serialize");
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Ids of `first` (whose record is `rec`) and its ancestors, nearest first.
fn chain(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    first: &str,
    rec: Record,
) -> Result<Vec<u64>, TxError> {
    let mut ids = vec![rec.id];
    let mut next = rec.parent;
    let mut seen = 1;
    while let Some(p) = next {
        let r = get(table, &p)?.ok_or_else(|| Error::NotFound(p.clone()))?;
        ids.push(r.id);
        next = r.parent;
        seen += 1;
        if seen > 4096 {
            return Err(Error::FailedPrecondition(format!("parent chain of {first:?} loops")).into());
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("meta.redb")).unwrap();
        (dir, s)
    }

    fn ok(_: u64) -> Result<()> {
        Ok(())
    }

    #[test]
    fn lifecycle_and_codes() {
        let (_d, s) = store();
        let a = s.create("a", None, Kind::Active, BTreeMap::new(), ok).unwrap();
        assert!(matches!(s.create("a", None, Kind::Active, BTreeMap::new(), ok), Err(Error::AlreadyExists(_))));
        // An active snapshot cannot be a parent.
        assert!(matches!(
            s.create("b", Some("a"), Kind::Active, BTreeMap::new(), ok),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(s.create("b", Some("nope"), Kind::Active, BTreeMap::new(), ok), Err(Error::NotFound(_))));
        let c = s.commit("layer1", "a", None, (10, 2)).unwrap();
        assert_eq!((c.id, c.kind, c.size), (a.record.id, Kind::Committed, 10));
        assert!(matches!(s.get("a"), Err(Error::NotFound(_))));
        let b = s.create("b", Some("layer1"), Kind::Active, BTreeMap::new(), ok).unwrap();
        assert_eq!(b.parent_ids, vec![a.record.id]);
        assert!(matches!(s.commit("layer1", "b", None, (0, 0)), Err(Error::AlreadyExists(_))));
        assert!(matches!(s.commit("x", "layer1", None, (0, 0)), Err(Error::FailedPrecondition(_))));
        assert!(matches!(s.remove("layer1"), Err(Error::FailedPrecondition(_))));
        s.remove("b").unwrap();
        s.remove("layer1").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn failed_make_records_nothing_and_ids_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            let e = s.create("a", None, Kind::Active, BTreeMap::new(), |_| Err(Error::InvalidArgument("no".into())));
            assert!(e.is_err());
            assert!(s.list().unwrap().is_empty());
            s.create("b", None, Kind::View, BTreeMap::new(), ok).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let b = s.get("b").unwrap();
        assert_eq!(b.record.kind, Kind::View);
        let c = s.create("c", None, Kind::Active, BTreeMap::new(), ok).unwrap();
        assert!(c.record.id > b.record.id, "ids are never reused");
    }

    #[test]
    fn label_updates() {
        let (_d, s) = store();
        let labels = BTreeMap::from([("x".to_string(), "1".to_string()), ("y".to_string(), "2".to_string())]);
        s.create("a", None, Kind::Active, labels, ok).unwrap();
        let new = BTreeMap::from([("x".to_string(), "9".to_string())]);
        let r = s.update_labels("a", new.clone(), LabelUpdate::Only(vec!["x".into(), "y".into()])).unwrap();
        assert_eq!(r.labels, new, "y was named and absent: removed");
        let r = s.update_labels("a", BTreeMap::new(), LabelUpdate::All).unwrap();
        assert!(r.labels.is_empty());
        assert!(matches!(s.update_labels("zz", BTreeMap::new(), LabelUpdate::All), Err(Error::NotFound(_))));
    }
}
