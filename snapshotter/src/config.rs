//! `berth-snapshotter serve` settings: defaults, then the YAML config file,
//! then command-line flags.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_ADDRESS: &str = "/run/berth/snapshotter.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/berth-snapshotter";
pub const DEFAULT_BERTHD: &str = "http://127.0.0.1:5000";
/// 8 MiB/s of compressed layer (67 Mbit/s): a Pi on a 100 Mbit/s link keeps
/// a third of it for everything else, and every fill pauses while a
/// container waits for a lazy read.
pub const DEFAULT_FILL_RATE: u64 = 8 << 20;
/// Seconds a container's read of a lazy layer may wait for berthd before it
/// fails (once: the kernel's retries of it fail at once).
pub const DEFAULT_READ_TIMEOUT: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The unix socket containerd's proxy plugin dials.
    pub address: PathBuf,
    /// Metadata and snapshot trees.
    pub root: PathBuf,
    /// The node's berthd: `http://127.0.0.1:PORT` or `unix:///path`.
    pub berthd: String,
    /// Mount layers lazily when berthd has their index (else every
    /// snapshot is a normal overlayfs one).
    pub lazy: bool,
    /// Bytes per second lazy layers' remaining chunks are fetched at in the
    /// background, for the whole node: the layers take turns (0: unlimited).
    pub fill_rate: u64,
    /// Seconds a container's read of a lazy layer may wait for berthd.
    pub read_timeout: u64,
    /// Bytes the background fill leaves free on the root's file system
    /// (default: a tenth of it, at most 2 GiB).
    pub min_free: Option<u64>,
    /// Where `/metrics` is served (`127.0.0.1:5002`); none by default.
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            address: DEFAULT_ADDRESS.into(),
            root: DEFAULT_ROOT.into(),
            berthd: DEFAULT_BERTHD.into(),
            lazy: true,
            fill_rate: DEFAULT_FILL_RATE,
            read_timeout: DEFAULT_READ_TIMEOUT,
            min_free: None,
            metrics_address: None,
        }
    }
}

impl Config {
    /// Reads `path` (YAML); every key is optional.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(Error::io(format!("cannot read {}", path.display())))?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        yaml_serde::from_str(&text).map_err(|source| Error::Config { path: path.to_owned(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        std::fs::write(&p, "root: /srv/snap\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/snap"));
        assert_eq!(c.address, PathBuf::from(DEFAULT_ADDRESS));
        std::fs::write(&p, "rooot: /srv/snap\n").unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("rooot"), "{e}");
        assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
        let missing = dir.path().join("missing.yml");
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot read {}: ", missing.display())), "{e}");
    }
}
