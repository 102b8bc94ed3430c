#!/usr/bin/env bash
# Cross-builds the linux/arm64 release binaries — berthd and
# berth-snapshotter — into target/aarch64-unknown-linux-gnu/release/,
# statically linked (glibc, `-C target-feature=+crt-static`), so that one file
# runs on every supported arm64 node whatever its glibc: Raspberry Pi OS
# 64-bit and Debian 12 (2.36), Ubuntu 22.04 (2.35) and 24.04.
#
#   bash tests/scripts/build-arm64.sh        # as root (mmdebstrap, unshare, chroot)
#
# This machine's Rust toolchain has only the x86_64 standard library, and
# rustup cannot reach its servers here; Debian unstable packages rustc with
# the arm64 standard library (libstd-rust-dev:arm64) and the aarch64 gcc. So
# the build runs in a Debian unstable root made with mmdebstrap (amd64 with
# arm64 as a foreign architecture), entered with a private mount namespace
# and chroot; the workspace is bind-mounted into it. Everything is cached
# under /var/cache/berth-test/arm64 (BERTH_ARM64_CACHE): the root (keyed by
# what it is made of), cargo's downloads and the target directory, so a run
# after the first rebuilds only what changed.
#
# Why static rather than linked against an old glibc: the unstable root's
# glibc is the newest (2.41+), and a binary linked against it asks for
# GLIBC_2.39 symbols that Debian 12 lacks; a static binary asks for nothing.
# Name lookups (getaddrinfo) still work: since glibc 2.34 the `files` and
# `dns` NSS modules are part of libc itself, so a static binary answers from
# /etc/hosts and DNS without loading anything (the image's nsswitch.conf
# names only those). A musl build would serve too; static glibc needs only
# what Debian packages for the cross build.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
prog=build-arm64.sh
die() { echo "$prog: $*" >&2; exit 1; }
note() { echo "$prog: $*" >&2; }

[[ $(id -u) -eq 0 ]] || die "run as root: the build root is made with mmdebstrap and entered with unshare + chroot"

cache=${BERTH_ARM64_CACHE:-/var/cache/berth-test/arm64}
target=aarch64-unknown-linux-gnu
out=$repo/target/$target/release
# Bump RECIPE when the way the root is made changes.
RECIPE=1
packages=rustc,cargo,libstd-rust-dev:arm64,gcc-aarch64-linux-gnu,libc6-dev:arm64,protobuf-compiler,pkg-config,ca-certificates
key=$(printf '%s|%s' "$RECIPE" "$packages" | sha256sum | cut -c1-16)
root=$cache/sid-cross-$key

missing=()
for tool in mmdebstrap unshare chroot readelf; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  note "installing mmdebstrap, util-linux, binutils (missing: ${missing[*]})"
  env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    mmdebstrap util-linux coreutils binutils debian-archive-keyring >/dev/null
fi

mkdir -p "$cache"
if [[ ! -f $root/.complete ]]; then
  rm -rf "$root" "$root.tmp"
  note "making the Debian unstable build root (once; cached in $root) ..."
  started=$SECONDS
  # Unstable's Release file may be signed "later" than this machine's clock
  # trusts, hence Check-Valid-Until false.
  mmdebstrap --quiet --mode=root --variant=minbase --architectures=amd64,arm64 \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include="$packages" sid "$root.tmp" http://deb.debian.org/debian
  touch "$root.tmp/.complete"
  mv "$root.tmp" "$root"
  note "build root ready in $((SECONDS - started))s"
  # Roots of earlier recipes are not used again.
  for old in "$cache"/sid-cross-*; do
    [[ $old == "$root" ]] || rm -rf "$old"
  done
fi

mkdir -p "$cache/cargo-home" "$cache/target" "$out"
note "building berthd and berth-snapshotter for $target (static) ..."
started=$SECONDS
# A private mount namespace: its mounts go when the build ends, however it ends.
unshare --mount --propagation private --fork -- bash -euo pipefail -c '
  root=$1 repo=$2 cache=$3 target=$4
  for d in proc dev src target cargo-home; do mkdir -p "$root/$d"; done
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount --bind "$repo" "$root/src"
  mount --bind "$cache/target" "$root/target"
  mount --bind "$cache/cargo-home" "$root/cargo-home"
  # This network: its name servers, and the CA bundle cargo trusts.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  triple=${target//-/_}
  exec chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/cargo-home CARGO_TARGET_DIR=/target \
    CARGO_TERM_COLOR=never \
    "CARGO_TARGET_${triple^^}_LINKER=aarch64-linux-gnu-gcc" \
    "CARGO_TARGET_${triple^^}_RUSTFLAGS=-C target-feature=+crt-static" \
    "CC_${triple}=aarch64-linux-gnu-gcc" "AR_${triple}=aarch64-linux-gnu-ar" \
    sh -c "cd /src && cargo build --release --locked --target $target -p berthd -p berth-snapshotter"
' build "$root" "$repo" "$cache" "$target"

for bin in berthd berth-snapshotter; do
  built=$cache/target/$target/release/$bin
  [[ -f $built ]] || die "$built was not built"
  machine=$(readelf -h "$built" | awk -F: '/Machine:/ { gsub(/^ +/, "", $2); print $2 }')
  [[ $machine == AArch64 ]] || die "$bin is for $machine, not AArch64"
  if readelf -l "$built" | grep -q 'Requesting program interpreter'; then
    die "$bin is dynamically linked; it must be static to run on every arm64 node"
  fi
  cp "$built" "$out/$bin.tmp"
  mv "$out/$bin.tmp" "$out/$bin"
done
note "done in $((SECONDS - started))s: $out/berthd ($(du -h "$out/berthd" | cut -f1)), $out/berth-snapshotter ($(du -h "$out/berth-snapshotter" | cut -f1))"
