#!/usr/bin/env bash
# Builds the berthd container image as an OCI image layout, without a Docker
# engine (umoci + GNU tar + jq).
#
#   daemon/deploy/image/build.sh --amd64 target/x86_64-unknown-linux-gnu/release/berthd \
#                                --arm64 target/aarch64-unknown-linux-gnu/release/berthd \
#                                --out build/berthd-oci
#
# One binary gives a single-platform image; --amd64 and --arm64 together give a
# multi-platform image index. Either way the layout's tag (default: berthd's
# version) names what to push:
#
#   skopeo copy --all oci:build/berthd-oci:0.1.0 docker://registry.example.com/berth/berthd:0.1.0
#
# Each platform is also tagged <tag>-<arch>.
#
# The image is distroless-style: one layer holding berthd at
# /usr/local/bin/berthd, a CA bundle at /etc/ssl/certs/ca-certificates.crt
# (berthd's outbound TLS uses the system roots), /etc/passwd and /etc/group
# with the non-root user berth (65532), /etc/nsswitch.conf, /tmp, and
# /var/lib/berth (the data directory, owned by 65532). The image runs as
# 65532:65532; Entrypoint is berthd, Cmd `serve`; the environment sets
# XDG_DATA_HOME=/var/lib (so the default data directory is /var/lib/berth)
# and tunes glibc's allocator for a small memory limit (MALLOC_*).
#
# Release images should be built from static binaries (see docs/deploy.md).
# A dynamically linked binary of this machine's architecture (a plain
# `cargo build`) is accepted for development: the shared libraries `ldd` names
# are copied in beside it, with a warning. A dynamic binary of another
# architecture is refused.
#
# Options:
#   --amd64 PATH / --arm64 PATH   berthd for linux/amd64 and linux/arm64 (at least one)
#   --out DIR                     OCI layout to create (default: ./berthd-oci); must not exist or be empty
#   --tag TAG                     tag in the layout (default: the version)
#   --version VERSION             the version labelled (default: workspace Cargo.toml; checked against
#                                 `berthd --version` when the binary runs here)
#   --source URL                  org.opencontainers.image.source (default: the git remote `origin`)
#   --revision REV                org.opencontainers.image.revision (default: git HEAD)
#   --ca-bundle FILE              PEM CA bundle to ship (default: /etc/ssl/certs/ca-certificates.crt)
#   --no-strip                    keep DWARF debug info (by default it is removed; symbols stay)
#
# Timestamps (file mtimes, image `created`) come from SOURCE_DATE_EPOCH, else the
# last git commit, so rebuilding the same commit gives the same layer digest.
# Needs: umoci, GNU tar, jq, sha256sum, od; ldd for dynamic binaries; strip
# (or <triple>-strip / llvm-strip) for stripping.
set -euo pipefail
umask 022 # the staged files' modes go into the image

prog=$(basename "$0")
die() { echo "$prog: $*" >&2; exit 1; }
note() { echo "$prog: $*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)

declare -A bins=()
out=./berthd-oci
tag="" version="" source_url="" revision="" ca_bundle=/etc/ssl/certs/ca-certificates.crt strip=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --amd64|--arm64)
      [[ $# -ge 2 ]] || die "$1 needs a path"
      bins[${1#--}]=$2; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --source) source_url=${2:?--source needs a URL}; shift 2 ;;
    --revision) revision=${2:?--revision needs a value}; shift 2 ;;
    --ca-bundle) ca_bundle=${2:?--ca-bundle needs a file}; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ ${#bins[@]} -gt 0 ]] || die "give berthd for at least one platform: --amd64 PATH and/or --arm64 PATH"

for tool in umoci tar jq sha256sum od; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (Debian: apt-get install umoci tar jq coreutils)"
done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is required"

# --- ELF inspection (no binutils needed) -------------------------------------

# Reads an unsigned little-endian integer of $3 bytes at offset $2 of file $1.
le() { od -An -t "u$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' '; }

# Prints the OCI architecture of an ELF executable (amd64, arm64), or fails.
elf_arch() {
  local f=$1 magic class machine
  magic=$(od -An -c -N 4 "$f" | tr -d ' ')
  [[ $magic == '177ELF' ]] || return 1
  class=$(le "$f" 4 1)
  [[ $class == 2 ]] || return 1 # 64-bit
  machine=$(le "$f" 18 2)
  case $machine in
    62) echo amd64 ;;
    183) echo arm64 ;;
    *) echo "elf-machine-$machine" ;;
  esac
}

# True when the ELF file has a PT_INTERP program header (dynamically linked).
elf_dynamic() {
  local f=$1 phoff phentsize phnum i type
  phoff=$(le "$f" 32 8)
  phentsize=$(le "$f" 54 2)
  phnum=$(le "$f" 56 2)
  for ((i = 0; i < phnum; i++)); do
    type=$(le "$f" $((phoff + i * phentsize)) 4)
    [[ $type == 3 ]] && return 0
  done
  return 1
}

host_arch() {
  case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64|arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

strip_tool() { # the strip that understands $1's architecture, if any
  local arch=$1 cand
  local -a cands=()
  case $arch in
    amd64) cands=(x86_64-linux-gnu-strip) ;;
    arm64) cands=(aarch64-linux-gnu-strip) ;;
  esac
  [[ $arch == "$(host_arch)" ]] && cands+=(strip)
  cands+=(llvm-strip)
  for cand in "${cands[@]}"; do
    command -v "$cand" >/dev/null 2>&1 && { echo "$cand"; return 0; }
  done
  return 1
}

# --- what goes into the image ------------------------------------------------

if [[ -z $version ]]; then
  [[ -f $repo/Cargo.toml ]] || die "cannot find the workspace Cargo.toml; pass --version"
  version=$(awk '/^\[workspace\.package\]/ { s = 1; next } /^\[/ { s = 0 } s && /^version *=/ { gsub(/.*= *"|".*/, ""); print; exit }' "$repo/Cargo.toml")
  [[ -n $version ]] || die "no version in [workspace.package] of $repo/Cargo.toml; pass --version"
fi
tag=${tag:-$version}
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag: $tag"

if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  [[ -n $revision ]] || revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)
  if [[ -z $source_url ]]; then
    source_url=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
    # git@host:owner/repo.git -> https://host/owner/repo
    if [[ $source_url =~ ^git@([^:]+):(.+)$ ]]; then source_url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"; fi
    source_url=${source_url%.git}
    [[ $source_url == http* ]] || source_url=""
  fi
  epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || true)}
fi
[[ -n $source_url ]] || note "warning: no --source URL and no https git remote: org.opencontainers.image.source is not set"
epoch=${epoch:-${SOURCE_DATE_EPOCH:-$(date +%s)}}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

[[ -f $ca_bundle ]] || die "CA bundle $ca_bundle not found (Debian: apt-get install ca-certificates), or pass --ca-bundle"
grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_bundle" || die "$ca_bundle holds no PEM certificate"

for arch in "${!bins[@]}"; do
  bin=${bins[$arch]}
  [[ -f $bin && -x $bin ]] || die "--$arch $bin: not an executable file"
  got=$(elf_arch "$bin") || die "--$arch $bin: not a 64-bit ELF executable"
  [[ $got == "$arch" ]] || die "--$arch $bin: the binary is for $got"
  if [[ $arch == "$(host_arch)" ]]; then
    said=$("$bin" --version 2>/dev/null) || die "--$arch $bin: \`berthd --version\` failed"
    [[ $said == "berthd $version" ]] || die "--$arch $bin says \"$said\", expected \"berthd $version\" (stale build, or pass --version)"
  fi
  if elf_dynamic "$bin"; then
    [[ $arch == "$(host_arch)" ]] ||
      die "--$arch $bin is dynamically linked: binaries for another architecture must be static (see docs/deploy.md)"
    command -v ldd >/dev/null 2>&1 || die "ldd is required to package the dynamically linked $bin"
    note "warning: $bin is dynamically linked; copying its shared libraries from this machine (fine for tests; release images should use a static binary)"
  fi
done

if [[ -e $out ]] && [[ -n $(ls -A "$out" 2>/dev/null) ]]; then
  die "$out exists and is not empty"
fi
[[ -d $out ]] && rmdir "$out" # umoci init wants to create it
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Writes the root filesystem for $1 (arch) from binary $2 into $3.
stage_rootfs() {
  local arch=$1 bin=$2 root=$3 lib target tool
  mkdir -p "$root"/{usr/local/bin,etc/ssl/certs,tmp,home/berth,var/lib/berth}
  cp "$bin" "$root/usr/local/bin/berthd"
  chmod 0755 "$root/usr/local/bin/berthd"
  if [[ $strip == 1 ]]; then
    if tool=$(strip_tool "$arch"); then
      "$tool" --strip-debug "$root/usr/local/bin/berthd" || die "$tool --strip-debug failed on $bin"
    else
      note "warning: no strip for $arch found; the binary keeps its debug info"
    fi
  fi
  if elf_dynamic "$bin"; then
    # `ldd` lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    while read -r lib; do
      [[ -n $lib ]] || continue
      target="$root$lib"
      mkdir -p "$(dirname "$target")"
      cp -L "$lib" "$target"
      chmod 0755 "$target"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
  fi
  cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt"
  cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
berth:x:65532:65532:berth:/home/berth:/sbin/nologin
PASSWD
  cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
berth:x:65532:
GROUP
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/home/berth"
  chmod 0750 "$root/var/lib/berth"
}

# Packs $1 (rootfs) into the uncompressed tar $2: everything root-owned except
# berth's home and data directory. Sorted, fixed mtimes: reproducible.
pack_layer() {
  local root=$1 tarball=$2
  # shellcheck disable=SC2054 # the commas belong to --pax-option
  local -a common=(--sort=name --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
    --mtime="@$epoch" --numeric-owner --no-recursion)
  local owned='^(home/berth|var/lib/berth)$'
  (cd "$root" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort) >"$work/all"
  grep -Ev "$owned" "$work/all" >"$work/root-owned" || true
  grep -E "$owned" "$work/all" >"$work/berth-owned" || true
  tar -C "$root" "${common[@]}" --owner=0 --group=0 -cf "$tarball" -T "$work/root-owned"
  tar -C "$root" "${common[@]}" --owner=65532 --group=65532 -rf "$tarball" -T "$work/berth-owned"
}

# Copies file $1 into the layout's blobs; prints its digest.
write_blob() {
  local digest
  digest=sha256:$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$out/blobs/sha256/${digest#sha256:}"
  echo "$digest"
}

# Points ref name $1 in index.json at the blob $3 (media type $2, size $4).
set_ref() {
  jq --arg ref "$1" --arg mt "$2" --arg d "$3" --argjson s "$4" \
    '.mediaType = "application/vnd.oci.image.index.v1+json"
     | .manifests |= (map(select(.annotations["org.opencontainers.image.ref.name"] != $ref))
       + [{mediaType: $mt, digest: $d, size: $s, annotations: {"org.opencontainers.image.ref.name": $ref}}])' \
    "$out/index.json" >"$work/index.json"
  mv "$work/index.json" "$out/index.json"
}

labels=(
  "org.opencontainers.image.title=berthd"
  "org.opencontainers.image.description=Berth: a per-node OCI registry for small Kubernetes and homelab clusters"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.created=$created"
)
[[ -n $source_url ]] && labels+=("org.opencontainers.image.source=$source_url")
[[ -n $revision ]] && labels+=("org.opencontainers.image.revision=$revision")

umoci init --layout "$out"
declare -A manifest_digest=() manifest_size=()
for arch in $(printf '%s\n' "${!bins[@]}" | sort); do
  bin=${bins[$arch]}
  note "building linux/$arch from $bin"
  root="$work/rootfs-$arch"
  stage_rootfs "$arch" "$bin" "$root"
  pack_layer "$root" "$work/layer-$arch.tar"
  ref="$out:$tag-$arch"
  umoci new --image "$ref"
  umoci raw add-layer --image "$ref" --history.created "$created" \
    --history.created_by "daemon/deploy/image/build.sh (berthd $version, linux/$arch)" "$work/layer-$arch.tar"
  config_args=(
    --os linux --architecture "$arch" --created "$created" --author "Berth"
    --config.entrypoint /usr/local/bin/berthd --config.cmd serve
    --config.user 65532:65532 --config.workingdir /
    --config.exposedports 5000/tcp
    --config.env PATH=/usr/local/bin:/usr/bin:/bin
    # Non-root default data directory: $XDG_DATA_HOME/berth = /var/lib/berth.
    --config.env XDG_DATA_HOME=/var/lib
    # glibc's allocator: two arenas instead of eight per core, and buffers of
    # 128 KiB and more (berthd streams in 256 KiB-1 MiB chunks) returned to
    # the system when freed. Measured: the peak of six concurrent cold layer
    # fetches drops from 49-68 MiB to 37-42 MiB (docs/deploy.md). Ignored by
    # other C libraries.
    --config.env MALLOC_ARENA_MAX=2
    --config.env MALLOC_MMAP_THRESHOLD_=131072
    --config.stopsignal SIGTERM
    --history.created "$created" --history.created_by "daemon/deploy/image/build.sh: config"
  )
  for l in "${labels[@]}"; do
    config_args+=(--config.label "$l" --manifest.annotation "$l")
  done
  umoci config --image "$ref" "${config_args[@]}"
  # umoci leaves out the manifest's mediaType, which the image spec says
  # SHOULD be there and some clients need: add it (a new blob and digest).
  old_digest=$(jq -r --arg ref "$tag-$arch" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $ref) | .digest' "$out/index.json")
  jq -c '{schemaVersion: .schemaVersion, mediaType: "application/vnd.oci.image.manifest.v1+json"} + .' \
    "$out/blobs/sha256/${old_digest#sha256:}" | tr -d '\n' >"$work/manifest-$arch.json"
  manifest_digest[$arch]=$(write_blob "$work/manifest-$arch.json")
  manifest_size[$arch]=$(stat -c %s "$work/manifest-$arch.json")
  set_ref "$tag-$arch" application/vnd.oci.image.manifest.v1+json "${manifest_digest[$arch]}" "${manifest_size[$arch]}"
done

if [[ ${#bins[@]} -eq 1 ]]; then
  arch=${!bins[*]}
  set_ref "$tag" application/vnd.oci.image.manifest.v1+json "${manifest_digest[$arch]}" "${manifest_size[$arch]}"
else
  # A multi-platform image index; umoci has no command for one, so write the
  # blob and the index.json entry directly.
  entries=()
  for arch in amd64 arm64; do
    platform=$(jq -nc --arg a "$arch" '{architecture: $a, os: "linux"} + (if $a == "arm64" then {variant: "v8"} else {} end)')
    entries+=("$(jq -nc --arg d "${manifest_digest[$arch]}" --argjson s "${manifest_size[$arch]}" --argjson p "$platform" \
      '{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s, platform: $p}')")
  done
  annotations=$(printf '%s\n' "${labels[@]}" | jq -Rn '[inputs | capture("^(?<key>[^=]+)=(?<value>.*)$")] | from_entries')
  printf '%s\n' "${entries[@]}" | jq -cs --argjson ann "$annotations" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: ., annotations: $ann}' \
    | tr -d '\n' >"$work/index-blob.json"
  set_ref "$tag" application/vnd.oci.image.index.v1+json "$(write_blob "$work/index-blob.json")" \
    "$(stat -c %s "$work/index-blob.json")"
fi
umoci gc --layout "$out"

what="linux/$(printf '%s\n' "${!bins[@]}" | sort | paste -sd, - | sed 's|,|, linux/|g')"
note "done: oci:$out:$tag ($what; berthd $version)"
echo "oci:$out:$tag"
