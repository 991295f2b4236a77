"""Run the PyTorch DARTS search-step baseline (../shared/bench/torch_darts_step.py) on a CUDA GPU.

The baseline script builds everything with the default device; this wrapper makes that device
`cuda` (so the model, the alphas and the synthetic batches live on the GPU), runs the script's
own `main()` with the given flags, and then prints a second JSON line with the GPU's peak
allocated memory. Every timed pass of the script ends in `.item()`, which synchronises the GPU,
so its wall-clock timings are valid on CUDA.

    python3 benches/torch_cuda_step.py [--script PATH] -- --order 1 --batch 64 --layers 8 \\
        --channels 16 --steps 5 --json

PyTorch's defaults are kept (cuDNN convolutions may use TF32 on Ampere and later GPUs).
"""
import importlib.util
import json
import os
import sys

import torch


def main():
    args = sys.argv[1:]
    script = os.environ.get(
        "DARTS_TORCH_SCRIPT",
        os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench", "torch_darts_step.py"),
    )
    if args and args[0] == "--script":
        script, args = args[1], args[2:]
    if args and args[0] == "--":
        args = args[1:]
    if not torch.cuda.is_available():
        sys.exit("torch_cuda_step.py: no CUDA device visible to PyTorch")
    spec = importlib.util.spec_from_file_location("torch_darts_step", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_default_device("cuda")
    torch.cuda.reset_peak_memory_stats()
    sys.argv = [script] + args
    mod.main()
    torch.cuda.synchronize()
    print(json.dumps({
        "impl": "pytorch-cuda",
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "gpu_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }))


if __name__ == "__main__":
    main()
