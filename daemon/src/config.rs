//! Configuration: registry:2's `config.yml` keys and `REGISTRY_*`
//! environment overrides, so users bring the files they already have.
//!
//! The YAML is read into a tree, environment overrides are applied to it
//! (`REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY` sets
//! `storage.filesystem.rootdirectory`, the value parsed as YAML like
//! registry:2 does), keys Berth does not know are collected as warnings, and
//! then each known key is read with an error that names it when its value is
//! invalid.

use serde_yaml::{Mapping, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where berthd listens when `http.addr` is not set: loopback only, so a
/// fresh install exposes nothing.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

/// Which storage driver holds the registry's data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `storage.filesystem` (the default): files under `StorageConfig::root`.
    Filesystem,
    S3(S3Config),
}

/// `storage.s3`, registry:2's keys.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// `regionendpoint` with a scheme (from `secure` when it had none).
    pub endpoint: Option<String>,
    pub root_directory: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub chunk_size: usize,
    pub force_path_style: bool,
    pub skip_verify: bool,
}

impl std::fmt::Debug for S3Config {
    // Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("root_directory", &self.root_directory)
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

/// The node-local blob cache (`cache.*`), used in front of remote storage.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub path: PathBuf,
    pub max_size: u64,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: Backend,
    /// Filesystem root; defaults to a data directory chosen at start-up.
    /// With S3 it holds only the cache (by default).
    pub root: PathBuf,
    /// Whether the root came from the configuration (else the default).
    pub root_configured: bool,
    pub delete_enabled: bool,
    pub read_only: bool,
    /// Blob reads are always proxied by the filesystem backend; kept for
    /// backends that can redirect.
    pub redirect_disable: bool,
    pub upload_purging: UploadPurging,
}

/// `storage.maintenance.uploadpurging`: registry:2's defaults are kept.
#[derive(Debug, Clone)]
pub struct UploadPurging {
    pub enabled: bool,
    pub age: Duration,
    pub interval: Duration,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// `http.tls.minimumtls: tls1.3` turns TLS 1.2 off.
    pub tls13_only: bool,
    /// `clientcas`: CA files; a client certificate they signed
    /// authenticates the client (certificates are optional).
    pub client_cas: Vec<PathBuf>,
}

/// One listener: an address, optional TLS, and who may do what there.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub access: crate::auth::Policy,
}

/// `auth.token`.
#[derive(Debug, Clone)]
pub struct TokenAuthConfig {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub rootcertbundle: PathBuf,
}

/// `auth`: at most one method.
#[derive(Debug, Clone, Default)]
pub enum AuthConfig {
    #[default]
    None,
    Htpasswd {
        realm: String,
        path: PathBuf,
    },
    Token(TokenAuthConfig),
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub tls: Option<TlsFiles>,
    pub debug_addr: Option<SocketAddr>,
    pub timeouts: HttpTimeouts,
    /// `http.maxconnections`: `None` derives it from the open-file limit.
    pub max_connections: Option<usize>,
}

/// `http.timeouts`: how long a client may stall, nginx's defaults.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Request headers must arrive within this (also the keep-alive idle
    /// limit), as nginx's `client_header_timeout`.
    pub header: Duration,
    /// Longest pause while a request body is read (`client_body_timeout`).
    pub body: Duration,
    /// Longest pause while a client does not read a response (`send_timeout`).
    pub send: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        HttpTimeouts { header: minute, body: minute, send: minute }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub http: HttpConfig,
    /// `None` when disabled or when the storage is local anyway.
    pub cache: Option<CacheConfig>,
    /// `tls.cacerts`: extra CA files for outbound TLS.
    pub tls_cacerts: Vec<PathBuf>,
    /// Pull-through mirrors (`mirrors:`, plus registry:2's `proxy`).
    pub mirrors: Vec<crate::upstream::MirrorConfig>,
    /// Index into `mirrors` of registry:2's `proxy` mirror, which also
    /// serves requests that name no upstream.
    pub proxy_mirror: Option<usize>,
    /// Listeners; registry:2 configs without `listeners:` get one from `http.*`.
    pub listeners: Vec<ListenerConfig>,
    pub auth: AuthConfig,
    /// `containerd.registries`: the names the cluster's own images use
    /// (e.g. `registry.example.com`); `berthd containerd configure` points
    /// them at this node.
    pub cluster_registries: Vec<String>,
    /// `layerindex.key` / `layerindex.keyfile`: the secret that signs layer
    /// indexes, shared by every node on the storage.
    pub layer_index_key: Option<Secret>,
}

/// Where a secret comes from.
#[derive(Clone)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Inline(..)"),
            Secret::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// A configuration and what was noticed while reading it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), message: message.into() }
}

/// Keys whose value Berth reads. A key below a `*` entry may be anything
/// (e.g. header names).
const KNOWN: &[&str] = &[
    "version",
    "log",
    "log.level",
    "log.formatter",
    "log.fields",
    "log.fields.*",
    "log.accesslog",
    "log.accesslog.disabled",
    "storage",
    "storage.filesystem",
    "storage.filesystem.rootdirectory",
    "storage.filesystem.maxthreads",
    "storage.delete",
    "storage.delete.enabled",
    "storage.maintenance",
    "storage.maintenance.readonly",
    "storage.maintenance.readonly.enabled",
    "storage.maintenance.uploadpurging",
    "storage.maintenance.uploadpurging.enabled",
    "storage.maintenance.uploadpurging.age",
    "storage.maintenance.uploadpurging.interval",
    "storage.maintenance.uploadpurging.dryrun",
    "storage.redirect",
    "storage.redirect.disable",
    "storage.s3",
    "storage.s3.accesskey",
    "storage.s3.secretkey",
    "storage.s3.region",
    "storage.s3.regionendpoint",
    "storage.s3.bucket",
    "storage.s3.rootdirectory",
    "storage.s3.secure",
    "storage.s3.v4auth",
    "storage.s3.chunksize",
    "storage.s3.forcepathstyle",
    "storage.s3.skipverify",
    "cache",
    "cache.enabled",
    "cache.path",
    "cache.maxsize",
    "tls",
    "tls.cacerts",
    "mirrors",
    "proxy",
    "proxy.remoteurl",
    "proxy.username",
    "proxy.password",
    "proxy.ttl",
    "containerd",
    "containerd.registries",
    "http",
    "http.addr",
    "http.net",
    "http.host",
    "http.headers",
    "http.headers.*",
    "http.tls",
    "http.tls.certificate",
    "http.tls.key",
    "http.tls.minimumtls",
    "http.tls.clientcas",
    "auth",
    "auth.htpasswd",
    "auth.htpasswd.realm",
    "auth.htpasswd.path",
    "auth.token",
    "auth.token.realm",
    "auth.token.service",
    "auth.token.issuer",
    "auth.token.rootcertbundle",
    "auth.token.autoredirect",
    "listeners",
    "http.debug",
    "http.debug.addr",
    "http.timeouts",
    "http.timeouts.header",
    "http.timeouts.body",
    "http.timeouts.send",
    "http.maxconnections",
    "layerindex",
    "layerindex.key",
    "layerindex.keyfile",
];

/// registry:2 features Berth does not implement yet. Starting without them
/// would silently weaken security or send data elsewhere, so they stop
/// start-up instead of being ignored.
const REFUSED: &[(&str, &str)] = &[
    ("storage.azure", "the azure storage driver is not supported; use storage.filesystem"),
    ("storage.gcs", "the gcs storage driver is not supported; use storage.filesystem"),
    ("storage.swift", "the swift storage driver is not supported; use storage.filesystem"),
    ("storage.oss", "the oss storage driver is not supported; use storage.filesystem"),
    ("storage.inmemory", "the inmemory storage driver is not supported; use storage.filesystem"),
    ("http.tls.letsencrypt", "Let's Encrypt is not supported; give http.tls.certificate and http.tls.key"),
];

fn is_known(path: &str) -> bool {
    KNOWN.contains(&path)
        || KNOWN.iter().any(|k| k.strip_suffix(".*").is_some_and(|parent| path.starts_with(&format!("{parent}."))))
}

fn collect_unknown(v: &Value, prefix: &str, out: &mut Vec<String>) {
    let Value::Mapping(m) = v else { return };
    for (k, child) in m {
        let key = match k {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
        };
        let path = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        if !is_known(&path) {
            out.push(format!("config key `{path}` is not used by berthd and is ignored"));
            continue;
        }
        collect_unknown(child, &path, out);
    }
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    for part in path.split('.') {
        cur = cur.as_mapping()?.get(part)?;
    }
    match cur {
        Value::Null => None,
        v => Some(v),
    }
}

/// Sets `path` (dot-separated) in the tree, creating mappings on the way.
fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for (i, part) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let map = cur.as_mapping_mut().expect("just made a mapping");
        let key = Value::String(part.clone());
        if i == path.len() - 1 {
            map.insert(key, value);
            return;
        }
        cur = map.entry(key).or_insert(Value::Mapping(Mapping::new()));
    }
}

fn get_str(root: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    match lookup(root, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(invalid(key, "expected a string")),
    }
}

fn get_bool(root: &Value, key: &str, default: bool) -> Result<bool, ConfigError> {
    match lookup(root, key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(invalid(key, format!("expected true or false, got {}", show(other)))),
    }
}

fn get_duration(root: &Value, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match get_str(root, key)? {
        None => Ok(default),
        Some(s) => crate::timefmt::parse_go_duration(&s)
            .ok_or_else(|| invalid(key, format!("{s:?} is not a duration such as 168h, 30m or 90s"))),
    }
}

/// Parses sizes such as `20GiB`, `512MiB`, `10G`, `1048576`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = (s[..split].trim(), s[split..].trim());
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (value >= 0.0).then_some((value * mult) as u64)
}

fn get_size(root: &Value, key: &str) -> Result<Option<u64>, ConfigError> {
    match get_str(root, key)? {
        None => Ok(None),
        Some(s) => parse_size(&s)
            .map(Some)
            .ok_or_else(|| invalid(key, format!("{s:?} is not a size such as 20GiB, 512MiB or 1048576"))),
    }
}

fn s3_config(tree: &Value, warnings: &mut Vec<String>) -> Result<S3Config, ConfigError> {
    let required = |key: &str| -> Result<String, ConfigError> {
        get_str(tree, key)?.filter(|v| !v.is_empty()).ok_or_else(|| invalid(key, "is required for the s3 driver"))
    };
    let bucket = required("storage.s3.bucket")?;
    let region = get_str(tree, "storage.s3.region")?.filter(|r| !r.is_empty()).unwrap_or_else(|| "us-east-1".into());
    let secure = get_bool(tree, "storage.s3.secure", true)?;
    let endpoint = get_str(tree, "storage.s3.regionendpoint")?.filter(|e| !e.is_empty()).map(|e| {
        if e.starts_with("http://") || e.starts_with("https://") {
            e
        } else if secure {
            format!("https://{e}")
        } else {
            format!("http://{e}")
        }
    });
    if !get_bool(tree, "storage.s3.v4auth", true)? {
        warnings.push("config key `storage.s3.v4auth` is false; berthd always signs S3 requests with SigV4".into());
    }
    let chunk_size = get_size(tree, "storage.s3.chunksize")?.unwrap_or(10 * 1024 * 1024);
    if chunk_size < crate::storage::s3::MIN_CHUNK_SIZE as u64 {
        return Err(invalid(
            "storage.s3.chunksize",
            "must be at least 5242880 (5 MiB), the smallest S3 multipart part",
        ));
    }
    let access_key = get_str(tree, "storage.s3.accesskey")?.filter(|v| !v.is_empty());
    let secret_key = get_str(tree, "storage.s3.secretkey")?.filter(|v| !v.is_empty());
    if access_key.is_some() != secret_key.is_some() {
        return Err(invalid(
            "storage.s3.secretkey",
            "storage.s3.accesskey and storage.s3.secretkey must be given together (or neither, to use the AWS credential chain)",
        ));
    }
    Ok(S3Config {
        bucket,
        region,
        force_path_style: get_bool(tree, "storage.s3.forcepathstyle", endpoint.is_some())?,
        endpoint,
        root_directory: get_str(tree, "storage.s3.rootdirectory")?.unwrap_or_default(),
        access_key,
        secret_key,
        chunk_size: chunk_size as usize,
        skip_verify: get_bool(tree, "storage.s3.skipverify", false)?,
    })
}

/// Default time a mirrored tag is trusted before it is revalidated upstream.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

/// The registry name containerd uses for an upstream URL: Docker Hub's API
/// host is `registry-1.docker.io`, its image names say `docker.io`.
pub fn registry_name_of(url: &str) -> String {
    let host = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

fn mirror_url(key: &str, url: &str) -> Result<String, ConfigError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.split("://").nth(1).is_none_or(str::is_empty)
    {
        return Err(invalid(key, format!("{url:?} must be an http:// or https:// URL of the upstream registry")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn mirrors_config(
    tree: &Value,
    warnings: &mut Vec<String>,
) -> Result<(Vec<crate::upstream::MirrorConfig>, Option<usize>), ConfigError> {
    use crate::upstream::MirrorConfig;
    let mut out: Vec<MirrorConfig> = Vec::new();
    match lookup(tree, "mirrors") {
        None => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let key = format!("mirrors[{i}]");
                let Some(map) = item.as_mapping() else {
                    return Err(invalid(&key, "expected a mapping with name and url"));
                };
                for k in map.keys() {
                    let k = k.as_str().unwrap_or_default();
                    if ![
                        "name",
                        "url",
                        "username",
                        "password",
                        "tagttl",
                        "allow",
                        "timeout",
                        "tokenhosts",
                        "plainhttpcredentials",
                    ]
                    .contains(&k)
                    {
                        warnings.push(format!("config key `{key}.{k}` is not used by berthd and is ignored"));
                    }
                }
                let field = |f: &str| map.get(f).and_then(|v| v.as_str()).map(str::to_string);
                let url = mirror_url(
                    &format!("{key}.url"),
                    &field("url").ok_or_else(|| invalid(&format!("{key}.url"), "is required"))?,
                )?;
                let name = field("name").unwrap_or_else(|| registry_name_of(&url)).to_ascii_lowercase();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)) {
                    return Err(invalid(
                        &format!("{key}.name"),
                        format!("{name:?} is not a registry host name such as docker.io"),
                    ));
                }
                let tag_ttl = match map.get("tagttl") {
                    None => DEFAULT_TAG_TTL,
                    Some(v) => {
                        let s = v.as_str().map(str::to_string).unwrap_or_else(|| show(v));
                        crate::timefmt::parse_go_duration(&s).ok_or_else(|| {
                            invalid(&format!("{key}.tagttl"), format!("{s:?} is not a duration such as 5m or 1h"))
                        })?
                    }
                };
                let allow = match map.get("allow") {
                    None => Vec::new(),
                    Some(Value::Sequence(p)) => p
                        .iter()
                        .map(|x| {
                            x.as_str().map(str::to_string).ok_or_else(|| {
                                invalid(&format!("{key}.allow"), "expected a list of repository patterns")
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(invalid(&format!("{key}.allow"), "expected a list of repository patterns")),
                };
                let (username, password) = (field("username"), field("password"));
                if username.is_some() != password.is_some() {
                    return Err(invalid(&format!("{key}.password"), "username and password must be given together"));
                }
                if out.iter().any(|m| m.name == name) {
                    return Err(invalid(&format!("{key}.name"), format!("mirror {name} is configured twice")));
                }
                let timeout = match map.get("timeout") {
                    None => crate::upstream::DEFAULT_TIMEOUT,
                    Some(v) => {
                        let s = v.as_str().map(str::to_string).unwrap_or_else(|| show(v));
                        crate::timefmt::parse_go_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
                            invalid(&format!("{key}.timeout"), format!("{s:?} is not a positive duration such as 30s"))
                        })?
                    }
                };
                let token_hosts = match map.get("tokenhosts") {
                    None => Vec::new(),
                    Some(Value::Sequence(p)) => p
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(|h| h.to_ascii_lowercase())
                                .ok_or_else(|| invalid(&format!("{key}.tokenhosts"), "expected a list of host names"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(invalid(&format!("{key}.tokenhosts"), "expected a list of host names")),
                };
                let plain_http_credentials = match map.get("plainhttpcredentials") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(invalid(
                            &format!("{key}.plainhttpcredentials"),
                            format!("expected true or false, got {}", show(other)),
                        ))
                    }
                };
                out.push(MirrorConfig {
                    name,
                    url,
                    username,
                    password,
                    tag_ttl,
                    allow,
                    timeout,
                    token_hosts,
                    plain_http_credentials,
                });
            }
        }
        Some(_) => return Err(invalid("mirrors", "expected a list of mirrors (name, url, …)")),
    }
    let mut proxy = None;
    if let Some(remote) = get_str(tree, "proxy.remoteurl")? {
        let url = mirror_url("proxy.remoteurl", &remote)?;
        let name = registry_name_of(&url);
        let tag_ttl = get_duration(tree, "proxy.ttl", DEFAULT_TAG_TTL)?;
        let cfg = MirrorConfig {
            name: name.clone(),
            url,
            username: get_str(tree, "proxy.username")?,
            password: get_str(tree, "proxy.password")?,
            tag_ttl,
            allow: Vec::new(),
            timeout: crate::upstream::DEFAULT_TIMEOUT,
            token_hosts: Vec::new(),
            plain_http_credentials: false,
        };
        match out.iter().position(|m| m.name == name) {
            Some(i) => proxy = Some(i),
            None => {
                out.push(cfg);
                proxy = Some(out.len() - 1);
            }
        }
    }
    Ok((out, proxy))
}

fn map_str(v: &Value, key: &str, path: &str) -> Result<Option<String>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(&format!("{path}.{key}"), "expected a string")),
    }
}

fn path_list(v: Option<&Value>, key: &str) -> Result<Vec<PathBuf>, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![PathBuf::from(s)]),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|x| x.as_str().map(PathBuf::from).ok_or_else(|| invalid(key, "expected a list of file paths")))
            .collect(),
        Some(_) => Err(invalid(key, "expected a list of file paths")),
    }
}

/// Reads a `tls:` mapping (`http.tls` or `listeners[i].tls`).
fn tls_files(v: Option<&Value>, prefix: &str) -> Result<Option<TlsFiles>, ConfigError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let (cert, key) = (map_str(v, "certificate", prefix)?, map_str(v, "key", prefix)?);
    let (c, k) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(invalid(&format!("{prefix}.key"), "is required when the certificate is set")),
        (None, Some(_)) => return Err(invalid(&format!("{prefix}.certificate"), "is required when the key is set")),
    };
    let tls13_only = match map_str(v, "minimumtls", prefix)?.as_deref() {
        None | Some("tls1.2") => false,
        Some("tls1.3") => true,
        Some(other) => {
            return Err(invalid(
                &format!("{prefix}.minimumtls"),
                format!("{other:?} is not supported; berthd speaks TLS 1.2 and 1.3 only (tls1.2 or tls1.3)"),
            ))
        }
    };
    let client_cas = path_list(v.get("clientcas"), &format!("{prefix}.clientcas"))?;
    Ok(Some(TlsFiles { certificate: c.into(), key: k.into(), tls13_only, client_cas }))
}

fn auth_config(tree: &Value) -> Result<AuthConfig, ConfigError> {
    let Some(auth) = lookup(tree, "auth") else { return Ok(AuthConfig::None) };
    let map = auth.as_mapping().ok_or_else(|| invalid("auth", "expected a mapping (htpasswd or token)"))?;
    let kinds: Vec<&str> = map.keys().filter_map(|k| k.as_str()).collect();
    for k in &kinds {
        if !["htpasswd", "token"].contains(k) {
            return Err(invalid(
                &format!("auth.{k}"),
                "is not supported; berthd authenticates with auth.htpasswd or auth.token",
            ));
        }
    }
    if kinds.len() > 1 {
        return Err(invalid("auth", "configure one method: auth.htpasswd or auth.token"));
    }
    let required = |key: &str| get_str(tree, key)?.filter(|v| !v.is_empty()).ok_or_else(|| invalid(key, "is required"));
    if lookup(tree, "auth.htpasswd").is_some() {
        return Ok(AuthConfig::Htpasswd {
            realm: get_str(tree, "auth.htpasswd.realm")?.unwrap_or_else(|| "berth".into()),
            path: required("auth.htpasswd.path")?.into(),
        });
    }
    Ok(AuthConfig::Token(TokenAuthConfig {
        realm: required("auth.token.realm")?,
        service: required("auth.token.service")?,
        issuer: required("auth.token.issuer")?,
        rootcertbundle: required("auth.token.rootcertbundle")?.into(),
    }))
}

fn actions(v: Option<&Value>, key: &str, default: crate::auth::Actions) -> Result<crate::auth::Actions, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Sequence(items)) => {
            let list: Vec<String> = items.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect();
            crate::auth::Actions::parse(&list).map_err(|e| invalid(key, e))
        }
        Some(_) => Err(invalid(key, "expected a list of actions such as [pull, push, delete]")),
    }
}

fn listeners_config(
    tree: &Value,
    http_addr: SocketAddr,
    http_tls: Option<TlsFiles>,
    auth: &AuthConfig,
    warnings: &mut Vec<String>,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    use crate::auth::{Actions, Policy};
    let Some(list) = lookup(tree, "listeners") else {
        // registry:2's semantics: with auth, everything needs credentials;
        // without, everyone may do everything — but only on loopback.
        let access = match auth {
            AuthConfig::None if http_addr.ip().is_loopback() => {
                Policy { anonymous: Actions::ALL, authenticated: Actions::ALL }
            }
            AuthConfig::None => {
                warnings.push(format!(
                    "http.addr {http_addr} is not loopback and no auth is configured: anonymous clients may pull but not push or delete; configure auth or listeners[].access"
                ));
                Policy { anonymous: Actions::PULL, authenticated: Actions::ALL }
            }
            _ => Policy { anonymous: Actions::NONE, authenticated: Actions::ALL },
        };
        return Ok(vec![ListenerConfig { addr: http_addr, tls: http_tls, access }]);
    };
    let items =
        list.as_sequence().ok_or_else(|| invalid("listeners", "expected a list of listeners (addr, tls, access)"))?;
    if items.is_empty() {
        return Err(invalid("listeners", "needs at least one listener"));
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if !item.is_mapping() {
            return Err(invalid(&key, "expected a mapping with addr, tls and access"));
        }
        for k in item.as_mapping().into_iter().flat_map(|m| m.keys()).filter_map(|k| k.as_str()) {
            if !["addr", "tls", "access"].contains(&k) {
                warnings.push(format!("config key `{key}.{k}` is not used by berthd and is ignored"));
            }
        }
        let addr = parse_addr(
            &format!("{key}.addr"),
            &map_str(item, "addr", &key)?.ok_or_else(|| invalid(&format!("{key}.addr"), "is required"))?,
        )?;
        let tls = tls_files(item.get("tls"), &format!("{key}.tls"))?;
        let access = item.get("access");
        let anon_default = if addr.ip().is_loopback() { Actions::PULL } else { Actions::NONE };
        let policy = Policy {
            anonymous: actions(
                access.and_then(|a| a.get("anonymous")),
                &format!("{key}.access.anonymous"),
                anon_default,
            )?,
            authenticated: actions(
                access.and_then(|a| a.get("authenticated")),
                &format!("{key}.access.authenticated"),
                Actions::ALL,
            )?,
        };
        if !addr.ip().is_loopback() && (policy.anonymous.push || policy.anonymous.delete) {
            warnings.push(format!("{key} ({addr}) lets anonymous clients write; anyone who can reach it can push"));
        }
        out.push(ListenerConfig { addr, tls, access: policy });
    }
    Ok(out)
}

fn show(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default().trim().to_string()
}

/// Parses registry:2 style listen addresses: `:5000`, `0.0.0.0:5000`,
/// `127.0.0.1:5000`, `[::1]:5000`, `localhost:5000`.
pub fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    let s = s.trim();
    let candidate = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if let Some(port) = s.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    candidate.parse().map_err(|_| {
        invalid(key, format!("{s:?} is not a listen address; use host:port such as 127.0.0.1:5000 or :5000"))
    })
}

/// The data directory used when `storage.filesystem.rootdirectory` is unset:
/// `/var/lib/berth` for root, else `$XDG_DATA_HOME/berth` or
/// `~/.local/share/berth`.
pub fn default_root(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if env("USER").as_deref() == Some("root") || env("HOME").as_deref() == Some("/root") {
        return PathBuf::from("/var/lib/berth");
    }
    if let Some(x) = env("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Path::new(&x).join("berth");
    }
    match env("HOME") {
        Some(h) if !h.is_empty() => Path::new(&h).join(".local/share/berth"),
        _ => PathBuf::from("/var/lib/berth"),
    }
}

/// Reads the config file (if any), applies `REGISTRY_*` overrides from
/// `vars`, and validates the result.
pub fn load(path: Option<&Path>, vars: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let mut tree = match path {
        None => Value::Mapping(Mapping::new()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
            match serde_yaml::from_str::<Value>(&text) {
                Ok(Value::Null) => Value::Mapping(Mapping::new()),
                Ok(v @ Value::Mapping(_)) => v,
                Ok(_) => return Err(invalid("(root)", "the config file must be a YAML mapping")),
                Err(source) => return Err(ConfigError::Yaml { path: p.to_path_buf(), source }),
            }
        }
    };
    let mut overrides: Vec<&(String, String)> = vars.iter().filter(|(k, _)| k.starts_with("REGISTRY_")).collect();
    overrides.sort();
    for (k, v) in overrides {
        let parts: Vec<String> = k["REGISTRY_".len()..].split('_').map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            continue;
        }
        let value = serde_yaml::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.clone()));
        let value = if value.is_null() { Value::String(v.clone()) } else { value };
        set_path(&mut tree, &parts, value);
    }
    for (key, why) in REFUSED {
        if lookup(&tree, key).is_some() {
            return Err(invalid(key, *why));
        }
    }
    let mut warnings = Vec::new();
    collect_unknown(&tree, "", &mut warnings);
    if let Some(v) = get_str(&tree, "version")? {
        if v != "0.1" {
            warnings.push(format!("config key `version` is {v:?}; registry:2 configs use 0.1"));
        }
    }
    let env_lookup = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    let level = get_str(&tree, "log.level")?.unwrap_or_else(|| "info".into()).to_ascii_lowercase();
    let level = match level.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => level,
        "warning" => "warn".into(),
        "panic" | "fatal" => "error".into(),
        other => return Err(invalid("log.level", format!("{other:?} is not one of error, warn, info, debug, trace"))),
    };
    let format = match get_str(&tree, "log.formatter")?.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") | Some("logstash") => LogFormat::Json,
        Some(other) => return Err(invalid("log.formatter", format!("{other:?} is not one of text, json, logstash"))),
    };
    let access_log = !get_bool(&tree, "log.accesslog.disabled", false)?;

    let configured_root = get_str(&tree, "storage.filesystem.rootdirectory")?;
    if configured_root.as_deref().is_some_and(|r| !Path::new(r).is_absolute()) {
        return Err(invalid("storage.filesystem.rootdirectory", "must be an absolute path"));
    }
    let backend = match (lookup(&tree, "storage.s3").is_some(), lookup(&tree, "storage.filesystem").is_some()) {
        (true, true) => {
            return Err(invalid("storage", "configure one storage driver: storage.filesystem or storage.s3, not both"))
        }
        (true, false) => Backend::S3(s3_config(&tree, &mut warnings)?),
        _ => Backend::Filesystem,
    };
    let storage = StorageConfig {
        backend,
        root_configured: configured_root.is_some(),
        root: configured_root.map(PathBuf::from).unwrap_or_else(|| default_root(&env_lookup)),
        delete_enabled: get_bool(&tree, "storage.delete.enabled", false)?,
        read_only: get_bool(&tree, "storage.maintenance.readonly.enabled", false)?,
        redirect_disable: get_bool(&tree, "storage.redirect.disable", true)?,
        upload_purging: UploadPurging {
            enabled: get_bool(&tree, "storage.maintenance.uploadpurging.enabled", true)?,
            age: get_duration(&tree, "storage.maintenance.uploadpurging.age", Duration::from_secs(168 * 3600))?,
            interval: get_duration(
                &tree,
                "storage.maintenance.uploadpurging.interval",
                Duration::from_secs(24 * 3600),
            )?,
            dry_run: get_bool(&tree, "storage.maintenance.uploadpurging.dryrun", false)?,
        },
    };
    if storage.upload_purging.interval.is_zero() {
        return Err(invalid("storage.maintenance.uploadpurging.interval", "must be greater than zero"));
    }

    if let Some(net) = get_str(&tree, "http.net")? {
        if net != "tcp" {
            return Err(invalid("http.net", format!("{net:?} is not supported; berthd listens on tcp")));
        }
    }
    let addr = parse_addr("http.addr", &get_str(&tree, "http.addr")?.unwrap_or_else(|| DEFAULT_ADDR.into()))?;
    let debug_addr = get_str(&tree, "http.debug.addr")?.map(|a| parse_addr("http.debug.addr", &a)).transpose()?;
    let d = HttpTimeouts::default();
    let timeouts = HttpTimeouts {
        header: get_duration(&tree, "http.timeouts.header", d.header)?,
        body: get_duration(&tree, "http.timeouts.body", d.body)?,
        send: get_duration(&tree, "http.timeouts.send", d.send)?,
    };
    for (key, v) in [
        ("http.timeouts.header", timeouts.header),
        ("http.timeouts.body", timeouts.body),
        ("http.timeouts.send", timeouts.send),
    ] {
        if v.is_zero() {
            return Err(invalid(key, "must be greater than zero"));
        }
    }
    let max_connections = match get_str(&tree, "http.maxconnections")? {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("http.maxconnections", format!("{v:?} is not a positive number")))?,
        ),
    };
    let host = get_str(&tree, "http.host")?;
    if let Some(h) = &host {
        if !(h.starts_with("http://") || h.starts_with("https://")) {
            return Err(invalid("http.host", format!("{h:?} must be a URL such as https://registry.example.com")));
        }
    }
    let mut headers = Vec::new();
    if let Some(v) = lookup(&tree, "http.headers") {
        let map = v
            .as_mapping()
            .ok_or_else(|| invalid("http.headers", "expected a mapping of header names to lists of values"))?;
        for (name, values) in map {
            let name = name.as_str().ok_or_else(|| invalid("http.headers", "header names must be strings"))?;
            let key = format!("http.headers.{name}");
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(&key, "is not a valid HTTP header name"));
            }
            let list: Vec<String> = match values {
                Value::Sequence(s) => s
                    .iter()
                    .map(|x| x.as_str().map(str::to_string).ok_or_else(|| invalid(&key, "values must be strings")))
                    .collect::<Result<_, _>>()?,
                Value::String(s) => vec![s.clone()],
                _ => return Err(invalid(&key, "expected a list of strings")),
            };
            for value in list {
                if axum::http::HeaderValue::from_str(&value).is_err() {
                    return Err(invalid(&key, format!("{value:?} is not a valid header value")));
                }
                headers.push((name.to_string(), value));
            }
        }
    } else {
        // registry:2's shipped config sets this; keep the same default.
        headers.push(("X-Content-Type-Options".into(), "nosniff".into()));
    }
    let tls = tls_files(lookup(&tree, "http.tls"), "http.tls")?;
    let remote = matches!(storage.backend, Backend::S3(_));
    let cache = if get_bool(&tree, "cache.enabled", remote)? {
        let path = match get_str(&tree, "cache.path")? {
            Some(p) if Path::new(&p).is_absolute() => PathBuf::from(p),
            Some(_) => return Err(invalid("cache.path", "must be an absolute path")),
            None => storage.root.join("cache"),
        };
        let max_size = get_size(&tree, "cache.maxsize")?.unwrap_or(10 * 1024 * 1024 * 1024);
        if max_size == 0 {
            return Err(invalid(
                "cache.maxsize",
                "must be greater than zero (set cache.enabled: false to turn the cache off)",
            ));
        }
        Some(CacheConfig { path, max_size })
    } else {
        None
    };
    let tls_cacerts = match lookup(&tree, "tls.cacerts") {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(PathBuf::from).ok_or_else(|| invalid("tls.cacerts", "expected a list of file paths"))
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => vec![PathBuf::from(s)],
        Some(_) => return Err(invalid("tls.cacerts", "expected a list of file paths")),
    };
    let (mirrors, proxy_mirror) = mirrors_config(&tree, &mut warnings)?;
    let cluster_registries = match lookup(&tree, "containerd.registries") {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("containerd.registries", "expected a list of registry names"))
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(s)) => vec![s.clone()],
        Some(_) => return Err(invalid("containerd.registries", "expected a list of registry names")),
    };
    let layer_index_key = match (get_str(&tree, "layerindex.key")?, get_str(&tree, "layerindex.keyfile")?) {
        (Some(_), Some(_)) => return Err(invalid("layerindex", "give key or keyfile, not both")),
        (Some(k), None) if k.len() < 32 => {
            return Err(invalid("layerindex.key", "must be at least 32 characters (e.g. `openssl rand -hex 32`)"))
        }
        (Some(k), None) => Some(Secret::Inline(k)),
        (None, Some(f)) if !Path::new(&f).is_absolute() => {
            return Err(invalid("layerindex.keyfile", format!("{f:?} must be an absolute path")))
        }
        (None, Some(f)) => Some(Secret::File(PathBuf::from(f))),
        (None, None) => None,
    };
    let auth = auth_config(&tree)?;
    let listeners = listeners_config(&tree, addr, tls.clone(), &auth, &mut warnings)?;
    Ok(Loaded {
        config: Config {
            log: LogConfig { level, format, access_log },
            storage,
            http: HttpConfig { addr, host, headers, tls, debug_addr, timeouts, max_connections },
            listeners,
            auth,
            cache,
            tls_cacerts,
            mirrors,
            proxy_mirror,
            cluster_registries,
            layer_index_key,
        },
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let l =
            load_str("auth:\n  htpasswd:\n    realm: r\n    path: /etc/htpasswd\n", &[("REGISTRY_HTTP_ADDR", ":5000")])
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
        let e =
            load_str("listeners:\n  - addr: 127.0.0.1:1\n    access:\n      anonymous: [write]\n", &[]).unwrap_err();
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
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any value for any known key (as a `REGISTRY_*` override, parsed
        /// as YAML like registry:2 does) loads or is refused with an error
        /// that names a key — never a panic.
        #[test]
        fn any_value_for_any_key_loads_or_names_the_key(
            keys in proptest::collection::vec(proptest::sample::select(KNOWN.to_vec()), 1..4),
            values in proptest::collection::vec("\\PC{0,24}|[0-9]{1,12}[a-zA-Z]{0,3}|true|false|\\[[a-z0-9:./ ,-]{0,30}\\]|\\{[a-z: ,]{0,20}\\}|-?[0-9.]{1,8}(s|m|h|GiB|ms)?", 1..4),
        ) {
            let vars: Vec<(String, String)> = keys
                .iter()
                .zip(values.iter().cycle())
                .filter(|(k, _)| !k.contains('*'))
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
