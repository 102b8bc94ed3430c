//! Berth's containerd snapshotter, `berth-snapshotter`.
//!
//! containerd reaches it as a proxy plugin (`[proxy_plugins.berth]`,
//! `type = "snapshot"`) over gRPC on a unix socket. Normal snapshots are
//! overlayfs, the same mounts as containerd's built-in snapshotter.
//!
//! Layers: [`grpc`] (containerd's wire protocol) → [`snapshots`] (the
//! snapshot rules and the overlay layout) → [`store`] (metadata in an
//! embedded transactional store). [`server`] binds the socket.
//!
//! Lazy layers: [`lazy`] decides and mounts, [`lazyfs`] is the FUSE file
//! system of one layer, [`layer`] fetches and verifies its bytes from
//! berthd ([`berthd`]) using the seek index berthd built ([`index`]).

pub mod berthd;
pub mod config;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod index;
pub mod layer;
pub mod lazy;
pub mod lazyfs;
pub mod pull;
pub mod server;
pub mod snapshots;
pub mod store;

pub use error::{Error, Result};

/// The version `berth-snapshotter --version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
