//! Berth's end-to-end tests: real `berthd` and `berth-snapshotter`
//! processes driven by real clients (skopeo, containerd + ctr, runc,
//! Debian's docker-registry, SeaweedFS). One test binary, one module per
//! area; run one area with a name filter, e.g.
//! `cargo test -p berth-tests --test e2e -- skopeo::`.

use berth_tests::{common, support_e2e, support_s3};

mod adversarial;
mod ansible;
mod arm64;
mod auth;
mod cli;
mod conformance;
mod console;
mod containerd;
mod containerd_versions;
mod deploy;
mod faults;
mod gc;
mod metrics;
mod mirror;
mod registry2_compat;
mod retention;
mod s3;
mod skopeo;
mod snapshotter;
mod tls;
mod untrusted_upstream;
