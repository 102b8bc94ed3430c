//! The storage contract, as one test suite that every backend runs (like
//! distribution's driver test suite). A backend's own test module calls
//! [`run_all`] with a driver on an empty root.

use super::{StorageDriver, StorageError};
use bytes::Bytes;
use futures_util::TryStreamExt;

async fn read_all(d: &dyn StorageDriver, path: &str, offset: u64) -> Vec<u8> {
    let s = d.reader(path, offset).await.expect("reader");
    let chunks: Vec<Bytes> = s.try_collect().await.expect("read stream");
    chunks.concat()
}

/// Runs every contract check against `d`, which must start empty.
pub async fn run_all(d: &dyn StorageDriver) {
    put_get_replace(d).await;
    missing_objects_are_not_found(d).await;
    readers_start_at_offsets(d).await;
    range_reads(d).await;
    writers_commit_append_and_cancel(d).await;
    large_objects_stream(d).await;
    stat_and_list(d).await;
    move_replaces_destination(d).await;
    delete_is_recursive(d).await;
    delete_objects_in_batches(d).await;
    invalid_paths_are_refused(d).await;
}

async fn put_get_replace(d: &dyn StorageDriver) {
    d.put_content("/put/a", Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(&d.get_content("/put/a").await.unwrap()[..], b"one");
    d.put_content("/put/a", Bytes::from_static(b"two!")).await.unwrap();
    assert_eq!(&d.get_content("/put/a").await.unwrap()[..], b"two!");
    d.put_content("/put/empty", Bytes::new()).await.unwrap();
    assert_eq!(d.get_content("/put/empty").await.unwrap().len(), 0);
}

async fn missing_objects_are_not_found(d: &dyn StorageDriver) {
    assert!(d.get_content("/missing/x").await.unwrap_err().is_not_found());
    assert!(d.reader("/missing/x", 0).await.err().unwrap().is_not_found());
    assert!(d.stat("/missing/x").await.unwrap_err().is_not_found());
    assert!(d.list("/missing").await.unwrap_err().is_not_found());
    assert!(d.delete("/missing/x").await.unwrap_err().is_not_found());
    assert!(d.move_object("/missing/x", "/missing/y").await.unwrap_err().is_not_found());
}

async fn readers_start_at_offsets(d: &dyn StorageDriver) {
    d.put_content("/read/r", Bytes::from_static(b"0123456789")).await.unwrap();
    assert_eq!(read_all(d, "/read/r", 0).await, b"0123456789");
    assert_eq!(read_all(d, "/read/r", 7).await, b"789");
    assert_eq!(read_all(d, "/read/r", 10).await, b"");
    assert!(matches!(d.reader("/read/r", 11).await.err().unwrap(), StorageError::InvalidOffset { .. }));
}

async fn range_reads(d: &dyn StorageDriver) {
    d.put_content("/range/r", Bytes::from_static(b"0123456789")).await.unwrap();
    let read = |offset, len| async move {
        let s = d.read_range("/range/r", offset, len).await.expect("read_range");
        let chunks: Vec<Bytes> = s.try_collect().await.expect("range stream");
        chunks.concat()
    };
    assert_eq!(read(2, 3).await, b"234");
    assert_eq!(read(0, 10).await, b"0123456789");
    assert_eq!(read(8, 5).await, b"89", "clipped at the end");
    assert_eq!(read(4, 0).await, b"");
    assert!(d.read_range("/missing/r", 0, 1).await.err().unwrap().is_not_found());
}

async fn writers_commit_append_and_cancel(d: &dyn StorageDriver) {
    let mut w = d.writer("/w/obj", false).await.unwrap();
    w.write(b"hello ").await.unwrap();
    assert_eq!(w.size(), 6);
    w.close().await.unwrap();
    let mut w = d.writer("/w/obj", true).await.unwrap();
    assert_eq!(w.size(), 6, "append resumes at the previous size");
    w.write(b"world").await.unwrap();
    assert_eq!(w.size(), 11);
    w.commit().await.unwrap();
    assert_eq!(read_all(d, "/w/obj", 0).await, b"hello world");
    assert_eq!(d.stat("/w/obj").await.unwrap().size, 11);

    let w = d.writer("/w/obj", false).await.unwrap();
    assert_eq!(w.size(), 0, "a non-append writer starts empty");
    w.commit().await.unwrap();
    assert_eq!(d.stat("/w/obj").await.unwrap().size, 0);

    let mut w = d.writer("/w/cancelled", false).await.unwrap();
    w.write(b"gone").await.unwrap();
    w.cancel().await.unwrap();
    assert!(d.stat("/w/cancelled").await.unwrap_err().is_not_found());
}

async fn large_objects_stream(d: &dyn StorageDriver) {
    // Several MiB in uneven pieces, so backends that buffer parts
    // (S3 multipart) are exercised across part boundaries.
    let data: Vec<u8> = (0..(6 * 1024 * 1024 + 12345u32)).map(|i| (i * 31 % 251) as u8).collect();
    let mut w = d.writer("/big/blob", false).await.unwrap();
    for piece in data.chunks(1_000_003) {
        w.write(piece).await.unwrap();
    }
    w.close().await.unwrap();
    let mut w = d.writer("/big/blob", true).await.unwrap();
    assert_eq!(w.size(), data.len() as u64);
    w.write(b"tail").await.unwrap();
    w.commit().await.unwrap();
    let mut expect = data.clone();
    expect.extend_from_slice(b"tail");
    assert_eq!(read_all(d, "/big/blob", 0).await, expect);
    assert_eq!(read_all(d, "/big/blob", 5_000_000).await, &expect[5_000_000..]);
}

async fn stat_and_list(d: &dyn StorageDriver) {
    d.put_content("/tree/a/1", Bytes::from_static(b"x")).await.unwrap();
    d.put_content("/tree/a/2", Bytes::from_static(b"yy")).await.unwrap();
    d.put_content("/tree/b/c/3", Bytes::from_static(b"z")).await.unwrap();
    d.put_content("/tree/f", Bytes::from_static(b"f")).await.unwrap();
    assert_eq!(d.list("/tree").await.unwrap(), vec!["/tree/a", "/tree/b", "/tree/f"]);
    assert_eq!(d.list("/tree/a").await.unwrap(), vec!["/tree/a/1", "/tree/a/2"]);
    let st = d.stat("/tree/a/2").await.unwrap();
    assert_eq!((st.size, st.is_dir), (2, false));
    assert!(d.stat("/tree/b").await.unwrap().is_dir);
}

async fn move_replaces_destination(d: &dyn StorageDriver) {
    d.put_content("/mv/src", Bytes::from_static(b"new")).await.unwrap();
    d.put_content("/mv/dst/x", Bytes::from_static(b"old")).await.unwrap();
    d.move_object("/mv/src", "/mv/dst/x").await.unwrap();
    assert_eq!(&d.get_content("/mv/dst/x").await.unwrap()[..], b"new");
    assert!(d.stat("/mv/src").await.unwrap_err().is_not_found());
    d.put_content("/mv/src2", Bytes::from_static(b"deep")).await.unwrap();
    d.move_object("/mv/src2", "/mv/new/dir/obj").await.unwrap();
    assert_eq!(&d.get_content("/mv/new/dir/obj").await.unwrap()[..], b"deep");
}

async fn delete_is_recursive(d: &dyn StorageDriver) {
    d.put_content("/del/a/1", Bytes::from_static(b"1")).await.unwrap();
    d.put_content("/del/a/b/2", Bytes::from_static(b"2")).await.unwrap();
    d.put_content("/del/keep", Bytes::from_static(b"k")).await.unwrap();
    d.delete("/del/a").await.unwrap();
    assert!(d.stat("/del/a/b/2").await.unwrap_err().is_not_found());
    assert!(d.stat("/del/a").await.unwrap_err().is_not_found());
    assert_eq!(d.list("/del").await.unwrap(), vec!["/del/keep"]);
    d.delete("/del/keep").await.unwrap();
    assert!(d.get_content("/del/keep").await.unwrap_err().is_not_found());
}

async fn delete_objects_in_batches(d: &dyn StorageDriver) {
    // More than one S3 batch, some already gone, one left alone.
    let paths: Vec<String> = (0..1005).map(|i| format!("/many/{}/{i}", i % 7)).collect();
    for p in paths.iter().step_by(2) {
        d.put_content(p, Bytes::from_static(b"x")).await.unwrap();
    }
    d.put_content("/many/keep", Bytes::from_static(b"k")).await.unwrap();
    d.delete_objects(&paths).await.unwrap();
    for p in paths.iter().step_by(50) {
        assert!(d.stat(p).await.unwrap_err().is_not_found(), "{p} is deleted");
    }
    assert_eq!(&d.get_content("/many/keep").await.unwrap()[..], b"k");
    d.delete_objects(&[]).await.unwrap();
    d.delete("/many").await.unwrap();
}

async fn invalid_paths_are_refused(d: &dyn StorageDriver) {
    for bad in ["relative", "/a/../../etc/passwd", "/a//b", "/a/b/", "/a/./b"] {
        assert!(matches!(d.get_content(bad).await, Err(StorageError::InvalidPath(_))), "{bad} must be refused");
        assert!(matches!(d.put_content(bad, Bytes::new()).await, Err(StorageError::InvalidPath(_))));
    }
}
