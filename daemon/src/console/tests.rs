use super::*;
use crate::registry::browse::{ImageConfig, ImageView, RunConfig};

fn parse(path_and_query: &str) -> Page {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    Page::parse(path, query)
}

#[test]
fn pages_parse_from_path_and_query_and_declare_what_they_need() {
    assert!(owns("/ui") && owns("/ui/") && owns("/ui/node") && !owns("/uix") && !owns("/v2/ui/"));
    assert_eq!(parse("/ui"), Page::Root);
    assert_eq!(parse("/ui/?q=app"), Page::Repositories { search: "app".into(), last: None });
    let repo = RepoName::parse("team/app").unwrap();
    assert_eq!(parse("/ui/repo?name=team%2Fapp").need(), Need::Pull(repo.clone()));
    assert_eq!(parse("/ui/image?name=team/app&ref=v1").need(), Need::Pull(repo.clone()));
    assert_eq!(parse("/ui/delete?name=team/app&ref=v1").need(), Need::Delete(repo));
    assert_eq!(parse("/ui/node").need(), Need::Catalog);
    assert_eq!(parse("/ui/").need(), Need::Catalog);
    assert!(matches!(parse("/ui/assets/console.css"), Page::Asset(a) if a.content_type.starts_with("text/css")));
    // Bad input is a not-found page that says what is wrong, never a
    // filesystem path or a panic.
    for bad in [
        "/ui/assets/../../etc/passwd",
        "/ui/repo",
        "/ui/repo?name=Bad..Name",
        "/ui/image?name=team/app",
        "/ui/image?name=team/app&ref=sha256:xyz",
        "/ui/elsewhere",
    ] {
        match parse(bad) {
            Page::NotFound(m) => assert!(!m.is_empty()),
            other => panic!("{bad} parsed as {other:?}"),
        }
        assert_eq!(parse(bad).need(), Need::Base);
    }
}

#[test]
fn deletes_are_confirmed_by_the_tag_or_the_short_digest() {
    let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    assert_eq!(confirmation_word(&Reference::Digest(d)), "abababababab");
    assert_eq!(confirmation_word(&Reference::parse("v1.2").unwrap()), "v1.2");
}

#[test]
fn cross_site_posts_are_refused() {
    let h = |pairs: &[(&'static str, &'static str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    };
    assert!(same_origin(&h(&[])).is_ok(), "not a browser: no ambient credentials");
    assert!(same_origin(&h(&[("host", "node:5000"), ("origin", "http://node:5000")])).is_ok());
    assert!(same_origin(&h(&[("sec-fetch-site", "same-origin"), ("host", "a"), ("origin", "https://a")])).is_ok());
    assert!(same_origin(&h(&[("host", "node:5000"), ("origin", "http://evil.example")])).is_err());
    assert!(same_origin(&h(&[("sec-fetch-site", "cross-site")])).is_err());
    assert!(same_origin(&h(&[("sec-fetch-site", "same-site"), ("host", "a"), ("origin", "http://a")])).is_err());
}

#[test]
fn pages_escape_what_pushers_wrote() {
    let d: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("evil".to_string(), "<script>alert(1)</script>".to_string());
    let img = ImageView {
        digest: d.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        artifact_type: None,
        manifest_size: 10,
        tags: vec!["v1".into()],
        config_blob: None,
        layers: vec![],
        config: Some(ImageConfig {
            config: RunConfig { labels: Some(labels), ..Default::default() },
            ..Default::default()
        }),
        children: vec![],
        subject: None,
        referrers: vec![],
        annotations: vec![("a\"b".into(), "<img src=x onerror=alert(2)>".into())],
    };
    let facts = NodeFacts::default();
    let chrome = views::Chrome { user: Some("<b>eve</b>"), node: &facts.node };
    let repo = RepoName::parse("team/app").unwrap();
    let html = views::image(&chrome, &repo, &Reference::Digest(d), &img, true).into_string();
    assert!(!html.contains("<script>alert"), "labels are escaped");
    assert!(!html.contains("<img src=x"), "annotations are escaped");
    assert!(!html.contains("<b>eve"), "user names are escaped");
    assert!(html.contains("&lt;script&gt;"));
    assert!(html.contains("delete?name=team%2Fapp&amp;ref=sha256%3A"), "links encode their query");
}

#[tokio::test]
async fn refused_pages_and_assets_carry_the_hardening_headers() {
    let facts = NodeFacts::default();
    let r = refused(StatusCode::UNAUTHORIZED, "credentials needed", &facts);
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
    let a = asset(&ASSETS[1]);
    assert_eq!(a.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert_eq!(a.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}
