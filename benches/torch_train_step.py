#!/usr/bin/env python3
"""Training step of the DARTS evaluation network (NetworkCIFAR), timed, in plain PyTorch.

The same network and per-step work as the reference's `cnn/train.py` (quark0/darts, Apache-2.0;
the model code below follows its `model.py`/`operations.py` with the modules it uses): genotype
DARTS_V2 (or V1), C=36, 20 cells, auxiliary head (weight 0.4) after cell 2*layers/3, drop path
on every non-identity op, cutout 16 in the data, SGD lr 0.025 momentum 0.9 weight decay 3e-4,
gradient-norm clip 5. The counterpart of `examples/bench_train_step.rs`; both print one JSON line
with the same keys.

One training step = upload of a prepared batch, forward (main and auxiliary logits), loss,
backward, clip, SGD step, reading the loss back (which synchronises a GPU). Batches are
synthetic 32x32 images (uniform pixels normalised with the CIFAR-10 statistics, random crop
with padding 4, horizontal flip and cutout, as the reference's transform does), prepared before
the timing: the reference prepares them in DataLoader workers, in parallel with the step.

    python3 benches/torch_train_step.py --batch 96 --steps 5 --warmup 2 --json
    python3 benches/torch_train_step.py --device cuda --steps 20 --json     # on a GPU

`params` counts the weights without the auxiliary head (the reference's count_parameters_in_MB):
3,349,342 for DARTS_V2, 3,169,414 for DARTS_V1; `aux_params` is the head (476,426).
"""
import argparse
import json
import resource
import statistics
import time
from collections import namedtuple

import torch
import torch.nn as nn

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
GENOTYPES = {
    "DARTS_V1": Genotype(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
        reduce_concat=[2, 3, 4, 5]),
    "DARTS_V2": Genotype(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
        reduce_concat=[2, 3, 4, 5]),
}

OPS = {
    "none": lambda C, stride: Zero(stride),
    "avg_pool_3x3": lambda C, stride: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride: Identity() if stride == 1 else FactorizedReduce(C, C),
    "sep_conv_3x3": lambda C, stride: SepConv(C, C, 3, stride, 1),
    "sep_conv_5x5": lambda C, stride: SepConv(C, C, 5, stride, 2),
    "dil_conv_3x3": lambda C, stride: DilConv(C, C, 3, stride, 2, 2),
    "dil_conv_5x5": lambda C, stride: DilConv(C, C, 5, stride, 4, 2),
}


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in, C_out, kernel_size, stride, padding):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(C_out))


class DilConv(nn.Sequential):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding,
                                   dilation=dilation, groups=C_in, bias=False),
                         nn.Conv2d(C_in, C_out, 1, bias=False),
                         nn.BatchNorm2d(C_out))


class SepConv(nn.Sequential):
    def __init__(self, C_in, C_out, kernel_size, stride, padding):
        super().__init__(DilConv(C_in, C_in, kernel_size, stride, padding, 1),
                         DilConv(C_in, C_out, kernel_size, 1, padding, 1))


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def drop_path(x, drop_prob):
    # The reference divides and multiplies in place (x.div_(keep).mul_(mask)); the out-of-place
    # form computes the same values.
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device).bernoulli_(keep)
    return x.div(keep).mul(mask)


class Cell(nn.Module):
    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        names, indices = zip(*(genotype.reduce if reduction else genotype.normal))
        self._concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.multiplier = len(self._concat)
        self._steps = len(names) // 2
        self._ops = nn.ModuleList(OPS[n](C, 2 if reduction and i < 2 else 1) for n, i in zip(names, indices))
        self._indices = indices

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            hs = []
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class NetworkCIFAR(nn.Module):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1)), logits_aux


MEAN = torch.tensor([0.49139968, 0.48215827, 0.44653124]).view(3, 1, 1)
STD = torch.tensor([0.24703233, 0.24348505, 0.26158768]).view(3, 1, 1)


def synthetic_batch(n, cutout, gen):
    """n augmented images (crop with padding 4, flip, normalise, cutout), labels i % 10."""
    raw = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, device="cpu").float() / 255.0
    padded = torch.zeros(n, 3, 40, 40, device="cpu")
    padded[:, :, 4:36, 4:36] = raw
    out = torch.empty(n, 3, 32, 32, device="cpu")
    for i in range(n):
        dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
        img = padded[i, :, dy:dy + 32, dx:dx + 32]
        if torch.rand(1, generator=gen).item() < 0.5:
            img = img.flip(2)
        img = (img - MEAN) / STD
        if cutout > 0:
            y, x = torch.randint(0, 32, (2,), generator=gen).tolist()
            img = img.clone()
            img[:, max(y - cutout // 2, 0):min(y + cutout // 2, 32), max(x - cutout // 2, 0):min(x + cutout // 2, 32)] = 0.0
        out[i] = img
    return out, torch.arange(n, device="cpu") % 10


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="DARTS_V2", choices=sorted(GENOTYPES))
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--no-auxiliary", action="store_true")
    p.add_argument("--auxiliary-weight", type=float, default=0.4)
    p.add_argument("--drop-path-prob", type=float, default=0.2)
    p.add_argument("--cutout", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    auxiliary = not a.no_auxiliary
    model = NetworkCIFAR(a.channels, 10, a.layers, auxiliary, GENOTYPES[a.arch]).to(dev)
    model.train()
    model.drop_path_prob = a.drop_path_prob
    params = sum(v.numel() for k, v in model.named_parameters() if "auxiliary" not in k)
    aux_params = sum(v.numel() for k, v in model.named_parameters() if "auxiliary" in k)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    crit = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(a.seed)
    batches = [synthetic_batch(a.batch, a.cutout, gen) for _ in range(min(a.warmup + a.steps, 4))]

    def step(k):
        x, t = batches[k % len(batches)]
        x, t = x.to(dev, non_blocking=True), t.to(dev, non_blocking=True)
        opt.zero_grad()
        logits, logits_aux = model(x)
        loss = crit(logits, t)
        if logits_aux is not None:
            loss = loss + a.auxiliary_weight * crit(logits_aux, t)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()

    for k in range(a.warmup):
        step(k)
    times = []
    for k in range(a.steps):
        t0 = time.perf_counter()
        step(a.warmup + k)
        times.append((time.perf_counter() - t0) * 1e3)
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "device": a.device,
        "arch": a.arch,
        "batch": a.batch,
        "channels": a.channels,
        "layers": a.layers,
        "params": params,
        "aux_params": aux_params,
        "step_ms_median": round(statistics.median(times), 1),
        "step_ms_min": round(min(times), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        res["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(res) if a.json else res)


if __name__ == "__main__":
    main()
