# Sourced by run.sh and lazy.sh: builds berthd and berth-snapshotter as they
# ship (static, release profile, for this machine's architecture) and points
# the benchmarks at them, so what is measured is what a node runs.
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$host" -p berthd -p berth-snapshotter
export BERTHD_BIN=$PWD/target/$host/release/berthd
export BERTH_SNAPSHOTTER_BIN=$PWD/target/$host/release/berth-snapshotter
