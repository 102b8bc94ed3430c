#!/usr/bin/env bash
# Lazy container start benchmark (issue 9): CRI PullImage + first output,
# berth-snapshotter lazy vs normal, S3 (SeaweedFS) behind 100 Mbit/s with 0, 20 and 50 ms added RTT.
# Usage: bash tests/bench/lazy.sh   (root; about 12-15 minutes on 2 cores)
#   BENCH_RUNS (default 3), BENCH_LINKS (default 100/0,100/20,100/50: Mbit/s / added RTT ms), BENCH_BIG_MIB
#   (default 200), BENCH_FILL_RATE, BENCH_DEBIAN_TAR, BENCH_IMAGES (e.g. python: only that image) tune it
#   (tests/benches/lazy_start.rs).
# Rewrites the "Lazy container start" section at the end of
# docs/benchmarks.md (everything from its heading on), keeping the
# hand-written notes between <!-- lazy-notes:begin --> and
# <!-- lazy-notes:end -->. Modes:
#   --no-docs   run the benchmark only (target/bench/lazy.md)
#   --splice    only put target/bench/lazy.md into docs/benchmarks.md;
#               LAZY_NOTES_FROM names the file to take the notes from
#               (default: docs/benchmarks.md itself)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${BENCH_OUT:-$PWD/target/bench}
export BENCH_OUT=$out
mode=${1:-}

splice() {
  local doc=docs/benchmarks.md notes_from=${LAZY_NOTES_FROM:-docs/benchmarks.md} tmp
  tmp=$(mktemp)
  {
    sed '/^## Lazy container start/,$d' "$doc"
    echo "## Lazy container start"
    echo
    cat "$out/lazy.md"
    echo
    sed -n '/^<!-- lazy-notes:begin -->/,/^<!-- lazy-notes:end -->/p' "$notes_from"
  } > "$tmp"
  mv "$tmp" "$doc"
  echo "wrote the lazy container start section of $doc"
}

if [[ $mode == --splice ]]; then
  splice
  exit 0
fi

[[ $(id -u) == 0 ]] || { echo "lazy.sh: needs root (network namespace, tc, containerd, FUSE)" >&2; exit 1; }

# What a killed run leaves: the namespace (with SeaweedFS in it), FUSE and
# overlay mounts under the benchmark's own temp dir, mount-layer processes.
cleanup() {
  local pid m
  for pid in $(ip netns pids berth-lazybench 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del berth-lazybench 2>/dev/null || true
  ip link del blb-host 2>/dev/null || true
  if [[ -d $out/lazy-tmp ]]; then
    awk -v p="$out/lazy-tmp/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$out/lazy-tmp"
  fi
}
cleanup
trap cleanup EXIT

bash tests/scripts/install-deps.sh
bash tests/scripts/install-seaweedfs.sh
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v tc >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

source tests/bench/shipped.sh
mkdir -p "$out"
cargo bench --locked -p berth-tests --bench lazy_start

if [[ $mode != --no-docs ]]; then
  splice
fi
