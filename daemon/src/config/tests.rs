//! The loader against registry:2 configs, Berth's keys, overrides, and bad
//! values (each error names its key).

use super::*;
use std::path::PathBuf;

fn load_str(yaml: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yml");
    std::fs::write(&p, yaml).unwrap();
    let vars: Vec<(String, String)> = vars.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    load(Some(&p), &vars)
}

#[test]
fn defaults_listen_on_loopback() {
    let l = load(None, &[("HOME".into(), "/home/u".into()), ("USER".into(), "u".into())]).unwrap();
    assert_eq!(l.config.http.addr.to_string(), "127.0.0.1:5000");
    assert_eq!(l.config.storage.root, PathBuf::from("/home/u/.local/share/berth"));
    assert!(!l.config.storage.delete_enabled);
    assert!(l.config.log.access_log);
    assert!(l.warnings.is_empty());
}

#[test]
fn registry2_config_is_read() {
    let l = load_str(
        "version: 0.1\nlog:\n  level: debug\n  formatter: json\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: /data\n  delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: :5001\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        &[],
    )
    .unwrap();
    let c = l.config;
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(!c.log.access_log);
    assert_eq!(c.storage.root, PathBuf::from("/data"));
    assert!(c.storage.delete_enabled);
    assert_eq!(c.http.addr.to_string(), "0.0.0.0:5001");
    assert_eq!(c.http.headers, vec![("X-Content-Type-Options".to_string(), "nosniff".to_string())]);
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("storage.cache"));
    assert!(l.warnings[1].contains("not loopback"), "a registry:2 config on :5001 without auth is pull-only");
}

#[test]
fn env_overrides_win() {
    let l = load_str(
        "http:\n  addr: :5000\n",
        &[
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/r"),
            ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ],
    )
    .unwrap();
    assert_eq!(l.config.http.addr.to_string(), "127.0.0.1:6000");
    assert_eq!(l.config.storage.root, PathBuf::from("/srv/r"));
    assert!(l.config.storage.delete_enabled);
}

#[test]
fn maintenance_and_tls_options() {
    let l = load_str(
        "storage:\n  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 1h30m\n      interval: 10m\n      dryrun: true\nhttp:\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n    minimumtls: tls1.3\n",
        &[],
    )
    .unwrap();
    let p = &l.config.storage.upload_purging;
    assert_eq!((p.age.as_secs(), p.interval.as_secs(), p.dry_run), (5400, 600, true));
    assert!(l.config.http.tls.unwrap().tls13_only);
    let e = load_str("storage:\n  maintenance:\n    uploadpurging:\n      age: 7d\n", &[]).unwrap_err();
    assert!(e.to_string().contains("uploadpurging.age"), "{e}");
    let e = load_str("http:\n  tls:\n    certificate: /c\n    key: /k\n    minimumtls: tls1.0\n", &[]).unwrap_err();
    assert!(e.to_string().contains("minimumtls"), "{e}");
    let e = load_str("http:\n  tls:\n    certificate: /c\n", &[]).unwrap_err();
    assert!(e.to_string().contains("http.tls.key"), "{e}");
}

#[test]
fn s3_driver_keys_and_env() {
    let l = load_str(
        "storage:\n  s3:\n    region: eu-west-1\n    regionendpoint: seaweed.svc:8333\n    bucket: reg\n    secure: false\n    v4auth: true\n    chunksize: 5242880\ncache:\n  path: /var/cache/berth\n  maxsize: 2GiB\ntls:\n  cacerts: [/etc/ca.pem]\n",
        &[("REGISTRY_STORAGE_S3_ACCESSKEY", "AK"), ("REGISTRY_STORAGE_S3_SECRETKEY", "SECRET")],
    )
    .unwrap();
    let Backend::S3(s3) = &l.config.storage.backend else { panic!("s3 expected") };
    assert_eq!(s3.endpoint.as_deref(), Some("http://seaweed.svc:8333"));
    assert_eq!((s3.bucket.as_str(), s3.region.as_str(), s3.chunk_size), ("reg", "eu-west-1", 5 * 1024 * 1024));
    assert!(s3.force_path_style, "path style by default with a custom endpoint");
    assert_eq!(s3.access_key.as_deref(), Some("AK"));
    assert!(!format!("{s3:?}").contains("SECRET"), "credentials never in Debug output");
    let cache = l.config.cache.unwrap();
    assert_eq!((cache.path, cache.max_size), (PathBuf::from("/var/cache/berth"), 2 << 30));
    assert_eq!(l.config.tls_cacerts, vec![PathBuf::from("/etc/ca.pem")]);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);

    let e = load_str("storage:\n  s3:\n    region: x\n", &[]).unwrap_err();
    assert!(e.to_string().contains("storage.s3.bucket"), "{e}");
    let e = load_str("storage:\n  s3:\n    bucket: b\n    chunksize: 1MiB\n", &[]).unwrap_err();
    assert!(e.to_string().contains("chunksize"), "{e}");
    let e = load_str("storage:\n  s3:\n    bucket: b\n  filesystem:\n    rootdirectory: /x\n", &[]).unwrap_err();
    assert!(e.to_string().contains("one storage driver"), "{e}");
    assert!(load_str("", &[]).unwrap().config.cache.is_none(), "no cache in front of the local filesystem");
    assert_eq!(parse_size("20GiB"), Some(20 << 30));
    assert_eq!(parse_size("10G"), Some(10_000_000_000));
    assert_eq!(parse_size("lots"), None);
}

#[test]
fn mirrors_and_registry2_proxy() {
    let l = load_str(
        "mirrors:\n  - name: ghcr.io\n    url: https://ghcr.io\n    tagttl: 10m\n    allow: [\"myorg/*\"]\n  - url: https://registry-1.docker.io/\n    username: u\n    password: p\nproxy:\n  remoteurl: https://quay.io\ncontainerd:\n  registries: [registry.example.com]\n",
        &[],
    )
    .unwrap();
    let m = &l.config.mirrors;
    assert_eq!(m.len(), 3);
    assert_eq!(
        (m[0].name.as_str(), m[0].tag_ttl.as_secs(), m[0].allow.clone()),
        ("ghcr.io", 600, vec!["myorg/*".to_string()])
    );
    assert_eq!((m[1].name.as_str(), m[1].url.as_str()), ("docker.io", "https://registry-1.docker.io"));
    assert_eq!(m[2].name, "quay.io");
    assert_eq!(l.config.proxy_mirror, Some(2));
    assert_eq!(l.config.cluster_registries, vec!["registry.example.com".to_string()]);
    assert!(!format!("{:?}", m[1]).contains("\"p\""), "passwords never in Debug output");
    let e = load_str("mirrors:\n  - name: x\n    url: ftp://x\n", &[]).unwrap_err();
    assert!(e.to_string().contains("mirrors[0].url"), "{e}");
    let e = load_str("mirrors:\n  - url: https://a.io\n    tagttl: soon\n", &[]).unwrap_err();
    assert!(e.to_string().contains("mirrors[0].tagttl"), "{e}");
}

#[test]
fn listeners_and_registry2_semantics() {
    use crate::auth::Actions;
    // registry:2 style, loopback, no auth: everything allowed.
    let l = load_str("http:\n  addr: 127.0.0.1:5000\n", &[]).unwrap();
    assert_eq!(l.config.listeners.len(), 1);
    assert_eq!(l.config.listeners[0].access.anonymous, Actions::ALL);
    // Not loopback, no auth: anonymous pull only, with a warning.
    let l = load_str("http:\n  addr: :5000\n", &[]).unwrap();
    assert_eq!(l.config.listeners[0].access.anonymous, Actions::PULL);
    assert!(l.warnings.iter().any(|w| w.contains("not loopback")));
    // With auth: everything needs credentials (registry:2's semantics).
    let l = load_str("auth:\n  htpasswd:\n    realm: r\n    path: /etc/htpasswd\n", &[("REGISTRY_HTTP_ADDR", ":5000")])
        .unwrap();
    assert_eq!(l.config.listeners[0].access.anonymous, Actions::NONE);
    assert!(matches!(l.config.auth, AuthConfig::Htpasswd { .. }));
    // Explicit listeners: loopback defaults to anonymous pull.
    let l = load_str(
        "listeners:\n  - addr: 127.0.0.1:5000\n  - addr: 0.0.0.0:5443\n    tls:\n      certificate: /c\n      key: /k\n      clientcas: [/ca]\n    access:\n      anonymous: []\n      authenticated: [pull, push]\n",
        &[],
    )
    .unwrap();
    let ls = &l.config.listeners;
    assert_eq!((ls[0].access.anonymous, ls[0].access.authenticated), (Actions::PULL, Actions::ALL));
    assert_eq!(ls[1].access.anonymous, Actions::NONE);
    assert!(!ls[1].access.authenticated.delete);
    assert_eq!(ls[1].tls.as_ref().unwrap().client_cas, vec![PathBuf::from("/ca")]);
    let e = load_str("listeners:\n  - addr: 127.0.0.1:1\n    access:\n      anonymous: [write]\n", &[]).unwrap_err();
    assert!(e.to_string().contains("listeners[0].access.anonymous"), "{e}");
}

#[test]
fn invalid_values_name_the_key() {
    let e = load_str("storage:\n  delete:\n    enabled: maybe\n", &[]).unwrap_err();
    assert!(e.to_string().contains("storage.delete.enabled"), "{e}");
    let e = load_str("http:\n  addr: nowhere\n", &[]).unwrap_err();
    assert!(e.to_string().contains("http.addr"), "{e}");
    let e = load_str("log:\n  level: loud\n", &[]).unwrap_err();
    assert!(e.to_string().contains("log.level"), "{e}");
    let e = load_str("storage:\n  filesystem:\n    rootdirectory: relative/dir\n", &[]).unwrap_err();
    assert!(e.to_string().contains("rootdirectory"), "{e}");
    let e = load_str("auth:\n  silly:\n    realm: x\n", &[]).unwrap_err();
    assert!(e.to_string().contains("`auth.silly`"), "{e}");
    let e = load_str("auth:\n  token:\n    realm: https://a/token\n", &[]).unwrap_err();
    assert!(e.to_string().contains("auth.token.service"), "{e}");
    assert!(matches!(load_str("a: [", &[]), Err(ConfigError::Yaml { .. })));
}

/// Every key berthd reads, with a good value. Loads without a warning; the
/// property test below draws keys from it.
const FULL: &str = r#"
version: 0.1
log:
  level: info
  formatter: text
  fields: {service: registry}
  accesslog:
    disabled: false
storage:
  s3:
    accesskey: AK
    secretkey: SK
    region: us-east-1
    regionendpoint: http://127.0.0.1:8333
    bucket: berth
    rootdirectory: /r
    secure: false
    v4auth: true
    chunksize: 10MiB
    forcepathstyle: true
    skipverify: false
  delete:
    enabled: true
  maintenance:
    readonly:
      enabled: false
    uploadpurging:
      enabled: true
      age: 168h
      interval: 24h
      dryrun: false
  redirect:
    disable: true
  gc:
    interval: 24h
    delay: 1h
    dryrun: false
    deleteuntagged: false
  retention:
    policies:
      - repositories: ["**"]
        deletereferrers: true
        keeptags:
          - patterns: ["v.*"]
            mostrecentlypushedcount: 5
            mostrecentlypulledcount: 5
            pushedwithin: 720h
            pulledwithin: 720h
http:
  addr: 127.0.0.1:5000
  net: tcp
  host: https://registry.example.com
  headers:
    X-Content-Type-Options: [nosniff]
  debug:
    addr: 127.0.0.1:5001
  timeouts:
    header: 1m
    body: 1m
    send: 1m
  maxconnections: 1000
auth:
  htpasswd:
    realm: berth
    path: /etc/berth/htpasswd
listeners:
  - addr: 127.0.0.1:5000
    tls:
      certificate: /c.pem
      key: /k.pem
      minimumtls: tls1.2
      clientcas: [/ca.pem]
    access:
      anonymous: [pull]
      authenticated: [pull, push, delete]
cache:
  enabled: true
  path: /var/cache/berth
  maxsize: 10GiB
tls:
  cacerts: [/etc/ca.pem]
mirrors:
  - name: docker.io
    url: https://registry-1.docker.io
    username: u
    password: p
    tagttl: 5m
    allow: ["library/*"]
    timeout: 30s
    tokenhosts: [auth.docker.io]
    plainhttpcredentials: false
proxy:
  remoteurl: https://quay.io
  username: u
  password: p
  ttl: 5m
containerd:
  registries: [registry.example.com]
layerindex:
  keyfile: /etc/berth/layerindex.key
"#;

#[test]
fn every_key_berthd_reads_loads_without_warnings() {
    let l = load_str(FULL, &[]).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert!(matches!(l.config.storage.backend, Backend::S3(_)));
    assert_eq!(l.config.mirrors.len(), 2);
    assert!(matches!(l.config.layer_index_key, Some(Secret::File(_))));
}

#[test]
fn unknown_keys_are_reported_by_their_path() {
    let l = load_str(
        "storage:\n  filesystem:\n    rootdirectory: /d\n    colour: blue\nmirrors:\n  - url: https://a.io\n    speed: fast\nlisteners:\n  - addr: 127.0.0.1:1\n    proto: x\nauth:\n  htpasswd:\n    path: /h\n    extra: 1\nnotakey: 1\n",
        &[],
    )
    .unwrap();
    for key in ["storage.filesystem.colour", "mirrors[0].speed", "listeners[0].proto", "auth.htpasswd.extra", "notakey"]
    {
        assert!(l.warnings.iter().any(|w| w.contains(&format!("`{key}`"))), "{key} in {:?}", l.warnings);
    }
}

#[test]
fn wrong_kinds_name_their_key() {
    for (yaml, key) in [
        ("mirrors:\n  - url: https://a.io\n    timeout: 0s\n", "mirrors[0].timeout"),
        ("mirrors:\n  - url: https://a.io\n    plainhttpcredentials: yes please\n", "mirrors[0].plainhttpcredentials"),
        ("mirrors: nope\n", "mirrors"),
        ("listeners:\n  - tls: {}\n", "listeners[0].addr"),
        ("http:\n  timeouts:\n    body: 0s\n", "http.timeouts.body"),
        ("http:\n  maxconnections: -1\n", "http.maxconnections"),
        ("cache:\n  enabled: true\n  maxsize: 0\n", "cache.maxsize"),
        ("layerindex:\n  key: short\n", "layerindex.key"),
        ("layerindex:\n  keyfile: rel\n", "layerindex.keyfile"),
        ("storage:\n  azure: {}\n", "storage.azure"),
        ("http:\n  net: unix\n", "http.net"),
        ("storage:\n  retention:\n    policies:\n    - keeptags: []\n", "storage.retention.policies[0].repositories"),
        (
            "storage:\n  retention:\n    policies:\n    - repositories: ['**']\n      keeptags:\n      - patterns: ['v(']\n",
            "storage.retention.policies[0].keeptags[0].patterns",
        ),
        ("storage:\n  retention:\n    policies:\n    - repositories: ['**']\n      keeptags:\n      - pulledwithin: 7d\n", "storage.retention.policies[0].keeptags[0].pulledwithin"),
        ("storage:\n  gc:\n    interval: daily\n", "storage.gc.interval"),
        ("tls:\n  cacerts: {a: 1}\n", "tls.cacerts"),
    ] {
        let e = load_str(yaml, &[]).unwrap_err();
        assert!(e.to_string().contains(&format!("`{key}`")), "{yaml:?}: {e}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The paths of every leaf of [`FULL`] outside lists, as keys.
    fn keys() -> Vec<String> {
        fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
            match v {
                Value::Mapping(m) => {
                    for (k, v) in m {
                        let k = k.as_str().unwrap();
                        walk(v, &if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") }, out)
                    }
                }
                Value::Sequence(_) if prefix.contains("listeners") || prefix.contains("mirrors") => {}
                _ => out.push(prefix.to_string()),
            }
        }
        let mut out = Vec::new();
        walk(&yaml_serde::from_str(FULL).unwrap(), "", &mut out);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any value for any key (as a `REGISTRY_*` override, parsed as YAML
        /// like registry:2 does) loads or is refused with an error that
        /// names a key — never a panic.
        #[test]
        fn any_value_for_any_key_loads_or_names_the_key(
            keys in proptest::collection::vec(proptest::sample::select(keys()), 1..4),
            values in proptest::collection::vec("\\PC{0,24}|[0-9]{1,12}[a-zA-Z]{0,3}|true|false|\\[[a-z0-9:./ ,-]{0,30}\\]|\\{[a-z: ,]{0,20}\\}|-?[0-9.]{1,8}(s|m|h|GiB|ms)?", 1..4),
        ) {
            let vars: Vec<(String, String)> = keys
                .iter()
                .zip(values.iter().cycle())
                .map(|(k, v)| (format!("REGISTRY_{}", k.replace('.', "_").to_ascii_uppercase()), v.clone()))
                .chain([("HOME".to_string(), "/home/u".to_string())])
                .collect();
            match load(None, &vars) {
                Ok(_) => {}
                Err(ConfigError::Invalid { key, message }) => {
                    prop_assert!(!key.is_empty() && !message.is_empty());
                }
                Err(e) => prop_assert!(false, "unexpected error kind: {e}"),
            }
        }
    }
}

#[test]
fn the_retention_example_in_the_docs_loads_as_it_reads() {
    let doc = include_str!("../../../docs/operations.md");
    let start = doc.find("```yaml\nstorage:\n  retention:").expect("the example is in docs/operations.md") + 8;
    let yaml = &doc[start..start + doc[start..].find("```").unwrap()];
    let c = load_str(yaml, &[]).unwrap().config;
    let r = &c.storage.retention;
    let p = r.policy_for("apps/web/frontend").unwrap();
    assert!(p.delete_referrers);
    let rules = p.keep_tags.as_ref().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].most_recently_pushed, Some(10));
    assert!(rules[0].patterns[0].is_match("v1.2"));
    assert_eq!(rules[2].pulled_within, Some(std::time::Duration::from_secs(720 * 3600)));
    assert!(r.policy_for("infra/db").is_some() && r.policy_for("infra/db/x").is_none());
    assert_eq!(r.policy_for("docker.io/library/alpine").unwrap().keep_tags.as_ref().unwrap().len(), 1);
    assert!(!c.storage.gc.delete_untagged);
}
