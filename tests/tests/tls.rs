//! berthd's TLS listener (`http.tls.certificate`/`key`): real skopeo pushes
//! through it trusting only a test CA, the certificate is reloaded when its
//! files change without a restart, and a bad key file stops start-up with a
//! message naming the file.

use crate::common::{require_tool, Berthd};
use crate::support_e2e::pki::Pki;
use crate::support_e2e::{build_busybox_image, Skopeo};
use std::process::Command;

fn start_tls(pki: &Pki) -> Berthd {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let cert = pki.path("server.crt");
    let key = pki.path("server.key");
    Berthd::start_with_root(
        dir,
        root,
        "",
        &[("REGISTRY_HTTP_TLS_CERTIFICATE", cert.as_str()), ("REGISTRY_HTTP_TLS_KEY", key.as_str())],
    )
}

/// The subject line of the certificate the server presents now.
fn served_subject(addr: &str, ca: &str) -> String {
    let out = Command::new(require_tool("openssl"))
        .args(["s_client", "-connect", addr, "-CAfile", ca, "-verify_return_error", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Verification: OK"), "TLS verification failed:\n{text}");
    text.lines().find(|l| l.starts_with("Peer certificate:")).unwrap_or_default().to_string()
}

#[test]
fn skopeo_pushes_over_tls_trusting_only_the_test_ca() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let berthd = start_tls(&pki);
    let img = build_busybox_image(work.path(), "img");
    let sk = Skopeo::new();
    let dest = format!("docker://{}/secure/app:v1", berthd.addr);

    // Without the CA the client must refuse the certificate.
    let out = sk.output(&["copy", &img.layout.oci_ref(), &dest]);
    assert!(!out.status.success(), "push without the CA must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate") || err.contains("x509"), "unexpected error: {err}");

    // With the CA in a cert dir the push succeeds, verified.
    let certs = work.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(pki.dir.join("ca.crt"), certs.join("ca.crt")).unwrap();
    sk.ok(&["copy", "--dest-cert-dir", &certs.display().to_string(), &img.layout.oci_ref(), &dest]);
    let raw = sk.ok(&["inspect", "--raw", "--cert-dir", &certs.display().to_string(), &dest]);
    assert_eq!(crate::common::sha256(raw.as_bytes()), img.manifest_digest);

    // Plain HTTP on the TLS port is not served.
    let plain = Command::new(require_tool("curl"))
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}/v2/", berthd.addr)])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}

#[test]
fn rotated_certificate_is_served_without_restart() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let berthd = start_tls(&pki);
    let ca = pki.path("ca.crt");
    assert!(served_subject(&berthd.addr, &ca).contains("O = first"));

    // Rotate as cert-manager does: new files replace the old ones.
    pki.issue("next", "second");
    std::fs::rename(pki.dir.join("next.key"), pki.dir.join("server.key")).unwrap();
    std::fs::rename(pki.dir.join("next.crt"), pki.dir.join("server.crt")).unwrap();
    let mut subject = String::new();
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        subject = served_subject(&berthd.addr, &ca);
        if subject.contains("O = second") {
            break;
        }
    }
    assert!(subject.contains("O = second"), "new certificate not served: {subject}");
    assert!(berthd.log_text().contains("TLS certificate reloaded"));
}

#[test]
fn a_key_that_does_not_match_stops_startup_with_a_clear_message() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(&work.path().join("pki"));
    let cfg = work.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {}\n    key: {}\n",
            work.path().join("data").display(),
            pki.path("server.crt"),
            pki.path("ca.key")
        ),
    )
    .unwrap();
    let out = Command::new(crate::common::berthd_bin()).args(["serve", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.key") && err.contains("does not belong to the certificate"), "{err}");
}
