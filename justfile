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

# Everything CI does.
ci:
    bash .ci/run
