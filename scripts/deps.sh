#!/usr/bin/env bash
# System packages the tests and the all-features build need, installed when missing
# (Debian/Ubuntu, needs root or sudo):
# - a Vulkan loader and Mesa's software Vulkan driver (lavapipe) for the wgpu tests on a
#   machine without a GPU;
# - Open MPI (library, headers, mpirun) and libclang (the `mpi` crate generates its bindings)
#   for the feature `mpi` and the multi-process tests.
set -euo pipefail
missing=()
# The linker cache, read once: `ldconfig -p | grep -q` under pipefail fails whenever grep stops
# reading before ldconfig has written everything (SIGPIPE), which reported present libraries
# as missing.
libs=$(ldconfig -p 2>/dev/null || true)
if ! grep -q 'libvulkan\.so\.1' <<<"$libs" || ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    missing+=(mesa-vulkan-drivers libvulkan1)
fi
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
    missing+=(libopenmpi-dev openmpi-bin)
fi
# libclang itself (bindgen loads libclang.so / libclang-<version>.so), not libclang-cpp, which
# images often carry without it.
if ! grep -qE 'libclang(-[0-9.]+)?\.so' <<<"$libs"; then
    missing+=(libclang-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
