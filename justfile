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
