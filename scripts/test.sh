#!/usr/bin/env bash
# Run the whole test suite: every crate, doc-tests, and the flex-vs-wgpu equivalence test.
# The wgpu test needs a Vulkan driver; on a machine without a GPU, Mesa's software driver
# (lavapipe) is installed here when missing (Debian/Ubuntu, needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    echo "installing a Vulkan loader and Mesa's software Vulkan driver for the wgpu tests"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

# wgpu's Vulkan backend wants a runtime dir; harmless elsewhere.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

# Library unit tests and the integration tests, then the doc-tests (they include docs/guide.md).
# The examples are not rebuilt here for every backend (minutes each); CI's clippy pass checks
# that they compile with all features, and tests/it/nb201.rs compiles and runs one of them.
cargo test --workspace --features wgpu --lib --tests "$@"
cargo test --workspace --features wgpu --doc "$@"
