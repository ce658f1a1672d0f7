# safeckpt task runner (https://github.com/casey/just). `just --list` shows every recipe.

# The checks CI runs, plus lints and docs.
default: fmt clippy test doc

# Format the workspace.
fmt:
    cargo fmt --all

# Lints, warnings as errors.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# The test suite (the README's test command).
test:
    cargo test --workspace

# API docs, warnings as errors.
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Re-bless golden outputs after an intended change.
bless:
    SAFECKPT_BLESS=1 cargo test --workspace

# What CI runs.
ci:
    .ci/run

# Benchmarks against the peers (see docs/benchmarks.md). Needs ~6 GiB free in $TMPDIR.
bench *ARGS:
    cargo run --release -p safeckpt-benches -- {{ARGS}}

# Fuzz one target for SECONDS (needs `cargo install cargo-fuzz` and the nightly toolchain).
fuzz TARGET="header" SECONDS="60":
    cd fuzz && mkdir -p corpus/{{TARGET}} && cargo +nightly fuzz run {{TARGET}} corpus/{{TARGET}} $(test -d seeds/{{TARGET}} && echo seeds/{{TARGET}}) -- -max_total_time={{SECONDS}} -rss_limit_mb=2048

# Build every fuzz target (what CI-like checks need at least).
fuzz-build:
    cd fuzz && cargo +nightly fuzz build

# Fuzz every target in turn for SECONDS each (the campaign recorded in docs/reliability.md).
fuzz-all SECONDS="600":
    cd fuzz && for t in header reader index pickle torch_archive; do mkdir -p corpus/$t; cargo +nightly fuzz run $t corpus/$t $(test -d seeds/$t && echo seeds/$t) -- -max_total_time={{SECONDS}} -rss_limit_mb=2048 -print_final_stats=1; done

# The long reliability campaigns (docs/reliability.md): SIGKILL, faults, corruption, concurrency,
# syscall order, malicious pickles, header bombs. Prints the results table.
reliability KILLS="500" FLIPS="100000":
    cargo run --release -p safeckpt-reliability -- report --kills {{KILLS}} --flips {{FLIPS}}
