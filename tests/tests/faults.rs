//! What survives failures: a full disk, `kill -9` mid-upload, and SIGTERM
//! with a request in flight. In every case no unverified blob is readable
//! and the registry keeps working afterwards.

use crate::common::{require_tool, run, sha256, Berthd};
use bytes::Bytes;
use std::process::Command;
use std::time::Duration;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed).collect()
}

/// A body that sends `first`, then waits `pause`, then sends `second`.
fn slow_body(first: Vec<u8>, pause: Duration, second: Vec<u8>) -> reqwest::Body {
    let parts = vec![(Duration::ZERO, first), (pause, second)];
    let stream = futures_util::stream::unfold(parts.into_iter(), |mut parts| async move {
        let (wait, chunk) = parts.next()?;
        tokio::time::sleep(wait).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), parts))
    });
    reqwest::Body::wrap_stream(stream)
}

async fn blob_status(client: &reqwest::Client, base: &str, repo: &str, digest: &str) -> u16 {
    client.get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_full_disk_fails_the_upload_cleanly_and_loses_nothing() {
    if unsafe_geteuid() != 0 {
        panic!("this test mounts a small tmpfs and must run as root (CI runs as root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new(require_tool("mount")).args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&root));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(root.clone());
    let berthd = Berthd::start_with_root(dir, root.clone(), "", &[]);
    let client = reqwest::Client::new();
    let base = berthd.url();

    let small = data(100_000, 1);
    let small_digest = sha256(&small);
    let r = client
        .post(format!("{base}/v2/app/blobs/uploads/?digest={small_digest}"))
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let big = data(3 * 1024 * 1024, 2);
    let big_digest = sha256(&big);
    let r = client.post(format!("{base}/v2/app/blobs/uploads/?digest={big_digest}")).body(big).send().await.unwrap();
    assert_eq!(r.status(), 507, "a full disk is reported as 507 Insufficient Storage");
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("full"), "message says the storage is full: {msg}");
    assert_eq!(blob_status(&client, &base, "app", &big_digest).await, 404);

    // The blob pushed before is intact and the space of the failed upload
    // was given back, so a new small push works.
    let got = client.get(format!("{base}/v2/app/blobs/{small_digest}")).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), small.as_slice());
    let again = data(200_000, 3);
    let again_digest = sha256(&again);
    let r =
        client.post(format!("{base}/v2/app/blobs/uploads/?digest={again_digest}")).body(again).send().await.unwrap();
    assert_eq!(r.status(), 201);
}

fn unsafe_geteuid() -> u32 {
    // `id -u` keeps the test free of libc bindings.
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn kill_9_mid_upload_leaves_nothing_readable_and_the_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut berthd = Berthd::start_with_root(dir, root.clone(), "", &[]);
    let client = reqwest::Client::new();
    let base = berthd.url();
    let first = data(1_000_000, 4);
    let second = data(1_500_000, 5);
    let whole: Vec<u8> = [first.clone(), second.clone()].concat();
    let digest = sha256(&whole);

    // A chunked session with its first chunk stored.
    let r = client.post(format!("{base}/v2/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = client
        .patch(format!("{base}{location}"))
        .header("content-range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // A monolithic push of the same bytes, killed half-way through its body.
    let url = format!("{base}/v2/app/blobs/uploads/?digest={digest}");
    let slow = tokio::spawn({
        let client = client.clone();
        let body = slow_body(first.clone(), Duration::from_secs(30), second.clone());
        async move { client.post(url).body(body).send().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    berthd.child.kill().unwrap(); // SIGKILL
    berthd.child.wait().unwrap();
    assert!(slow.await.unwrap().is_err(), "the killed request cannot have succeeded");

    // Restarted on the same root: nothing unverified is readable.
    let dir2 = tempfile::tempdir().unwrap();
    let berthd2 = Berthd::start_with_root(dir2, root, "", &[]);
    let base2 = berthd2.url();
    assert_eq!(blob_status(&client, &base2, "app", &digest).await, 404);

    // The chunked session survived the restart and finishes, verified.
    let st = client.get(format!("{base2}{location}")).send().await.unwrap();
    assert_eq!(st.status(), 204);
    assert_eq!(st.headers()["range"].to_str().unwrap(), format!("0-{}", first.len() - 1));
    let r = client
        .put(format!("{base2}{location}?digest={digest}"))
        .header("content-range", format!("{}-{}", first.len(), whole.len() - 1))
        .body(second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let got = client.get(format!("{base2}/v2/app/blobs/{digest}")).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), whole.as_slice());
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish_then_exits() {
    let mut berthd = Berthd::start("");
    let client = reqwest::Client::new();
    let base = berthd.url();
    let first = data(300_000, 6);
    let second = data(300_000, 7);
    let digest = sha256(&[first.clone(), second.clone()].concat());
    let url = format!("{base}/v2/app/blobs/uploads/?digest={digest}");
    let upload = tokio::spawn({
        let client = client.clone();
        let body = slow_body(first, Duration::from_secs(2), second);
        async move { client.post(url).body(body).send().await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    run(Command::new(require_tool("kill")).args(["-TERM", &berthd.child.id().to_string()]));
    let resp = upload.await.unwrap().expect("in-flight request completes");
    assert_eq!(resp.status(), 201);
    let status = tokio::task::spawn_blocking(move || {
        let s = berthd.child.wait().unwrap();
        (s, berthd.log_text())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "berthd exits 0 after draining: {:?}\n{}", status.0, status.1);
    assert!(status.1.contains("shutdown signal received"));
}
