//! Berth's daemon, `berthd`: a per-node OCI registry.
//!
//! Requests flow one way: [`api`] (HTTP, routing, error rendering) →
//! [`registry`] (the OCI distribution rules) → [`storage`] (a narrow
//! object-store trait) → a backend ([`storage::fs`] is the embedded
//! default). See `docs/architecture.md`.

#![deny(unsafe_code)]

pub mod allocator;
pub mod api;
pub mod auth;
pub mod commands;
pub mod config;
pub mod console;
pub mod digest;
pub mod durable;
pub mod error;
pub mod error_chain;
pub mod fill;
pub mod layerindex;
pub mod listen;
pub mod logging;
pub mod lru;
pub mod media_types;
pub mod metrics;
pub mod names;
pub mod nodeconfig;
pub mod notify;
pub mod registry;
pub mod server;
pub mod storage;
pub mod tls;
pub mod upstream;

pub use error::{Error, Result};

/// The version printed by `berthd --version` and in the first log line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
