#!/usr/bin/env python3
"""PyTorch's side of `examples/op_profile.rs`: forward+backward time of the DARTS building
blocks on one [N, C, HW, HW] input (CPU), printed in the same layout, so that each op can be
compared one by one with ours (same machine, same thread count).

    .venv-torch/bin/python benches/torch_op_profile.py 96 36 32 --threads 2

The ops follow the reference's operations.py (ReLUConvBN order, SepConv = two
ReLU-depthwise-pointwise-BN halves, DilConv one); BN is in training mode.
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sep_conv(c, k, affine):
    half = lambda: [nn.ReLU(inplace=False), nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False),
                    nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine)]
    return nn.Sequential(*half(), *half())


def dil_conv(c, k, affine):
    pad = 2 if k == 3 else 4
    return nn.Sequential(nn.ReLU(inplace=False),
                         nn.Conv2d(c, c, k, 1, pad, dilation=2, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, affine=affine))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", nargs="*", type=int, default=[16, 8, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n, c, hw = a.shape
    x = torch.rand(n, c, hw, hw, requires_grad=True)
    reps = a.reps

    def time_it(name, f):
        f().sum().backward()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            f().sum().backward()
        print(f"{name:>28}: fwd+bwd {(time.perf_counter() - t0) * 1e3 / reps:8.2f} ms")

    per_channel = torch.rand(1, c, 1, 1)
    time_it("x * 2", lambda: x * 2.0)
    time_it("relu", lambda: F.relu(x))
    time_it("x * c[1,C,1,1]", lambda: x * per_channel)
    time_it("batchnorm", lambda: F.batch_norm(x, None, None, training=True))
    bn = nn.BatchNorm2d(c, affine=True)
    time_it("batchnorm (affine)", lambda: bn(x))
    time_it("max pool 3x3", lambda: F.max_pool2d(x, 3, 1, 1))
    time_it("avg pool 3x3", lambda: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    dw = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
    dw5 = nn.Conv2d(c, c, 5, 1, 2, groups=c, bias=False)
    pw = nn.Conv2d(c, c, 1, bias=False)
    time_it("depthwise conv 3x3", lambda: dw(x))
    time_it("depthwise conv 5x5", lambda: dw5(x))
    time_it("pointwise conv 1x1", lambda: pw(x))
    for affine, tag in [(False, ""), (True, " (derived)")]:
        ops = {
            "sep_conv_3x3": sep_conv(c, 3, affine),
            "sep_conv_5x5": sep_conv(c, 5, affine),
            "dil_conv_3x3": dil_conv(c, 3, affine),
            "dil_conv_5x5": dil_conv(c, 5, affine),
        }
        for name, op in ops.items():
            time_it(name + tag, lambda op=op: op(x))


if __name__ == "__main__":
    main()
