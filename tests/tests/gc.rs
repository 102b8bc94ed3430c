//! Garbage collection with many nodes on one bucket (SeaweedFS): one node
//! collects again and again, with no delay and `--delete-untagged`, while
//! another pushes (two-platform images too, whose children are untagged
//! until their index lands), deletes and pushes again; afterwards every
//! image a push was told was accepted is whole through both nodes, and
//! `berthd fsck` finds nothing wrong.

use crate::common::*;
use crate::support_e2e::*;
use crate::support_s3::{node, Seaweed};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn collections_while_another_node_pushes_lose_nothing_accepted() {
    let weed = Seaweed::start();
    let (a, b) = (node(&weed, "1GiB"), node(&weed, "1GiB"));
    let work = tempfile::tempdir().unwrap();
    let images: Vec<BusyboxImage> = (0..5)
        .map(|i| build_busybox_image_with(work.path(), &format!("img{i}"), &[("etc/n", format!("{i}\n").as_bytes())]))
        .collect();
    let sk = Skopeo::new();

    // Garbage to start with: an image pushed and deleted (in a repository
    // that is not left empty, which would go with its links).
    sk.push(&images[4].layout, &a.addr, "gc/zero:stays", &[]);
    sk.push(&images[0].layout, &a.addr, "gc/zero:v1", &[]);
    let del = http("DELETE", &format!("{}/v2/gc/zero/manifests/{}", a.url(), images[0].manifest_digest), &[]).unwrap();
    assert_eq!(del.status, 202);
    // A collection moves its blobs to the trash; a HEAD through the
    // repository that still links its layer brings that back.
    let (code, text) = b.gc(&["--delay", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("blob eligible for deletion: {}", images[0].layer_digest)), "{text}");
    let head = http("HEAD", &format!("{}/v2/gc/zero/blobs/{}", a.url(), images[0].layer_digest), &[]).unwrap();
    assert_eq!(head.status, 200, "a trashed blob is moved back when asked for");
    let restored = a.log.lock().unwrap().iter().any(|l| l.contains("moved back from the garbage collector's trash"));
    assert!(restored, "node A moved the layer back from the trash");

    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let stop = stop.clone();
        let b_config = b.config_path();
        let env: Vec<(String, String)> = Seaweed::env().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) || runs < 2 {
                let out = std::process::Command::new(berthd_bin())
                    .args(["gc", "--delay", "0s", "--delete-untagged", "--config"])
                    .arg(&b_config)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
                assert!(matches!(out.status.code(), Some(0) | Some(1)), "berthd gc failed: {text}");
                runs += 1;
            }
            runs
        })
    };

    // Meanwhile: pushes, the deleted image pushed again, another deleted.
    let (multi, multi_digest) = build_multiarch_index(work.path(), "multi", &images[1]);
    let mut accepted = Vec::new();
    let mut accepted_multi = Vec::new();
    for round in 0..3 {
        let reference = format!("gc/multi:r{round}");
        let out = sk.output(&[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &multi.oci_ref(),
            &format!("docker://{}/{reference}", a.addr),
        ]);
        if out.status.success() {
            accepted_multi.push(reference);
        } else {
            eprintln!("push {reference} refused: {}", String::from_utf8_lossy(&out.stderr));
        }
        for (i, img) in images.iter().enumerate() {
            let reference = format!("gc/app{i}:r{round}");
            let out = sk.output(&[
                "copy",
                "--dest-tls-verify=false",
                &img.layout.oci_ref(),
                &format!("docker://{}/{reference}", a.addr),
            ]);
            if out.status.success() {
                accepted.push((reference, img));
            } else {
                // Refused is allowed (a blob the collector deleted first); untrue is not.
                eprintln!("push {reference} refused: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        sk.push(&images[0].layout, &a.addr, "gc/zero:v1", &[]);
        accepted.push(("gc/zero:v1".to_string(), &images[0]));
    }
    stop.store(true, Ordering::Relaxed);
    let runs = collector.join().unwrap();
    assert!(runs >= 2, "the collector ran {runs} times");
    // Two more, now that nothing pushes: what is left is garbage only.
    for _ in 0..2 {
        let (code, text) = b.gc(&["--delay", "0s"]);
        assert_eq!(code, Some(0), "{text}");
    }
    assert!(accepted.len() >= 10, "most pushes were accepted: {}", accepted.len());

    for (reference, img) in &accepted {
        for node in [&a, &b] {
            let dir = work.path().join(format!(
                "pull-{}-{}",
                reference.replace(['/', ':'], "_"),
                node.addr.replace(':', "_")
            ));
            let pulled = sk.pull(&node.addr, reference, &dir, "v", &[]);
            assert_eq!(
                assert_same_image(&img.layout, &pulled),
                img.manifest_digest,
                "{reference} through {}",
                node.addr
            );
        }
    }
    assert!(!accepted_multi.is_empty(), "a two-platform push was accepted");
    for reference in &accepted_multi {
        for node in [&a, &b] {
            let dir = work.path().join(format!(
                "multi-{}-{}",
                reference.replace(['/', ':'], "_"),
                node.addr.replace(':', "_")
            ));
            sk.copy(&["--all"], &format!("docker://{}/{reference}", node.addr), &format!("oci:{}:v", dir.display()));
            assert_eq!(layout_ref_digest(&dir, "v"), multi_digest, "{reference} through {}", node.addr);
        }
    }
    let (clean, report) = b.fsck(false);
    assert!(clean, "fsck after the collections:\n{report}");
    let (code, text) = b.gc(&["--dry-run", "--delay", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("0 eligible for deletion"), "nothing but reachable content is left:\n{text}");
}

/// `storage.gc.interval`: a node collects on its own, once per interval
/// across the cluster, and says so in its metrics.
#[test]
fn nodes_collect_on_their_own_schedule() {
    let b = Berthd::start("  delete:\n    enabled: true\n  gc:\n    interval: 2s\n    delay: 0s\n");
    let work = tempfile::tempdir().unwrap();
    let kept = build_busybox_image(work.path(), "kept");
    let gone = build_busybox_image_with(work.path(), "gone", &[("etc/gone", b"gone\n")]);
    let sk = Skopeo::new();
    sk.push(&kept.layout, &b.addr, "auto/kept:v1", &[]);
    sk.push(&gone.layout, &b.addr, "auto/gone:v1", &[]);
    let del = http("DELETE", &format!("{}/v2/auto/gone/manifests/{}", b.url(), gone.manifest_digest), &[]).unwrap();
    assert_eq!(del.status, 202);
    let layer = |d: &str| b.root.join(format!("docker/registry/v2/blobs/sha256/{}/{}/data", &d[7..9], &d[7..]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while layer(&gone.layer_digest).exists() || b.metric("berth_gc_deleted_blobs_total") < 3.0 {
        assert!(std::time::Instant::now() < deadline, "no collection deleted the garbage:\n{}", b.metrics());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(layer(&kept.layer_digest).exists(), "the reachable image stays");
    assert!(b.metric("berth_gc_runs_total") >= 2.0 && b.metric("berth_gc_last_success_timestamp_seconds") > 0.0);
    let pulled = sk.pull(&b.addr, "auto/kept:v1", &work.path().join("pulled"), "v1", &[]);
    assert_eq!(assert_same_image(&kept.layout, &pulled), kept.manifest_digest);
}

/// A collector killed (`kill -9`) in the middle of its work: the next
/// collection takes over at once (the dead holder's lease is stale), and
/// nothing reachable is missing afterwards.
#[test]
fn a_collector_killed_midway_leaves_nothing_reachable_missing() {
    let weed = Seaweed::start();
    let a = node(&weed, "1GiB");
    let work = tempfile::tempdir().unwrap();
    let kept = build_busybox_image(work.path(), "kept");
    let sk = Skopeo::new();
    sk.push(&kept.layout, &a.addr, "kill/kept:v1", &[]);
    for i in 0..150u32 {
        let data = format!("garbage blob {i}").into_bytes();
        let d = sha256(&data);
        let url = format!("{}/v2/kill/garbage/blobs/uploads/?digest={d}", a.url());
        assert_eq!(http_with_body("POST", &url, &[], data).unwrap().status, 201);
    }
    for wait_ms in [150u64, 400, 900] {
        let mut child = std::process::Command::new(berthd_bin())
            .args(["gc", "--delay", "0s", "--delete-untagged", "--config"])
            .arg(a.config_path())
            .envs(Seaweed::env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let _ = child.kill();
        let _ = child.wait();
        // The next collection is not held up by the dead one's lease.
        let (code, text) = a.gc(&["--delay", "0s"]);
        assert_eq!(code, Some(0), "after a collector killed at {wait_ms} ms: {text}");
        let pulled = sk.pull(&a.addr, "kill/kept:v1", &work.path().join(format!("p{wait_ms}")), "v1", &[]);
        assert_eq!(assert_same_image(&kept.layout, &pulled), kept.manifest_digest);
    }
    let (code, text) = a.gc(&["--delay", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    let (clean, report) = a.fsck(false);
    assert!(clean, "{report}");
    let (_, text) = a.gc(&["--dry-run", "--delay", "0s"]);
    assert!(text.contains("0 eligible for deletion"), "{text}");
}
