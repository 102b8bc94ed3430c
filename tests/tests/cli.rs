//! berthd's commands as an operator and the Ansible role run them:
//! `containerd configure`'s edge cases, `config check`, the exit statuses
//! systemd and the role rely on, and readiness through sd_notify.

use crate::common::output_text as text;
use crate::common::*;
use std::path::Path;
use std::process::{Command, Output};

fn berthd(args: &[&str]) -> Output {
    Command::new(berthd_bin()).args(args).output().expect("run berthd")
}

fn configure(dir: &Path, cfg: &Path, extra: &[&str]) -> Output {
    crate::support_e2e::configure_command(dir, cfg, extra).output().expect("run configure")
}

#[test]
fn configure_refuses_tls_only_listeners_and_cleans_up_after_itself() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cfg = dir.join("berthd.yml");

    // (d) containerd speaks plain HTTP to berthd: TLS-only listeners are refused, saying what to add.
    std::fs::write(&cfg, "listeners:\n  - addr: 127.0.0.1:5443\n    tls:\n      certificate: /c.pem\n      key: /k.pem\nmirrors:\n  - url: https://ghcr.io\n").unwrap();
    let out = configure(dir, &cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("add a listener without tls on loopback"), "{}", text(&out));
    assert!(!dir.join("certs.d").exists(), "nothing written");

    // (f) --detailed-exitcode: 3 when something changed (or would), 0 when not.
    std::fs::write(
        &cfg,
        "http:\n  addr: 127.0.0.1:5000\nmirrors:\n  - url: https://ghcr.io\n  - url: https://quay.io\n",
    )
    .unwrap();
    let out = configure(dir, &cfg, &["--dry-run", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!dir.join("certs.d").exists(), "a dry run writes nothing");
    let out = configure(dir, &cfg, &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // (g) a containerd config that is not the system's: no guess at which service reads it.
    assert!(
        text(&out).contains("containerd must be restarted to read the change: the one that reads"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("systemctl restart containerd"), "{}", text(&out));
    let out = configure(dir, &cfg, &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("nothing to change"));
    assert!(dir.join("certs.d/quay.io/hosts.toml").exists());

    // (e) a mirror taken out of berthd's config loses the hosts file configure wrote for it.
    std::fs::write(&cfg, "http:\n  addr: 127.0.0.1:5000\nmirrors:\n  - url: https://ghcr.io\n").unwrap();
    let out = configure(dir, &cfg, &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!dir.join("certs.d/quay.io/hosts.toml").exists(), "{}", text(&out));
    assert!(dir.join("certs.d/ghcr.io/hosts.toml").exists());

    // (g) --restart with another containerd's config and no --unit is refused before writing.
    let other = dir.join("other");
    let out = configure(&other, &cfg, &["--restart"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--unit"), "{}", text(&out));
    assert!(!other.exists(), "refused before anything was written");

    // (h) --remove takes away the directories configure made, and only those.
    std::fs::create_dir_all(dir.join("certs.d/mine.example")).unwrap();
    std::fs::write(dir.join("certs.d/mine.example/hosts.toml"), "server = \"https://mine.example\"\n").unwrap();
    let out = configure(dir, &cfg, &["--remove"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.join("config.toml").exists());
    assert!(!dir.join("certs.d/ghcr.io").exists(), "{}", text(&out));
    assert!(dir.join("certs.d/mine.example/hosts.toml").exists(), "the operator's own files stay");
    std::fs::remove_dir_all(dir.join("certs.d/mine.example")).unwrap();
    configure(dir, &cfg, &[]);
    let out = configure(dir, &cfg, &["--remove"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.join("certs.d").exists(), "certs.d was made by configure: {}", text(&out));
}

#[test]
fn k3s_dry_run_never_prints_credentials() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cfg = dir.join("berthd.yml");
    std::fs::write(&cfg, "http:\n  addr: 127.0.0.1:5000\nmirrors:\n  - url: https://ghcr.io\n").unwrap();
    let reg = dir.join("registries.yaml");
    std::fs::write(&reg, "configs:\n  ghcr.io:\n    auth:\n      username: robot\n      password: hunter2-secret\n")
        .unwrap();
    let out = configure(dir, &cfg, &["--dry-run", "--k3s-registries", reg.to_str().unwrap()]);
    let shown = text(&out);
    assert!(out.status.success() && shown.contains("http://127.0.0.1:5000"), "{shown}");
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(shown.contains("password: ***"), "{shown}");
}

#[test]
fn configuration_errors_exit_2_and_config_check_lists_every_problem() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("berthd.yml");
    let root = work.path().join("data");
    let base = format!("storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n", root.display());

    // (j) a missing htpasswd file, a non-bcrypt one, a missing certificate: status 2, which the
    // unit's RestartPreventExitStatus=2 does not retry.
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, "alice:$apr1$xyz$abc\n").unwrap();
    for (extra, want) in [
        ("auth:\n  htpasswd:\n    path: /nonexistent/htpasswd\n".to_string(), "cannot read htpasswd file"),
        (format!("auth:\n  htpasswd:\n    path: {}\n", htpasswd.display()), "non-bcrypt"),
        ("listeners:\n  - addr: 127.0.0.1:0\n    tls:\n      certificate: /nonexistent/c.pem\n      key: /nonexistent/k.pem\n".to_string(), "c.pem"),
    ] {
        std::fs::write(&cfg, format!("{base}{extra}")).unwrap();
        let out = Command::new(berthd_bin()).args(["serve", "--config"]).arg(&cfg).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra}: {}", text(&out));
        assert!(text(&out).contains(want), "{want}: {}", text(&out));

        // (k) config check finds the same without starting.
        let out = berthd(&["config", "check", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(want), "{want}: {}", text(&out));
    }

    // Every problem, not only the first.
    std::fs::write(
        &cfg,
        format!("{base}auth:\n  htpasswd:\n    path: /nonexistent/htpasswd\ntls:\n  cacerts: [/nonexistent/ca.pem]\nlayerindex:\n  keyfile: /nonexistent/key\n"),
    )
    .unwrap();
    let out = berthd(&["config", "check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("3 problem(s)"), "{}", text(&out));
    std::fs::write(&cfg, "log:\n  level: loud\n").unwrap();
    let out = berthd(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("log.level"), "{}", text(&out));
    std::fs::write(&cfg, &base).unwrap();
    let out = berthd(&["config", "check", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// (l) `Type=notify`: berthd says READY=1 once it serves.
#[test]
fn readiness_is_notified_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let b = Berthd::start_with_root(
        tempfile::tempdir().unwrap(),
        dir.path().join("data"),
        "",
        &[("NOTIFY_SOCKET", socket.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(&b.addr).expect("listening when it said so");
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berthd\r\nUser-Agent: berth-test/1.0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "serving when it said so: {answer}");

    // The access log has registry:2's fields, and no colour codes in a log that is not a terminal.
    let local = conn.local_addr().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let lines = b.log.lock().unwrap().clone();
        if let Some(l) = lines.iter().find(|l| l.contains("berthd::access") && l.contains(&local)) {
            break l.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no access log line for {local}:\n{}", lines.join("\n"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for field in [
        format!("remote={local}"),
        "user=-".into(),
        "method=GET".into(),
        "path=/v2/".into(),
        "status=200".into(),
        "bytes=2".into(),
        "user_agent=berth-test/1.0".into(),
    ] {
        assert!(line.contains(&field), "{field} in: {line}");
    }
    assert!(!b.log.lock().unwrap().iter().any(|l| l.contains('\u{1b}')), "colour codes in berthd's log");
}
