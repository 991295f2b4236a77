#!/usr/bin/env bash
# Run our bench binary and the PyTorch baseline alternately on the same configuration, on the
# same (idle!) machine, and print both JSON lines and the ratios ours / PyTorch.
#
#   PY=/path/to/venv/bin/python benches/compare_pytorch.sh --order 1 --batch 16 --layers 5 --channels 8
#
# PY defaults to python3; the PyTorch script is ../shared/bench/torch_darts_step.py (override
# with TORCH_SCRIPT). Extra flags are passed to both programs. ROUNDS (default 1) alternations,
# STEPS (default 3) timed steps and forward+backward passes, WARMUP (default 1) untimed steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
TORCH_SCRIPT="${TORCH_SCRIPT:-../shared/bench/torch_darts_step.py}"
ROUNDS="${ROUNDS:-1}"
THREADS="${THREADS:-2}"
STEPS="${STEPS:-3}"
WARMUP="${WARMUP:-1}"
# PROFILE=release (default) or dev (dependencies at opt-level 3, this workspace at 1; shares
# the build of `cargo test`).
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then
    cargo build --release --example bench_step >&2
    dir=release
else
    cargo build --example bench_step >&2
    dir=debug
fi
OURS="${CARGO_TARGET_DIR:-target}/$dir/examples/bench_step"
for r in $(seq "$ROUNDS"); do
    torch_line=$("$PY" "$TORCH_SCRIPT" "$@" --steps "$STEPS" --warmup "$WARMUP" --fwd-steps "$STEPS" --threads "$THREADS" --seed 2 --json | tail -n 1)
    ours_line=$("$OURS" "$@" --steps "$STEPS" --warmup "$WARMUP" --fwd-steps "$STEPS" --json | tail -n 1)
    echo "pytorch: $torch_line"
    echo "ours:    $ours_line"
    "$PY" - "$torch_line" "$ours_line" <<'PYEOF'
import json, sys
t, o = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ["step_ms_median", "step_ms_min", "fwd_bwd_ms_median", "peak_rss_mb"]:
    print(f"ratio {k:>18}: {o[k] / t[k]:.2f}  (ours {o[k]:.0f}, pytorch {t[k]:.0f})")
assert o["params"] == t["params"], (o["params"], t["params"])
PYEOF
done
