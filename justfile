# Common tasks. `just` is on PyPI as rust-just: `pip install rust-just`.

# Run the demo against the built-in emulator; fills ./lake.
demo:
    cargo run --release -- run --emulate pipelines/demo.toml

# The test suite (what CI runs).
test:
    cargo test --workspace

# Formatting and lints as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Check every pipeline file offline.
validate:
    cargo run -- validate --emulate pipelines/*.toml

# chatlake next to the DuckDB and Polars anchors on the reference jobs, verified (see
# BENCHMARKS.md). Default 1M rows, 1 warm-up + 3 runs each; e.g. `just bench --quick`,
# `just bench --rows 5000000 --jobs lineworks`, `just bench --bin target/debug/chatlake`.
bench *ARGS:
    python3 bench/run.py {{ARGS}}

# Everything CI does.
ci:
    bash .ci/run
