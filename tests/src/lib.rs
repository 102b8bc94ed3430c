//! Support for Berth's end-to-end tests (`tests/main.rs`) and benchmarks
//! (`benches/`): start real `berthd` processes, find and drive the external
//! programs (skopeo, containerd, docker-registry, SeaweedFS), build test
//! images. The tests themselves live in `tests/`.

pub mod common;
pub mod fake_upstream;
pub mod support_e2e;
pub mod support_s3;
