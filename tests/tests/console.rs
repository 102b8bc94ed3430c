//! The web console at `/ui/` in a real headless Chromium (Debian's
//! `chromium` through `chromedriver`): the lists, navigation to a
//! repository and an image, the node page, the delete flow with its
//! confirmation, the keyboard, a phone-sized window, and the listener's
//! policy (401 without credentials, deletes only with them, no cross-site
//! posts). Each page's screenshot is kept in `target/test-artifacts/console/`.

use crate::common::*;
use crate::support_e2e::browser::Browser;
use crate::support_e2e::*;
use std::path::Path;
use std::process::Command;

/// Pushes an SBOM whose subject is `subject` (the referrers API's way).
fn push_sbom(base: &str, repo: &str, subject: &str, subject_size: usize) -> String {
    let sbom = ("application/spdx+json", &br#"{"spdxVersion":"SPDX-2.3","name":"app"}"#[..]);
    push_artifact(base, repo, "application/spdx+json", sbom, (subject, subject_size))
}

fn manifest_status(base: &str, repo: &str, reference: &str) -> u16 {
    http("GET", &format!("{base}/v2/{repo}/manifests/{reference}"), &[("accept", OCI_MANIFEST)]).unwrap().status
}

fn htpasswd(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let file = dir.join("htpasswd");
    run(Command::new(require_tool("htpasswd")).args(["-Bbc"]).arg(&file).args([user, password]));
    file
}

#[test]
fn console_lists_navigates_and_deletes_in_chromium() {
    let node = Berthd::start(
        "  delete:\n    enabled: true\nlisteners:\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: [pull, push, delete]\n",
    );
    let base = node.url();
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(work.path(), "img");
    let sk = Skopeo::new();
    for tag in ["team/app:v1", "team/app:v2", "other/tool:latest"] {
        sk.push(&image.layout, &node.addr, tag, &[]);
    }
    let (index, _) = build_multiarch_index(work.path(), "multi", &image);
    sk.push(&index, &node.addr, "team/app:multi", &["--all"]);
    let manifest_size = image.layout.blob(&image.manifest_digest).len();
    push_sbom(&base, "team/app", &image.manifest_digest, manifest_size);

    let b = Browser::start("console");
    // The list, reached by the bare prefix.
    b.goto(&format!("{base}/ui"));
    assert!(b.url().ends_with("/ui/"), "/ui redirects to /ui/: {}", b.url());
    assert_eq!(b.texts("#repositories tbody td:first-child a"), ["other/tool", "team/app"]);
    let sizes = b.texts("#repositories tbody td:nth-child(3)");
    assert!(sizes.iter().all(|s| s.ends_with("KiB") || s.ends_with("MiB")), "sizes: {sizes:?}");
    b.screenshot("repositories");

    // The keyboard: "/" focuses the search, Enter submits it.
    b.press("/");
    assert_eq!(b.focused_id(), "q", "'/' focuses the search box");
    b.to_new_page(|b| b.type_into("#q", "tool\u{E007}"));
    assert_eq!(b.texts("#repositories tbody td:first-child a"), ["other/tool"]);
    assert!(b.text("[data-test=count]").contains("matching"));

    // A repository: tags with digests, sizes and platforms.
    b.goto(&format!("{base}/ui/"));
    b.click_link("team/app");
    assert!(b.url().contains("repo?name=team%2Fapp"), "{}", b.url());
    assert_eq!(b.texts("#tags tbody td:first-child a"), ["multi", "v1", "v2"]);
    let rows = b.texts("#tags tbody tr");
    let hex = image.manifest_digest.trim_start_matches("sha256:");
    assert!(rows[1].contains(&hex[..12]), "v1 shows its digest: {}", rows[1]);
    assert!(
        rows[0].contains("linux/amd64") && rows[0].contains("linux/arm64"),
        "an index lists its platforms: {}",
        rows[0]
    );
    assert!(rows[1].contains("never"), "v1 was never pulled: {}", rows[1]);
    b.screenshot("repository");

    // An image: digest, layers, config, and its SBOM among the referrers.
    b.click_link("v1");
    assert_eq!(b.text("[data-test=digest]"), image.manifest_digest);
    let layers = b.text("#layers");
    assert!(layers.contains(&image.layer_digest.trim_start_matches("sha256:")[..12]), "{layers}");
    assert!(b.text("#config").contains("/bin/sh -c echo hi"), "the config's Cmd: {}", b.text("#config"));
    assert!(b.text("#referrers").contains("SBOMs (1)"), "{}", b.text("#referrers"));
    b.screenshot("image");
    // Readable on a phone: nothing wider than the screen.
    b.resize(390, 844);
    let overflow = b.eval("return document.documentElement.scrollWidth - window.innerWidth;");
    assert!(overflow.as_i64().unwrap() <= 0, "the page scrolls sideways on a phone by {overflow} px");
    b.screenshot("image-phone");
    b.resize(1280, 900);

    // An index: its platforms, each a link to its image.
    b.goto(&format!("{base}/ui/image?name=team/app&ref=multi"));
    assert_eq!(b.texts("#children tbody td:first-child"), ["linux/amd64", "linux/arm64"]);

    // The node.
    b.goto(&format!("{base}/ui/node"));
    assert!(b.text("#storage").contains("reachable"), "{}", b.text("#storage"));
    assert!(b.text("#storage").contains("filesystem"), "{}", b.text("#storage"));
    b.screenshot("node");

    // Delete v2: confirmation, wrong word, right word.
    b.goto(&format!("{base}/ui/repo?name=team/app"));
    b.to_new_page(|b| b.click("a.danger[href*='ref=v2']"));
    assert!(b.text("h1").contains("team/app:v2"), "{}", b.text("h1"));
    assert!(!b.enabled("form.confirm button[type=submit]"), "Delete waits for the word");
    b.type_into("#confirm", "v1");
    assert!(!b.enabled("form.confirm button[type=submit]"), "the wrong word keeps it disabled");
    b.type_into("#confirm", "v2");
    b.screenshot("delete-confirm");
    assert!(b.enabled("form.confirm button[type=submit]"));
    b.to_new_page(|b| b.click("form.confirm button[type=submit]"));
    assert!(b.url().contains("deleted=v2"), "back on the repository: {}", b.url());
    assert!(b.text(".notice").contains("Deleted v2"));
    assert_eq!(b.texts("#tags tbody td:first-child a"), ["multi", "v1"]);
    b.screenshot("after-delete");
    drop(b);
    assert_eq!(manifest_status(&base, "team/app", "v2"), 404, "the tag is gone from the API too");
    assert_eq!(manifest_status(&base, "team/app", "v1"), 200, "the manifest stays under v1");

    // The server checks the word itself, and refuses a cross-site post.
    let post = |headers: &[(&str, &str)], word: &str| {
        let url = format!("{base}/ui/delete?name=team%2Fapp&ref=v1");
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        http_with_body("POST", &url, &h, format!("confirm={word}").into_bytes()).unwrap()
    };
    assert_eq!(post(&[], "v2").status, 400, "a wrong word deletes nothing");
    let evil = post(&[("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")], "v1");
    assert_eq!(evil.status, 403, "{}", String::from_utf8_lossy(&evil.body));
    assert_eq!(manifest_status(&base, "team/app", "v1"), 200, "neither deleted anything");

    // Every page is HTML with its hardening headers; a bad name is a 404 page.
    let r = http_get(&format!("{base}/ui/repo?name=no/such"));
    assert_eq!(r.status, 404);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.header("content-security-policy").unwrap().contains("frame-ancestors 'none'"));
    assert!(String::from_utf8_lossy(&r.body).contains("no/such"));
}

#[test]
fn console_follows_the_listener_policy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let users = htpasswd(dir.path(), "alice", "wonderland");
    // Listener 1: open for pushes. 2: credentials for everything.
    // 3: anonymous pull, deletes for users.
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {}\nlisteners:\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: [pull, push]\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: []\n      authenticated: [pull, push, delete]\n  - addr: 127.0.0.1:0\n    access:\n      anonymous: [pull]\n      authenticated: [pull, delete]\n",
        root.display(),
        users.display()
    );
    let node = Berthd::start_config(dir, root, &yaml, &[]);
    let work = tempfile::tempdir().unwrap();
    let image = build_busybox_image(work.path(), "img");
    Skopeo::new().push(&image.layout, &node.addr, "team/app:v1", &[]);
    let (closed, mixed) = (format!("http://{}", node.addrs[1]), format!("http://{}", node.addrs[2]));
    let alice = format!("Basic {}", base64_encode("alice:wonderland"));

    // Without credentials: 401 with the Basic challenge (the browser asks),
    // as an HTML page.
    let r = http_get(&format!("{closed}/ui/"));
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic realm=\"berth-test\""));
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let r = http("GET", &format!("{closed}/ui/"), &[("authorization", &alice)]).unwrap();
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body);
    assert!(page.contains("team/app") && page.contains("alice"), "{page}");

    // Anonymous readers see the repository; deleting asks for a user.
    let r = http_get(&format!("{mixed}/ui/repo?name=team/app"));
    assert_eq!(r.status, 200);
    assert_eq!(http_get(&format!("{mixed}/ui/delete?name=team/app&ref=v1")).status, 401);
    let form = |auth: Option<&str>| {
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        http_with_body("POST", &format!("{mixed}/ui/delete?name=team%2Fapp&ref=v1"), &h, b"confirm=v1".to_vec())
            .unwrap()
    };
    assert_eq!(form(None).status, 401);
    assert_eq!(manifest_status(&node.url(), "team/app", "v1"), 200);
    // The open listener has no delete in its policy: no delete page at all.
    assert_eq!(http_get(&format!("{}/ui/delete?name=team/app&ref=v1", node.url())).status, 401);
    // (The client follows the 303 back to the repository.)
    let done = form(Some(&alice));
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    assert!(String::from_utf8_lossy(&done.body).contains("Deleted <code>v1</code>"));
    assert_eq!(manifest_status(&node.url(), "team/app", "v1"), 404);

    // In a browser: without credentials nothing of the registry shows (it
    // holds the page for the password prompt); with them, the user is named.
    let b = Browser::start("console");
    b.goto(&format!("{closed}/ui/"));
    assert!(!b.source().contains("Repositories"), "{}", b.source());
    let addr = &node.addrs[1];
    b.goto(&format!("http://alice:wonderland@{addr}/ui/node"));
    assert_eq!(b.text("[data-test=user]"), "alice");
    b.screenshot("signed-in-node");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
