#!/usr/bin/env bash
# The many-core measurements of the throughput issue, as one short script for a lent
# device machine (16 cores; no network there, so no cargo: it runs binaries built here).
#
#   here:   cargo build --release --bins && bash bench/device.sh pack
#           (strips lanspreadd, lanspread and compare into .device/bin, git-ignored, ~24 MiB)
#   device: run tool with carry [".device"], command `bash bench/device.sh run`
#           (≈ 5–7 min: the scaling table 1/2/4/8 transfer threads, then the compare
#           tool at the daemons' default; tables and JSON land in $OUT)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.device/bin
case "${1:-}" in
pack)
    mkdir -p "$bin"
    for b in lanspreadd lanspread compare; do
        strip -o "$bin/$b" "target/release/$b"
    done
    du -sh "$bin"
    ;;
run)
    out="${OUT:-/tmp/lanspread-device}"
    mkdir -p "$out"
    { uname -r; nproc; lscpu | sed -n '1,20p'; free -g; df -h /dev/shm .; } > "$out/machine.txt" 2>&1 || true
    head -2 "$out/machine.txt"
    export LANSPREAD_BENCH_TMPFS="${LANSPREAD_BENCH_TMPFS:-/dev/shm}"
    bytes="${LANSPREAD_DEVICE_BYTES:-2147483648}"
    # A 64 MiB probe first: a machine without io_uring (or UDP on loopback) fails here in
    # seconds instead of spending the whole lease on timeouts.
    if ! timeout 60 "$bin/compare" --bytes 67108864 --samples 1 --only s37 \
        > "$out/probe.txt" 2> "$out/probe.log"; then
        echo "probe failed:"; tail -30 "$out/probe.log"; exit 1
    fi
    timeout 300 "$bin/compare" --bytes "$bytes" --samples 3 --scaling 1,2,4,8 \
        > "$out/scaling.txt" 2> "$out/scaling.log" || echo "scaling: exit $?"
    timeout 170 "$bin/compare" --bytes "$bytes" --samples 3 --only s37 \
        > "$out/compare.txt" 2> "$out/compare.log" || echo "compare: exit $?"
    cat "$out/scaling.txt" "$out/compare.txt"
    ;;
*)
    echo "usage: bench/device.sh pack|run" >&2
    exit 2
    ;;
esac
