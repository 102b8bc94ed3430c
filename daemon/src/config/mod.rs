//! Configuration: registry:2's `config.yml` keys and `REGISTRY_*`
//! environment overrides, so users bring the files they already have, with
//! Berth's own keys beside them.
//!
//! Loading goes in three steps:
//! 1. the YAML is read into a tree and `REGISTRY_*` overrides are applied
//!    to it (`REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY` sets
//!    `storage.filesystem.rootdirectory`, the value parsed as YAML like
//!    registry:2 does);
//! 2. the tree is deserialized into [`raw::Raw`], the file's shape; keys
//!    no field reads are collected as warnings by their path, and a value
//!    of the wrong kind is an error naming its key;
//! 3. each section module checks what depends on what and builds the
//!    validated [`Config`] the rest of berthd uses.

mod http;
mod mirrors;
mod raw;
mod storage;
pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_serde::{Mapping, Value};

pub use crate::tls::server::TlsFiles;
pub use http::parse_addr;
pub use mirrors::registry_name_of;
pub use values::parse_size;

/// Where berthd listens when `http.addr` is not set: loopback only, so a
/// fresh install exposes nothing.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";

/// Default time a mirrored tag is trusted before it is revalidated upstream.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

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
    S3(crate::storage::s3::S3Config),
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
    pub gc: GcSchedule,
    /// `storage.retention`: which tags collections keep.
    pub retention: std::sync::Arc<crate::registry::retention::Retention>,
}

/// `storage.gc`: the cluster's garbage collection, run by whichever node
/// finds it due (one at a time, through the lease in the storage).
#[derive(Debug, Clone)]
pub struct GcSchedule {
    /// How often the cluster collects; zero: never on its own.
    pub interval: Duration,
    /// See `berthd gc --delay`.
    pub delay: Duration,
    /// Report in the log only; change nothing.
    pub dry_run: bool,
    /// Remove manifests no tag reaches (`berthd gc --delete-untagged`).
    pub delete_untagged: bool,
}

/// `storage.maintenance.uploadpurging`: registry:2's defaults are kept.
#[derive(Debug, Clone)]
pub struct UploadPurging {
    pub enabled: bool,
    pub age: Duration,
    pub interval: Duration,
    pub dry_run: bool,
}

/// One listener: an address, optional TLS, and who may do what there.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub access: crate::auth::Access,
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
        source: yaml_serde::Error,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

pub(crate) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), message: message.into() }
}

/// registry:2 features Berth does not implement. Starting without them
/// would silently weaken security or send data elsewhere, so they stop
/// start-up instead of being ignored.
const REFUSED: &[(&str, &str)] = &[
    ("storage.azure", "the azure storage driver is not supported; use storage.filesystem or storage.s3"),
    ("storage.gcs", "the gcs storage driver is not supported; use storage.filesystem or storage.s3"),
    ("storage.swift", "the swift storage driver is not supported; use storage.filesystem or storage.s3"),
    ("storage.oss", "the oss storage driver is not supported; use storage.filesystem or storage.s3"),
    ("storage.inmemory", "the inmemory storage driver is not supported; use storage.filesystem"),
    ("http.tls.letsencrypt", "Let's Encrypt is not supported; give http.tls.certificate and http.tls.key"),
];

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    for part in path.split('.') {
        cur = cur.as_mapping()?.get(part)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// Sets `path` in the tree, creating mappings on the way.
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

/// A serde path as the config's keys are written: `mirrors[0].url`.
fn key_of(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_of(parent)),
        Path::Map { parent, key } => match key_of(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => key_of(parent),
    }
}

/// Deserializes `value` (found at `prefix`) into `T`: keys `T` does not
/// read become warnings, a value of the wrong kind an error naming its key.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<T, ConfigError> {
    let mut ignored = Vec::new();
    let mut note = |p: serde_ignored::Path| ignored.push(key_of(&p));
    let de = serde_ignored::Deserializer::new(value.clone(), &mut note);
    let result = serde_path_to_error::deserialize(de);
    for key in ignored {
        let key = join(prefix, &key);
        warnings.push(format!("config key `{key}` is not used by berthd and is ignored"));
    }
    result.map_err(|e| {
        let key = join(prefix, &e.path().to_string()).replace(".[", "[");
        let message = e.inner().to_string();
        // yaml_serde appends a position in the document; the key says where.
        let message = message.split(" at line ").next().unwrap_or(&message).to_string();
        invalid(if key.is_empty() || key == "." { "(root)" } else { &key }, message)
    })
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty() || key == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => key.to_string(),
        (false, false) => format!("{prefix}.{key}"),
    }
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

/// The config file's tree with the environment's `REGISTRY_*` overrides.
fn tree(path: Option<&Path>, vars: &[(String, String)]) -> Result<Value, ConfigError> {
    let mut tree = match path {
        None => Value::Mapping(Mapping::new()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
            match yaml_serde::from_str::<Value>(&text) {
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
        let value = yaml_serde::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.clone()));
        let value = if value.is_null() { Value::String(v.clone()) } else { value };
        set_path(&mut tree, &parts, value);
    }
    Ok(tree)
}

/// Reads the config file (if any), applies `REGISTRY_*` overrides from
/// `vars`, and validates the result.
pub fn load(path: Option<&Path>, vars: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let tree = tree(path, vars)?;
    for (key, why) in REFUSED {
        if lookup(&tree, key).is_some() {
            return Err(invalid(key, *why));
        }
    }
    let mut warnings = Vec::new();
    let raw: raw::Raw = typed(&tree, "", &mut warnings)?;
    if let Some(v) = &raw.version {
        if v.0 != "0.1" {
            warnings.push(format!("config key `version` is {:?}; registry:2 configs use 0.1", v.0));
        }
    }
    let env = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let log = log_config(&raw.log)?;
    let storage = storage::storage(&raw.storage, &env, &mut warnings)?;
    let cache = storage::cache(&raw.cache, &storage)?;
    let layer_index_key = storage::layer_index_key(&raw.layerindex)?;
    let http = http::http(&raw.http)?;
    let auth = http::auth(raw.auth.as_ref(), &mut warnings)?;
    let listeners = http::listeners(raw.listeners.as_deref(), &http, &auth, &mut warnings)?;
    let (mirrors, proxy_mirror) = mirrors::mirrors(raw.mirrors.as_deref(), raw.proxy.as_ref())?;
    Ok(Loaded {
        config: Config {
            log,
            storage,
            http,
            listeners,
            auth,
            cache,
            tls_cacerts: raw.tls.cacerts.as_ref().map(values::List::paths).unwrap_or_default(),
            mirrors,
            proxy_mirror,
            cluster_registries: raw.containerd.registries.map(|l| l.0).unwrap_or_default(),
            layer_index_key,
        },
        warnings,
    })
}

fn log_config(raw: &raw::Log) -> Result<LogConfig, ConfigError> {
    let level = raw.level.as_ref().map_or("info".to_string(), |l| l.0.to_ascii_lowercase());
    let level = match level.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => level,
        "warning" => "warn".into(),
        "panic" | "fatal" => "error".into(),
        other => return Err(invalid("log.level", format!("{other:?} is not one of error, warn, info, debug, trace"))),
    };
    let format = match raw.formatter.as_ref().map(|f| f.0.as_str()) {
        None | Some("text") => LogFormat::Text,
        Some("json") | Some("logstash") => LogFormat::Json,
        Some(other) => return Err(invalid("log.formatter", format!("{other:?} is not one of text, json, logstash"))),
    };
    Ok(LogConfig { level, format, access_log: !values::flag(raw.accesslog.disabled, false) })
}

#[cfg(test)]
mod tests;
