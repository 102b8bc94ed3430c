//! The cross-built arm64 binaries on a Debian 12 arm64 userland (what
//! Raspberry Pi OS 64-bit is), run through qemu-user: both start, and berthd
//! serves a skopeo push and pull there. The binaries are static, so the
//! userland's glibc (2.36, older than the one they were built with) does not
//! matter; this is what shows it.

use crate::support_e2e::arm64::*;
use crate::support_e2e::debian_root::Rootfs;
use crate::support_e2e::*;
use std::time::{Duration, Instant};

fn install(fs: &Rootfs, from: &std::path::Path, to: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dest = fs.host_path(to);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn arm64_binaries_run_and_serve_on_a_debian_12_arm64_userland() {
    let (berthd, snapshotter) = arm64_binaries();
    for bin in [&berthd, &snapshotter] {
        assert_eq!(elf_machine(bin), 183, "{} is an AArch64 program", bin.display());
    }
    let fs = Rootfs::enter(&debian12_arm64_root());
    assert_eq!(fs.ok("uname", &["-m"]).trim(), "aarch64", "the userland runs as arm64");
    let glibc = fs.ok("ldd", &["--version"]);
    assert!(glibc.lines().next().unwrap_or_default().ends_with("2.36"), "Debian 12's glibc: {glibc}");
    install(&fs, &berthd, "/usr/local/bin/berthd");
    install(&fs, &snapshotter, "/usr/local/bin/berth-snapshotter");
    assert_eq!(fs.ok("/usr/local/bin/berthd", &["--version"]).trim(), format!("berthd {}", berthd::VERSION));
    let v = fs.ok("/usr/local/bin/berth-snapshotter", &["--version"]);
    assert!(v.contains(berthd::VERSION), "berth-snapshotter --version: {v}");

    // berthd serve there, on this host's loopback (the root shares the network).
    let port = free_port();
    let config = fs.host_path("/etc/berth/config.yml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("storage:\n  filesystem:\n    rootdirectory: /var/lib/berth\nhttp:\n  addr: 127.0.0.1:{port}\n"),
    )
    .unwrap();
    let mut server =
        fs.spawn("/usr/local/bin/berthd", &["serve", "--config", "/etc/berth/config.yml"], "/var/log/berthd.log");
    let log = || std::fs::read_to_string(fs.host_path("/var/log/berthd.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http("GET", &format!("http://127.0.0.1:{port}/v2/"), &[]).map(|r| r.status) != Ok(200) {
        assert!(server.try_wait().unwrap().is_none(), "the arm64 berthd exited:\n{}", log());
        assert!(Instant::now() < deadline, "the arm64 berthd did not answer within 60s:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(work.path(), "busybox");
    let sk = Skopeo::new();
    let addr = format!("127.0.0.1:{port}");
    sk.push(&image.layout, &addr, "pi/busybox:v1", &[]);
    let pulled = sk.pull(&addr, "pi/busybox:v1", &work.path().join("pulled"), "v1", &[]);
    assert_eq!(assert_same_image(&image.layout, &pulled), image.manifest_digest);
    assert!(fs.host_path("/var/lib/berth/docker/registry/v2/repositories/pi/busybox").is_dir(), "stored in the root");
    let _ = server.kill();
    let _ = server.wait();
}
