#!/usr/bin/env bash
# Installs the external programs the end-to-end tests drive (Debian 12 bookworm):
# skopeo, containerd (+ctr), runc, umoci, busybox-static, docker-registry, jq,
# openssl and curl (TLS tests), apache2-utils (htpasswd for an authenticated upstream),
# protobuf-compiler (containerd's API types are generated at build time) and
# fuse3 (the snapshotter's lazy mounts) and zstd (multi-frame zstd layers in the
# layer-index tests), and chromium with chromium-driver (the console's browser
# tests, driven through WebDriver).
#
# Idempotent: does nothing when everything is already present; otherwise runs
# `apt-get update` once and installs the missing packages (only those). It never leaves a
# system service running: a temporary policy-rc.d forbids service starts during
# the install, and any docker-registry/containerd daemon that the install
# started anyway (one that was not running before) is stopped afterwards.
set -euo pipefail

# package -> a file (or command) that proves it is installed
declare -A probe=(
  [skopeo]=skopeo
  [containerd]=ctr
  [runc]=runc
  [umoci]=umoci
  [busybox-static]=/bin/busybox
  [docker-registry]=docker-registry
  [jq]=jq
  [openssl]=openssl
  [curl]=curl
  [apache2-utils]=htpasswd
  [protobuf-compiler]=protoc
  [fuse3]=fusermount3
  [zstd]=zstd
  [chromium]=chromium
  [chromium-driver]=chromedriver
)

dpkg_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

is_installed() {
  local pkg=$1 p=${probe[$1]}
  # busybox-static specifically: the dynamic `busybox` package also provides
  # /bin/busybox, but the tests copy it into an image and need a static binary.
  if [[ $pkg == busybox-static ]]; then
    dpkg_installed busybox-static && [[ -x $p ]]
    return
  fi
  if [[ $p == /* ]]; then
    [[ -x $p ]] && return 0
  else
    command -v "$p" >/dev/null 2>&1 && return 0
    # sbin may not be on a non-root PATH
    [[ -x /usr/sbin/$p || -x /sbin/$p ]] && return 0
  fi
  return 1
}

missing=()
for pkg in "${!probe[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all test dependencies present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo" >&2; exit 1; }
  SUDO=(sudo)
fi

pids_of() { # exact process names, e.g. docker-registry / containerd
  pgrep -x "$1" 2>/dev/null | sort || true
}
before_registry=$(pids_of docker-registry)
before_containerd=$(pids_of containerd)

# Forbid service starts from maintainer scripts while we install.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  made_policy=1
fi
cleanup() {
  if [[ $made_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi
}
trap cleanup EXIT

"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
# Only the missing ones: naming an installed package would upgrade it.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"

# Stop daemons the install started anyway (only ones that did not run before).
stop_new() {
  local name=$1 before=$2 pid
  for pid in $(pids_of "$name"); do
    if ! grep -qx "$pid" <<<"$before"; then
      echo "install-deps: stopping $name (pid $pid) started by the package install"
      "${SUDO[@]}" kill "$pid" 2>/dev/null || true
    fi
  done
}
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  for pkg in docker-registry containerd; do
    # only units of packages this run installed; leave pre-existing services alone
    if [[ " ${missing[*]} " == *" $pkg "* ]]; then
      "${SUDO[@]}" systemctl stop "$pkg.service" 2>/dev/null || true
      "${SUDO[@]}" systemctl disable "$pkg.service" 2>/dev/null || true
    fi
  done
fi
stop_new docker-registry "$before_registry"
stop_new containerd "$before_containerd"

for pkg in "${!probe[@]}"; do
  is_installed "$pkg" || { echo "install-deps: $pkg still missing after install" >&2; exit 1; }
done
echo "install-deps: done"
