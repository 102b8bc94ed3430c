//! `storage`, `cache` and `layerindex`: where the data lives, the node's
//! cache in front of it, and the key that signs layer indexes.

use super::raw;
use super::values::{flag, Text};
use super::{
    default_root, invalid, Backend, CacheConfig, ConfigError, GcSchedule, Secret, StorageConfig, UploadPurging,
};
use crate::registry::retention::{KeepRule, Policy as RetentionPolicy, Retention};
use crate::storage::s3::{S3Config, MIN_CHUNK_SIZE};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Chunk size of S3 multipart uploads when `storage.s3.chunksize` is unset.
const DEFAULT_CHUNK_SIZE: u64 = 10 * 1024 * 1024;

/// How often the cluster collects garbage unless `storage.gc.interval` says.
const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// `storage.gc.delay` unless set (see `berthd gc --delay`).
const DEFAULT_GC_DELAY: Duration = Duration::from_secs(3600);

/// Size of the node cache when `cache.maxsize` is unset.
const DEFAULT_CACHE_SIZE: u64 = 10 * 1024 * 1024 * 1024;

pub(super) fn storage(
    raw: &raw::Storage,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<StorageConfig, ConfigError> {
    let configured_root = raw.filesystem.as_ref().and_then(|f| f.rootdirectory.as_ref()).map(|t| t.0.clone());
    if configured_root.as_deref().is_some_and(|r| !Path::new(r).is_absolute()) {
        return Err(invalid("storage.filesystem.rootdirectory", "must be an absolute path"));
    }
    let backend = match (&raw.s3, raw.filesystem.is_some()) {
        (Some(_), true) => {
            return Err(invalid("storage", "configure one storage driver: storage.filesystem or storage.s3, not both"))
        }
        (Some(s3), false) => Backend::S3(s3_config(s3, warnings)?),
        (None, _) => Backend::Filesystem,
    };
    let purging = &raw.maintenance.uploadpurging;
    let upload_purging = UploadPurging {
        enabled: flag(purging.enabled, true),
        age: purging.age.map_or(Duration::from_secs(168 * 3600), |d| d.0),
        interval: purging.interval.map_or(Duration::from_secs(24 * 3600), |d| d.0),
        dry_run: flag(purging.dryrun, false),
    };
    if upload_purging.interval.is_zero() {
        return Err(invalid("storage.maintenance.uploadpurging.interval", "must be greater than zero"));
    }
    let gc = GcSchedule {
        interval: raw.gc.interval.map_or(DEFAULT_GC_INTERVAL, |d| d.0),
        delay: raw.gc.delay.map_or(DEFAULT_GC_DELAY, |d| d.0),
        dry_run: flag(raw.gc.dryrun, false),
        delete_untagged: flag(raw.gc.deleteuntagged, false),
    };
    Ok(StorageConfig {
        backend,
        root_configured: configured_root.is_some(),
        root: configured_root.map(PathBuf::from).unwrap_or_else(|| default_root(env)),
        delete_enabled: flag(raw.delete.enabled, false),
        read_only: flag(raw.maintenance.readonly.enabled, false),
        redirect_disable: flag(raw.redirect.disable, true),
        upload_purging,
        gc,
        retention: std::sync::Arc::new(retention(&raw.retention)?),
    })
}

/// `storage.retention.policies`, checked: every policy names repositories,
/// every pattern compiles.
fn retention(raw: &raw::Retention) -> Result<Retention, ConfigError> {
    let mut policies = Vec::new();
    for (i, p) in raw.policies.iter().enumerate() {
        let at = |key: &str| format!("storage.retention.policies[{i}].{key}");
        let repositories = p.repositories.as_ref().map(|l| l.0.clone()).unwrap_or_default();
        if repositories.is_empty() {
            return Err(invalid(
                &at("repositories"),
                "is required: the repositories the policy applies to, as globs (\"**\" for every one)",
            ));
        }
        let keep_tags = match &p.keeptags {
            None => None,
            Some(rules) => {
                let mut out = Vec::new();
                for (j, r) in rules.iter().enumerate() {
                    let mut patterns = Vec::new();
                    for pat in r.patterns.iter().flat_map(|l| l.0.iter()) {
                        patterns.push(regex_lite::Regex::new(pat).map_err(|e| {
                            invalid(
                                &at(&format!("keeptags[{j}].patterns")),
                                format!("{pat:?} is not a regular expression: {e}"),
                            )
                        })?);
                    }
                    out.push(KeepRule {
                        patterns,
                        most_recently_pushed: r.mostrecentlypushedcount.map(|n| n as usize),
                        most_recently_pulled: r.mostrecentlypulledcount.map(|n| n as usize),
                        pushed_within: r.pushedwithin.map(|d| d.0),
                        pulled_within: r.pulledwithin.map(|d| d.0),
                    });
                }
                Some(out)
            }
        };
        policies.push(RetentionPolicy { repositories, delete_referrers: flag(p.deletereferrers, true), keep_tags });
    }
    Ok(Retention { policies })
}

fn s3_config(raw: &raw::S3, warnings: &mut Vec<String>) -> Result<S3Config, ConfigError> {
    let bucket =
        Text::non_empty(&raw.bucket).ok_or_else(|| invalid("storage.s3.bucket", "is required for the s3 driver"))?;
    let region = Text::non_empty(&raw.region).unwrap_or_else(|| "us-east-1".into());
    let secure = flag(raw.secure, true);
    let endpoint = Text::non_empty(&raw.regionendpoint).map(|e| {
        if e.starts_with("http://") || e.starts_with("https://") {
            e
        } else if secure {
            format!("https://{e}")
        } else {
            format!("http://{e}")
        }
    });
    if !flag(raw.v4auth, true) {
        warnings.push("config key `storage.s3.v4auth` is false; berthd always signs S3 requests with SigV4".into());
    }
    let chunk_size = raw.chunksize.map_or(DEFAULT_CHUNK_SIZE, |s| s.0);
    if chunk_size < MIN_CHUNK_SIZE as u64 {
        return Err(invalid(
            "storage.s3.chunksize",
            "must be at least 5242880 (5 MiB), the smallest S3 multipart part",
        ));
    }
    let (access_key, secret_key) = (Text::non_empty(&raw.accesskey), Text::non_empty(&raw.secretkey));
    if access_key.is_some() != secret_key.is_some() {
        return Err(invalid(
            "storage.s3.secretkey",
            "storage.s3.accesskey and storage.s3.secretkey must be given together (or neither, to use the AWS credential chain)",
        ));
    }
    Ok(S3Config {
        bucket,
        region,
        force_path_style: flag(raw.forcepathstyle, endpoint.is_some()),
        endpoint,
        root_directory: raw.rootdirectory.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
        access_key,
        secret_key,
        chunk_size: chunk_size as usize,
        skip_verify: flag(raw.skipverify, false),
    })
}

/// The node cache: on by default in front of S3, off for local storage.
pub(super) fn cache(raw: &raw::Cache, storage: &StorageConfig) -> Result<Option<CacheConfig>, ConfigError> {
    let remote = matches!(storage.backend, Backend::S3(_));
    if !flag(raw.enabled, remote) {
        return Ok(None);
    }
    let path = match &raw.path {
        Some(Text(p)) if Path::new(p).is_absolute() => PathBuf::from(p),
        Some(_) => return Err(invalid("cache.path", "must be an absolute path")),
        None => storage.root.join("cache"),
    };
    let max_size = raw.maxsize.map_or(DEFAULT_CACHE_SIZE, |s| s.0);
    if max_size == 0 {
        return Err(invalid(
            "cache.maxsize",
            "must be greater than zero (set cache.enabled: false to turn the cache off)",
        ));
    }
    Ok(Some(CacheConfig { path, max_size }))
}

pub(super) fn layer_index_key(raw: &raw::LayerIndex) -> Result<Option<Secret>, ConfigError> {
    let text = |t: &Option<Text>| t.as_ref().map(|t| t.0.clone());
    match (text(&raw.key), text(&raw.keyfile)) {
        (Some(_), Some(_)) => Err(invalid("layerindex", "give key or keyfile, not both")),
        (Some(k), None) if k.len() < 32 => {
            Err(invalid("layerindex.key", "must be at least 32 characters (e.g. `openssl rand -hex 32`)"))
        }
        (Some(k), None) => Ok(Some(Secret::Inline(k))),
        (None, Some(f)) if !Path::new(&f).is_absolute() => {
            Err(invalid("layerindex.keyfile", format!("{f:?} must be an absolute path")))
        }
        (None, Some(f)) => Ok(Some(Secret::File(PathBuf::from(f)))),
        (None, None) => Ok(None),
    }
}
