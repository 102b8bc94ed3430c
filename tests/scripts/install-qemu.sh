#!/usr/bin/env bash
# Installs what the arm64 tests (tests/tests/arm64.rs, the arm64 image entry
# in tests/tests/deploy.rs) need to run arm64 programs on this amd64 machine:
#
#   qemu-user-static             qemu-aarch64 (Debian 12; from Debian 13 the package is
#                                qemu-user, whose binaries are static too)
#   binutils-aarch64-linux-gnu   aarch64-linux-gnu-strip, which build.sh strips the arm64
#                                berthd with
#   arch-test                    what mmdebstrap checks a foreign architecture runs with
#
# and registers qemu-aarch64 with the kernel's binfmt_misc (mounting it first
# when nothing did: on a host without systemd, or in a VM whose init is not
# systemd), with the F flag, so that an arm64 program runs inside a chroot or
# a mount namespace too — mmdebstrap needs that to build an arm64 root, and
# the tests to run its python3 and the arm64 berthd. Idempotent.
set -euo pipefail

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-qemu: need root or sudo" >&2; exit 1; }
  SUDO=(sudo)
fi

missing=()
qemu_pkg=qemu-user-static
if ! apt-cache show qemu-user-static >/dev/null 2>&1; then
  qemu_pkg=qemu-user
fi
[[ -x /usr/bin/qemu-aarch64-static || -x /usr/bin/qemu-aarch64 ]] || missing+=("$qemu_pkg")
command -v aarch64-linux-gnu-strip >/dev/null 2>&1 || missing+=(binutils-aarch64-linux-gnu)
command -v arch-test >/dev/null 2>&1 || missing+=(arch-test)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install-qemu: installing ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi

binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/register ]]; then
  "${SUDO[@]}" mount -t binfmt_misc binfmt_misc "$binfmt"
fi
if [[ ! -e $binfmt/qemu-aarch64 ]]; then
  conf=$(ls /usr/lib/binfmt.d/qemu-aarch64.conf 2>/dev/null || true)
  [[ -n $conf ]] || { echo "install-qemu: no /usr/lib/binfmt.d/qemu-aarch64.conf from $qemu_pkg" >&2; exit 1; }
  grep -v '^#' "$conf" | "${SUDO[@]}" tee "$binfmt/register" >/dev/null
fi
grep -q '^flags: .*F' "$binfmt/qemu-aarch64" || {
  echo "install-qemu: qemu-aarch64 is registered without the F flag; arm64 programs will not run in a chroot" >&2
  exit 1
}
