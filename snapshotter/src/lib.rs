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
//! berthd ([`berthd`]) using the seek index berthd built ([`index`]);
//! [`node_fill`] shares the node's link between the layers' background
//! fills and the reads containers wait for.
//!
//! No unsafe code outside the modules that call into libc, each of which
//! allows it at its top and says why ([`disk`], [`mounts`], [`node_fill`]).
#![deny(unsafe_code)]

pub mod berthd;
pub mod config;
pub mod disk;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod layer;
pub mod lazy;
pub mod lazyfs;
pub mod metrics;
pub mod mounts;
pub mod node_fill;
pub mod prefetch;
pub mod pull;
pub mod server;
pub mod snapshots;
pub mod stats;
pub mod store;
pub mod tarheader;

pub use error::{Error, Result};

/// The version `berth-snapshotter --version` prints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod units {
    /// The systemd units that ship: the one in `dist/` and the Ansible role's.
    const UNITS: [(&str, &str); 2] = [
        ("dist/berth-snapshotter.service", include_str!("../dist/berth-snapshotter.service")),
        ("ansible template", include_str!("../../ansible/roles/berth/templates/berth-snapshotter.service.j2")),
    ];

    /// Options that give a service a mount namespace of its own, where the
    /// FUSE mounts of lazy layers would be invisible to containerd.
    const PRIVATE_MOUNTS: [&str; 9] = [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectKernelTunables=",
        "ProtectKernelModules=",
        "ProtectKernelLogs=",
        "ReadWritePaths=",
        "MountFlags=",
    ];

    #[test]
    fn units_share_containerds_mounts_and_outlive_restarts() {
        for (name, unit) in UNITS {
            let lines: Vec<&str> = unit.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
            for opt in PRIVATE_MOUNTS {
                assert!(!lines.iter().any(|l| l.starts_with(opt)), "{name} sets {opt}");
            }
            assert!(lines.contains(&"KillMode=process"), "{name}: a restart would kill the mount-layer processes");
            assert!(lines.contains(&"DeviceAllow=/dev/fuse rw"), "{name}: /dev/fuse must stay open");
        }
    }
}
