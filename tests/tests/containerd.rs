//! containerd (`ctr`, containerd 1.6) pulls from a real berthd through a
//! `hosts.toml` mirror entry and runs the image with runc.
//!
//! A private containerd is started per test (own root, state and socket in a
//! temp dir; CRI disabled). Needs root. The overlayfs snapshotter is used when
//! containerd reports it usable, else `native` (e.g. when the temp dir is on
//! overlayfs itself). `BERTH_TEST_SNAPSHOTTER=native|overlayfs` forces one.

use crate::common::Berthd;
use crate::support_e2e::containerd::{mounts_under, Containerd, MIRROR_HOST};
use crate::support_e2e::*;

#[test]
fn containerd_pulls_and_runs_image_from_berthd() {
    let work = tempfile::tempdir().unwrap();
    let img = build_busybox_image(work.path(), "src");
    let (multi, index_digest) = build_multiarch_index(work.path(), "multi", &img);
    let berthd = Berthd::start("");
    let sk = Skopeo::new();
    sk.push(&img.layout, &berthd.addr, "app:v1", &[]);
    sk.push(&multi, &berthd.addr, "app:multi", &["--all"]);

    let ctd = Containerd::start();
    let hosts = ctd.hosts_dir(&berthd.addr);
    let hosts = hosts.to_str().unwrap();
    let snap = format!("--snapshotter={}", ctd.snapshotter);
    let image = format!("{MIRROR_HOST}/app:v1");

    let pull = ctd.ctr_ok(&["images", "pull", &snap, "--hosts-dir", hosts, &image]);
    assert!(pull.contains("done"), "ctr pull output:\n{pull}");
    // What containerd resolved through berthd is exactly what skopeo pushed.
    assert_eq!(ctd.image_digest(&image), img.manifest_digest, "pulled image digest");
    // `ctr images check` verifies all content of the image is present locally.
    let check = ctd.ctr_ok(&["images", "check"]);
    assert!(check.lines().any(|l| l.starts_with(&image) && l.contains("complete")), "ctr images check:\n{check}");

    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        &snap,
        &image,
        &format!("{}-t1", ctd.namespace),
        "/bin/busybox",
        "echo",
        "hello-from-berth",
    ]);
    assert_eq!(out.trim_end_matches(['\r', '\n']), "hello-from-berth", "container stdout");

    // The image's own CMD (`/bin/sh -c "echo hi"`) runs too.
    let out = ctd.ctr_ok(&["run", "--rm", &snap, &image, &format!("{}-t2", ctd.namespace)]);
    assert_eq!(out.trim_end_matches(['\r', '\n']), "hi", "container stdout (image CMD)");

    // A multi-platform index: containerd resolves the index through berthd
    // and picks the linux/amd64 manifest.
    let multi_ref = format!("{MIRROR_HOST}/app:multi");
    ctd.ctr_ok(&["images", "pull", &snap, "--platform", "linux/amd64", "--hosts-dir", hosts, &multi_ref]);
    assert_eq!(ctd.image_digest(&multi_ref), index_digest, "pulled index digest");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        &snap,
        &multi_ref,
        &format!("{}-t3", ctd.namespace),
        "/bin/sh",
        "-c",
        "echo multi-$((20+22))",
    ]);
    assert_eq!(out.trim(), "multi-42", "container stdout (multi-arch)");

    // A Docker manifest list (skopeo converts the OCI index), all platforms.
    sk.push(&multi, &berthd.addr, "app:list", &["--all", "--format", "v2s2"]);
    let list_digest = crate::common::sha256(&sk.inspect_raw(&berthd.addr, "app:list"));
    let list_ref = format!("{MIRROR_HOST}/app:list");
    ctd.ctr_ok(&["images", "pull", &snap, "--all-platforms", "--hosts-dir", hosts, &list_ref]);
    assert_eq!(ctd.image_digest(&list_ref), list_digest, "pulled manifest list digest");
    let check = ctd.ctr_ok(&["images", "check"]);
    assert!(
        check.lines().any(|l| l.starts_with(&list_ref) && l.contains("complete")),
        "all platforms of the list must be fetched; ctr images check:\n{check}"
    );
    let out = ctd.ctr_ok(&["run", "--rm", &snap, &list_ref, &format!("{}-t4", ctd.namespace)]);
    assert_eq!(out.trim(), "hi", "container stdout (manifest list)");

    // containerd's own pusher (POST, then a monolithic PUT ?digest=; HEAD
    // checks) writes a copy into another repository.
    let pushed_ref = format!("{MIRROR_HOST}/pushed/by-ctr:v1");
    ctd.ctr_ok(&["images", "tag", &image, &pushed_ref]);
    let push = ctd.ctr_output(&["images", "push", "--hosts-dir", hosts, &pushed_ref]);
    assert!(
        push.status.success(),
        "ctr push failed:\n{}\n{}\nberthd log (tail):\n{}",
        String::from_utf8_lossy(&push.stdout),
        String::from_utf8_lossy(&push.stderr),
        berthd.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    let pulled = sk.pull(&berthd.addr, "pushed/by-ctr:v1", &work.path().join("ctr-pushed"), "v1", &[]);
    assert_eq!(assert_same_image(&img.layout, &pulled), img.manifest_digest);

    // A tag berthd does not have fails the pull with not found.
    let missing = ctd.ctr_output(&["images", "pull", &snap, "--hosts-dir", hosts, &format!("{MIRROR_HOST}/app:nope")]);
    assert!(!missing.status.success(), "pulling a missing tag must fail");
    let err = String::from_utf8_lossy(&missing.stderr);
    // containerd logs berthd's 404 and then falls back to the (unresolvable) server.
    assert!(
        err.lines().any(|l| l.contains("http.StatusNotFound") && l.contains(&format!("host=\"{}\"", berthd.addr))),
        "berthd must answer 404 for a missing tag; ctr stderr:\n{err}"
    );

    let ctd_dir = ctd.dir().to_path_buf();
    drop(ctd);
    let leftover = mounts_under(&ctd_dir);
    assert!(leftover.is_empty(), "mounts left behind: {leftover:?}");
    assert!(!ctd_dir.exists(), "containerd temp dir not removed: {}", ctd_dir.display());
}
