#!/usr/bin/env bash
# GPU measurements and checks for docs/performance.md, in one call of at most 8 minutes: the
# CubeCL kernel tests and the flex-vs-CUDA equivalence tests on CUDA, then config A (batch 64, 8 cells, C=16) first and second order,
# and the derived-network training step (DARTS_V2, C=36, 20 cells, batch 96, auxiliary head, drop
# path, cutout), ours on `--device cuda` (and the search on `--device wgpu`), PyTorch on CUDA in
# the same run, with the GPU's peak memory use sampled by nvidia-smi during each run and kernel
# launches counted by our binaries.
# Every run writes its own files under $OUT as it goes, so a timeout keeps what finished.
#
# The GPU machine has no Rust toolchain and no network, so the binaries are built elsewhere
# (same x86-64 target) and carried:
#
#   export CUDARC_CUDA_VERSION=13000
#   cargo build --release --example bench_step --example bench_train_step --features cuda,wgpu
#   cargo test --release --no-run --features cuda,wgpu --test it   # prints the binary's path
#   mkdir -p .gpu && strip -o .gpu/bench_step target/release/examples/bench_step
#   strip -o .gpu/bench_train_step target/release/examples/bench_train_step
#   strip -o .gpu/it target/release/deps/it-<hash>
#   cp ../shared/bench/torch_darts_step.py .gpu/
#
# (CUDARC_CUDA_VERSION must match the machine's driver; without nvcc at build time cudarc falls
# back to its newest CUDA version.) For wgpu, a Vulkan loader: `apt-get download libvulkan1`
# into .gl/ (unpacked here when present). Results go to $OUT (default /tmp/darts-gpu).
#
# Dry run on a machine without a GPU (checks the script and the CPU parts):
#   DRY=1 OUT=/tmp/gpu-dry bash benches/gpu_run.sh
set -u
OUT=${OUT:-/tmp/darts-gpu}
mkdir -p "$OUT"
BIN=${BIN:-.gpu/bench_step}
TRAIN_BIN=${TRAIN_BIN:-.gpu/bench_train_step}
export DARTS_TORCH_SCRIPT=${DARTS_TORCH_SCRIPT:-.gpu/torch_darts_step.py}
PY=${PY:-python3}
A="--batch 64 --layers 8 --channels 16"

if [ -n "${DRY:-}" ]; then
    # No GPU: stand-ins for nvidia-smi and the device runs, so the plumbing can be checked.
    nvidia-smi() { echo 0; }
    RUNS=${RUNS:-"tests_cuda ours_cpu_smoke ours_cpu_train_smoke"}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

# NVRTC (Burn's CUDA backend compiles its kernels at run time) and the Vulkan loader.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
nvrtc=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null | head -1)
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
echo "nvrtc: ${nvrtc:-not found}"
if ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
echo "vulkan icd: ${VK_DRIVER_FILES:-none}; loader: $(ldconfig -p | grep -c libvulkan) entries"

# run NAME TIMEOUT CMD...: output to $OUT/NAME.log, peak GPU memory (MiB, whole device, minus
# what was in use before) appended as a JSON line.
run() {
    local name=$1 limit=$2
    shift 2
    local base
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$OUT/$name.mem" &
    local sampler=$!
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    kill $sampler 2>/dev/null
    wait $sampler 2>/dev/null
    local peak
    peak=$(sort -n "$OUT/$name.mem" | tail -1)
    echo "{\"run\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"gpu_mem_used_peak_mb\": ${peak:-0}, \"gpu_mem_before_mb\": ${base:-0}}" >>"$OUT/$name.log"
    echo "--- $name (rc $rc, $((SECONDS - t0)) s)"
    grep '^{' "$OUT/$name.log"
    [ $rc -ne 0 ] && grep -v '^{' "$OUT/$name.log" | tail -12
    return 0
}

# RUNS picks and orders the runs; LIMIT_<name> overrides a run's time limit in seconds.
# Default limits add up to 480 s; the runs stop well before them when things go as expected.
RUNS=${RUNS:-"tests_cuda torch_cuda_1st ours_cuda_1st torch_cuda_train ours_cuda_train torch_cuda_2nd ours_cuda_2nd ours_wgpu_1st"}
TESTS=${TESTS:-.gpu/it}
for r in $RUNS; do
    lim_var="LIMIT_$r"
    case $r in
    torch_cuda_1st) run $r ${!lim_var:-40} $PY benches/torch_cuda_step.py -- --order 1 $A --steps 10 --warmup 2 --json ;;
    torch_cuda_2nd) run $r ${!lim_var:-40} $PY benches/torch_cuda_step.py -- --order 2 $A --steps 5 --warmup 1 --json ;;
    # The derived network's training step (its own script: the network is NetworkCIFAR).
    torch_cuda_train) run $r ${!lim_var:-30} $PY benches/torch_train_step.py --device cuda --steps 10 --warmup 3 --json ;;
    # On CUDA: the kernel tests (tests/it/gpu_kernels.rs: depthwise, 1x1, pooling, BatchNorm, the
    # mixed op's weighted sum against their definitions and Burn's ops) and the flex-vs-CUDA equivalence checks (supernet
    # fwd+bwd, both architect orders, strided 1x1); `cuda::` selects both modules.
    tests_cuda) run $r ${!lim_var:-80} "$TESTS" --ignored cuda:: --test-threads 1 ;;
    ours_cuda_1st) run $r ${!lim_var:-100} "$BIN" --device cuda --order 1 $A --steps 2 --warmup 1 --fwd-steps 2 --json --count-launches /tmp/launches_cuda_1st.log ;;
    ours_cuda_2nd) run $r ${!lim_var:-80} "$BIN" --device cuda --order 2 $A --steps 2 --warmup 1 --fwd-steps 1 --json ;;
    ours_cuda_train) run $r ${!lim_var:-80} "$TRAIN_BIN" --device cuda --steps 3 --warmup 2 --json --count-launches /tmp/launches_cuda_train.log ;;
    ours_wgpu_1st) run $r ${!lim_var:-30} "$BIN" --device wgpu --order 1 $A --steps 2 --warmup 1 --fwd-steps 2 --json ;;
    # Dry run only: the same binaries on the CPU, tiny configs.
    ours_cpu_smoke) run $r ${!lim_var:-120} "$BIN" --device cpu --order 1 --batch 2 --layers 3 --channels 4 --steps 1 --warmup 0 --fwd-steps 1 --json ;;
    ours_cpu_train_smoke) run $r ${!lim_var:-120} "$TRAIN_BIN" --device cpu --batch 4 --layers 3 --channels 4 --steps 1 --warmup 0 --json ;;
    *) echo "unknown run $r" ;;
    esac
done
