//! Retention (`storage.retention.policies`), untagged manifests and
//! referrers, through real processes: skopeo pushes and pulls, pull times
//! flushed by a node that stops as systemd stops it, `berthd gc` with the
//! configuration each rule is written in, and what is left checked on
//! disk, through the API and by `berthd fsck`.

use crate::common::*;
use crate::support_e2e::*;
use std::path::Path;
use std::time::Duration;

/// A `berthd gc` configuration on `root` with `retention` (YAML under
/// `storage:`, indented by two).
fn gc_config(dir: &Path, name: &str, root: &Path, retention: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yml"));
    let yaml = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  gc:\n    interval: 0s\n{retention}\n",
        root.display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

fn gc(config: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(berthd_bin())
        .arg("gc")
        .arg("--config")
        .arg(config)
        .args(["--delay", "0s"])
        .args(args)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "berthd gc failed: {text}");
    text
}

fn removed_tags(text: &str) -> Vec<String> {
    let mut tags: Vec<String> =
        text.lines().filter_map(|l| l.strip_prefix("tag removed by retention: ")).map(str::to_string).collect();
    tags.sort();
    tags
}

/// Whether `digest` is still in the bucket: stored, or in the trash.
fn blob_on_disk(root: &Path, digest: &str) -> bool {
    registry_blob_data(root, digest).exists() || root.join(format!("berth/trash/sha256/{}/data", &digest[7..])).exists()
}

const SECOND: Duration = Duration::from_millis(1100);

#[test]
fn each_retention_rule_removes_tags_and_what_only_they_held() {
    let node = Berthd::start("  delete:\n    enabled: true\n  gc:\n    interval: 0s\n");
    let root = node.root.clone();
    let work = tempfile::tempdir().unwrap();
    let sk = Skopeo::new();
    let images: Vec<BusyboxImage> = (0..5)
        .map(|i| build_busybox_image_with(work.path(), &format!("img{i}"), &[("etc/n", format!("{i}\n").as_bytes())]))
        .collect();
    // Pushed a second apart (storage times), in this order.
    for (tag, img) in [("v1", &images[0]), ("v2", &images[1]), ("v3", &images[2]), ("dev", &images[3])] {
        sk.push(&img.layout, &node.addr, &format!("keep/app:{tag}"), &[]);
        std::thread::sleep(SECOND);
    }
    sk.push(&images[0].layout, &node.addr, "other/app:old", &[]);
    // v1 is pulled last; the node stores its pull times when it stops.
    sk.pull(&node.addr, "keep/app:v1", &work.path().join("pulled-v1"), "v1", &[]);
    let node = node.restart();

    // patterns + mostrecentlypushedcount, and mostrecentlypulledcount.
    let counts = gc_config(
        work.path(),
        "counts",
        &root,
        "  retention:\n    policies:\n      - repositories: [\"keep/**\"]\n        keeptags:\n          - patterns: [\"v.*\"]\n            mostrecentlypushedcount: 2\n          - mostrecentlypulledcount: 1\n",
    );
    let dry = gc(&counts, &["--dry-run"]);
    assert_eq!(removed_tags(&dry), ["keep/app:dev"], "{dry}");
    assert_eq!(tags_list(&node.url(), "keep/app").len(), 4, "a dry run removes nothing");
    let text = gc(&counts, &[]);
    assert_eq!(removed_tags(&text), ["keep/app:dev"], "v2, v3 by push; v1 by pull:\n{text}");
    assert_eq!(tags_list(&node.url(), "keep/app"), ["v1", "v2", "v3"]);
    assert_eq!(tags_list(&node.url(), "other/app"), ["old"], "no policy matches: every tag stays");
    let revision = |d: &str| {
        root.join(format!("docker/registry/v2/repositories/keep/app/_manifests/revisions/sha256/{}/link", &d[7..]))
    };
    assert!(!revision(&images[3].manifest_digest).exists(), "the manifest only dev held left the repository");
    gc(&counts, &[]);
    let dev = http("GET", &format!("{}/v2/keep/app/manifests/{}", node.url(), images[3].manifest_digest), &[]).unwrap();
    assert_eq!(dev.status, 404, "and the next collection deleted it");
    assert!(!blob_on_disk(&root, &images[3].layer_digest), "with its layer");

    // pulledwithin: v2 is pulled now; the other pulls and pushes are older.
    std::thread::sleep(SECOND * 3);
    sk.pull(&node.addr, "keep/app:v2", &work.path().join("pulled-v2"), "v2", &[]);
    let node = node.restart();
    let pulled = gc_config(
        work.path(),
        "pulled",
        &root,
        "  retention:\n    policies:\n      - repositories: [\"keep/*\"]\n        keeptags:\n          - pulledwithin: 3s\n",
    );
    assert_eq!(removed_tags(&gc(&pulled, &[])), ["keep/app:v1", "keep/app:v3"]);
    assert_eq!(tags_list(&node.url(), "keep/app"), ["v2"]);

    // pushedwithin: v4 is pushed now, v2 long ago.
    sk.push(&images[4].layout, &node.addr, "keep/app:v4", &[]);
    let pushed = gc_config(
        work.path(),
        "pushed",
        &root,
        "  retention:\n    policies:\n      - repositories: [\"keep/app\"]\n        keeptags:\n          - pushedwithin: 3s\n",
    );
    assert_eq!(removed_tags(&gc(&pushed, &[])), ["keep/app:v2"]);
    gc(&pushed, &[]);
    assert_eq!(tags_list(&node.url(), "keep/app"), ["v4"]);
    let left = sk.pull(&node.addr, "keep/app:v4", &work.path().join("pulled-v4"), "v4", &[]);
    assert_eq!(assert_same_image(&images[4].layout, &left), images[4].manifest_digest);
    for gone in &images[1..4] {
        assert!(!blob_on_disk(&root, &gone.layer_digest), "{} is collected", gone.layer_digest);
    }
    assert!(blob_on_disk(&root, &images[0].layer_digest), "other/app:old still holds v1's image");
    let (clean, report) = node.fsck(false);
    assert!(clean, "{report}");
    let dry = gc(&pushed, &["--dry-run"]);
    assert!(dry.contains(" 0 eligible for deletion"), "nothing but reachable content is left:\n{dry}");
}

/// Pushes a signature-like artifact whose subject is `subject` (a
/// manifest of `repo`) by digest; returns its digest.
fn push_referrer(base: &str, repo: &str, subject: &str, text: &str) -> String {
    let layer = ("application/octet-stream", text.as_bytes());
    push_artifact(base, repo, "application/vnd.example.signature", layer, (subject, 1))
}

fn referrer_count(base: &str, repo: &str, subject: &str) -> usize {
    let r = http_get(&format!("{base}/v2/{repo}/referrers/{subject}"));
    assert_eq!(r.status, 200);
    r.json()["manifests"].as_array().map_or(0, Vec::len)
}

#[test]
fn untagged_manifests_and_orphaned_referrers_go_while_indexes_keep_their_children() {
    let node = Berthd::start("  delete:\n    enabled: true\n  gc:\n    interval: 0s\n    deleteuntagged: true\n");
    let root = node.root.clone();
    let work = tempfile::tempdir().unwrap();
    let sk = Skopeo::new();
    let base = build_busybox_image(work.path(), "base");
    let next = build_busybox_image_with(work.path(), "next", &[("etc/next", b"next\n")]);
    let (index, index_digest) = build_multiarch_index(work.path(), "multi", &base);
    // v1 then moved to another image: the first becomes untagged.
    sk.push(&base.layout, &node.addr, "team/app:v1", &[]);
    sk.push(&next.layout, &node.addr, "team/app:v1", &[]);
    // A two-platform image: its children are pushed by digest, untagged.
    sk.copy(&["--all"], &index.oci_ref(), &format!("docker://{}/team/multi:v1", node.addr));
    // Signatures: of the image still tagged, and of the one that is not.
    let url = node.url();
    let kept_sig = push_referrer(&url, "team/app", &next.manifest_digest, "signature of next");
    let orphan_sig = push_referrer(&url, "team/app", &base.manifest_digest, "signature of base");

    let removed = |text: &str| {
        let mut r: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("manifest eligible for deletion: "))
            .map(str::to_string)
            .collect();
        r.sort();
        r
    };
    let mut want = [format!("team/app@{}", base.manifest_digest), format!("team/app@{orphan_sig}")];
    want.sort();
    // registry:2's short flags: -d (dry run), -m (delete untagged).
    let (code, dry) = node.gc(&["-d", "-m", "--delay", "0s"]);
    assert_eq!((code, removed(&dry)), (Some(0), want.to_vec()), "{dry}");
    assert_eq!(referrer_count(&url, "team/app", &base.manifest_digest), 1, "a dry run removes nothing");
    let (code, text) = node.gc(&["--delay", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(removed(&text), want, "{text}");
    assert_eq!(referrer_count(&url, "team/app", &next.manifest_digest), 1, "the signature of what stays stays");
    assert_eq!(referrer_count(&url, "team/app", &base.manifest_digest), 0);
    let gone = http("GET", &format!("{url}/v2/team/app/manifests/{orphan_sig}"), &[]).unwrap();
    // Asked for by digest after one collection: moved back (read-repair)...
    assert_eq!(gone.status, 200, "a trashed manifest asked for comes back until a later collection");
    // ...so two more collections to see it go.
    node.gc(&["--delay", "0s"]);
    let (code, text) = node.gc(&["--delay", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    let after = http("GET", &format!("{url}/v2/team/app/manifests/{}", base.manifest_digest), &[]).unwrap();
    assert_eq!(after.status, 404);
    let sig = http("GET", &format!("{url}/v2/team/app/manifests/{kept_sig}"), &[]).unwrap();
    assert_eq!(sig.status, 200, "the signature of what stays stays");

    // The index and every child still pull whole.
    let pulled = work.path().join("multi-pulled");
    sk.copy(&["--all"], &format!("docker://{}/team/multi:v1", node.addr), &format!("oci:{}:v1", pulled.display()));
    assert_eq!(layout_ref_digest(&pulled, "v1"), index_digest);
    let app = sk.pull(&node.addr, "team/app:v1", &work.path().join("app-pulled"), "v1", &[]);
    assert_eq!(assert_same_image(&next.layout, &app), next.manifest_digest);
    assert!(!blob_on_disk(&root, &base.config_digest) || base.config_digest == next.config_digest);
    let (clean, report) = node.fsck(false);
    assert!(clean, "{report}");
}

/// A mirror's repositories are ordinary repositories for retention:
/// `pulledwithin` bounds what the bucket keeps of an upstream.
#[test]
fn pulledwithin_bounds_what_a_mirror_keeps() {
    let work = tempfile::tempdir().unwrap();
    let upstream = Berthd::start("");
    let sk = Skopeo::new();
    let a = build_busybox_image_with(work.path(), "a", &[("etc/a", b"a\n")]);
    let b = build_busybox_image_with(work.path(), "b", &[("etc/b", b"b\n")]);
    sk.push(&a.layout, &upstream.addr, "library/a:1", &[]);
    sk.push(&b.layout, &upstream.addr, "library/b:1", &[]);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let retention = "  retention:\n    policies:\n      - repositories: [\"up.test/**\"]\n        keeptags:\n          - pulledwithin: 3s\n";
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n  gc:\n    interval: 0s\n{retention}mirrors:\n  - name: up.test\n    url: http://{}\n",
        root.display(),
        upstream.addr
    );
    let mirror = Berthd::start_config(dir, root.clone(), &yaml, &[]);
    let pull_through = |m: &Berthd, img: &BusyboxImage, name: &str| {
        let r = http_get(&format!("{}/v2/library/{name}/manifests/1?ns=up.test", m.url()));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        for d in [&img.config_digest, &img.layer_digest] {
            let blob = http_get(&format!("{}/v2/library/{name}/blobs/{d}?ns=up.test", m.url()));
            assert_eq!((blob.status, sha256(&blob.body)), (200, d.to_string()));
        }
    };
    pull_through(&mirror, &a, "a");
    pull_through(&mirror, &b, "b");
    std::thread::sleep(SECOND * 4);
    pull_through(&mirror, &a, "a");
    let mirror = mirror.restart();

    let (code, text) = mirror.gc(&["--delay", "0s"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(removed_tags(&text), ["up.test/library/b:1"], "{text}");
    mirror.gc(&["--delay", "0s"]);
    assert!(!blob_on_disk(&root, &b.layer_digest), "b left the bucket");
    assert!(blob_on_disk(&root, &a.layer_digest), "a, pulled lately, stays");
    // Pulled again, b comes from the upstream again.
    pull_through(&mirror, &b, "b");
    assert!(blob_on_disk(&root, &b.layer_digest));
}
