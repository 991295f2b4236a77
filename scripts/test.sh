#!/usr/bin/env bash
# Run the whole test suite: every crate, doc-tests, the flex-vs-wgpu equivalence test and the
# multi-process data-parallel tests. What they need from the system (a Vulkan driver, Open MPI)
# is installed by scripts/deps.sh when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need (Vulkan for wgpu, Open MPI for the multi-process tests).
bash scripts/deps.sh
# Open MPI refuses to start as root unless told (containers, CI).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# wgpu's Vulkan backend wants a runtime dir; harmless elsewhere.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# Library unit tests and the integration tests, then the doc-tests (they include docs/guide.md).
# The examples are not rebuilt here for every backend (minutes each); CI's clippy pass checks
# that they compile with all features, and tests/it/nb201.rs compiles and runs one of them.
cargo test --workspace --features wgpu,mpi --lib --tests "$@"
cargo test --workspace --features wgpu,mpi --doc "$@"
