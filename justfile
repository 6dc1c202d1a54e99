# Convenience recipes; the README's commands do not need just.

default:
    @just --list

fmt:
    cargo fmt --all

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

test:
    cargo test --workspace --release

ci:
    bash .ci/run

# one scenario, e.g. `just s s03`
s NAME:
    cargo build --release --bins
    cargo test --release -p lanspread-scenarios {{NAME}}

# Issue 18's full-size busy-server runs (as root; minutes each): SHAPE is CLIENTS:MIB:RATE.
busy-full SHAPE="8:256:50mbit":
    cargo build --release --bins
    LANSPREAD_BUSY={{SHAPE}} cargo test --release -p lanspread-scenarios --test scenarios busy:: -- --nocapture

lab DIR="/tmp/lanspread-lab":
    cargo run --release -p lanspread-fixtures -- lab {{DIR}}

run-alpha DIR="/tmp/lanspread-lab":
    cargo run --release --bin lanspreadd -- --games {{DIR}}/fixture-alpha --state {{DIR}}/alpha-state --listen 127.0.0.1:41741 --socket {{DIR}}/alpha.sock --no-mdns --events -

run-bravo DIR="/tmp/lanspread-lab":
    cargo run --release --bin lanspreadd -- --games {{DIR}}/fixture-bravo --state {{DIR}}/bravo-state --listen 127.0.0.1:41742 --socket {{DIR}}/bravo.sock --no-mdns --events -

# Fuzz one target (wire_frame, control_json, catalog_text, rar5_roundtrip) for RUNS executions.
fuzz TARGET RUNS="1000000":
    cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer -O {{TARGET}} -- -runs={{RUNS}}

# Shrink a target's corpus before committing it.
fuzz-cmin TARGET:
    cargo +nightly fuzz cmin --fuzz-dir fuzz/libfuzzer -O {{TARGET}}

# Install the binaries, the unit, completions and man pages (as root).
# The Debian package in target/debian/ (needs `cargo install cargo-deb`).
deb:
    daemon/debian/build

install:
    cargo install --path daemon --root /usr/local
    id lanspread >/dev/null 2>&1 || useradd --system --home-dir /var/lib/lanspread --shell /usr/sbin/nologin lanspread
    install -m 0644 daemon/systemd/lanspreadd.service /etc/systemd/system/
    mkdir -p /etc/bash_completion.d /usr/local/share/man/man1
    /usr/local/bin/lanspread completions bash > /etc/bash_completion.d/lanspread
    /usr/local/bin/lanspread man > /usr/local/share/man/man1/lanspread.1
    /usr/local/bin/lanspread man --daemon > /usr/local/share/man/man1/lanspreadd.1
    systemctl daemon-reload
    @echo "now: systemctl enable --now lanspreadd"

# The many-core scaling table on a lent device machine: pack here, then run there.
device-pack:
    cargo build --release --bins
    bash bench/device.sh pack

# Issue 21's swarm lab table (as root; minutes per run): N = 4, 8, 16, together and staggered,
# 1 GiB over 100 Mbit/s links; JSON and SVG charts in bench/results/swarm/. Or give shapes:
# `just swarm-lab 16:1024:100 8:1024:100:5000`.
swarm-lab *SHAPES:
    cargo build --release --bins
    ./target/release/swarm-lab --out bench/results/swarm {{SHAPES}}
