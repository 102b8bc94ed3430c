#!/usr/bin/env bash
# Installs what the Ansible end-to-end test (tests/tests/ansible.rs) drives:
#
# * Debian packages: mmdebstrap (builds the Debian 12 system root the role is
#   converged on; eatmydata and dpkg-dev for its eatmydata hook, which makes
#   it a third faster), systemd-container (systemd-nspawn boots it),
#   util-linux (nsenter), debian-archive-keyring (mmdebstrap checks the
#   mirror with it);
# * Ansible and ansible-lint from PyPI, into a venv at $ANSIBLE_PREFIX
#   (default /opt/berth-test/ansible). The full `ansible` package bundles the
#   community.docker collection, whose `nsenter` connection reaches the
#   container without a network (Ansible Galaxy is not needed).
#
# Idempotent: does nothing when everything is present (a warm machine pays a
# few dpkg/stat calls); otherwise installs only what is missing.
set -euo pipefail

PREFIX=${ANSIBLE_PREFIX:-/opt/berth-test/ansible}
# Pinned so every machine lints and runs the same: ansible 12 = ansible-core
# 2.19, the newest line that runs on Debian 12's Python 3.11.
ANSIBLE_VERSION=${ANSIBLE_VERSION:-12.3.0}
ANSIBLE_LINT_VERSION=${ANSIBLE_LINT_VERSION:-26.10.1}

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-ansible: need root or sudo" >&2; exit 1; }
  SUDO=(sudo)
fi

dpkg_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# --- Debian packages -----------------------------------------------------
missing=()
for pkg in mmdebstrap eatmydata dpkg-dev systemd-container util-linux debian-archive-keyring python3-venv; do
  dpkg_installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install-ansible: installing ${missing[*]}"
  # Forbid service starts from maintainer scripts (systemd-container ships
  # systemd-machined) while we install.
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
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- Ansible from PyPI ----------------------------------------------------
have_version() { # venv-binary distribution version (pip's dist-info, without running pip)
  [[ -x $PREFIX/bin/$1 ]] || return 1
  compgen -G "$PREFIX/lib/python3*/site-packages/${2//-/_}-$3.dist-info" >/dev/null
}

if have_version ansible-playbook ansible "$ANSIBLE_VERSION" && have_version ansible-lint ansible-lint "$ANSIBLE_LINT_VERSION"; then
  echo "install-ansible: ansible $ANSIBLE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION present in $PREFIX"
  exit 0
fi

# Debian's Python (a stable path) rather than a pyenv shim.
PY=/usr/bin/python3
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || { echo "install-ansible: $PY cannot make a venv" >&2; exit 1; }

echo "install-ansible: installing ansible==$ANSIBLE_VERSION ansible-lint==$ANSIBLE_LINT_VERSION into $PREFIX"
"${SUDO[@]}" rm -rf "$PREFIX"
"${SUDO[@]}" mkdir -p "$(dirname "$PREFIX")"
"${SUDO[@]}" "$PY" -m venv "$PREFIX"
"${SUDO[@]}" "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check \
  "ansible==$ANSIBLE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION"

"$PREFIX/bin/ansible-playbook" --version | head -n1
"$PREFIX/bin/ansible-doc" -t connection community.docker.nsenter >/dev/null \
  || { echo "install-ansible: community.docker.nsenter connection missing" >&2; exit 1; }
echo "install-ansible: done: $PREFIX/bin/ansible-playbook, $PREFIX/bin/ansible-lint"
