//! Berth's containerd snapshotter, `berth-snapshotter`.
//!
//! containerd reaches it as a proxy plugin (`[proxy_plugins.berth]`,
//! `type = "snapshot"`) over gRPC on a unix socket. Normal snapshots are
//! overlayfs, the same mounts as containerd's built-in snapshotter.
//!
//! Layers: [`grpc`] (containerd's wire protocol) → [`snapshots`] (the
//! snapshot rules and the overlay layout) → [`store`] (metadata in an
//! embedded transactional store). [`server`] binds the socket.

pub mod config;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod server;
pub mod snapshots;
pub mod store;

pub use error::{Error, Result};

/// The version `berth-snapshotter --version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
