"""Embedding throughput: images/s of a backbone, and the share of the CPU's matmul peak it uses.

The peak is measured in the same run (fp32 square matmuls, best of several), so the ratio
is meaningful on whatever machine runs this. Also times the whole embed path (decode +
align + network) on real LFW images. Writes benchmarks/results/embed.json.

For dlib_resnet it also times the folded/fused fp32 copy (aikd.models.fused, what the
embed stage now runs) against the channels-last module, interleaved round by round so
load from other processes hits both alike, and reports the ratio, the max abs descriptor
difference on the real faces, and the full path (decode + align + network) with each.

Usage: python benchmarks/embed.py [--backbone dlib_resnet] [--batch 64] [--images 512]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from aikd.embed import embed_table
from aikd.models.fused import fused_dlib
from aikd.models.registry import RandomWeightsWarning, load_backbone

RESULTS = Path(__file__).parent / "results" / "embed.json"
LFW = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lfw"


def matmul_peak_gflops(n: int = 2048, repeats: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds x 2 of every conv and linear layer for one forward pass of `x`."""
    total = 0.0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2.0 * k * out.numel()
        elif isinstance(mod, nn.Linear):
            total += 2.0 * mod.in_features * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total / x.shape[0]


def interleaved_rates(fns: dict[str, object], x: torch.Tensor, repeats: int
                      ) -> dict[str, float]:
    """images/s of each callable, timed in alternating rounds (median per callable)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(x)  # type: ignore[operator]
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(_timed(lambda fn=fn: fn(x)))  # type: ignore[operator]
    return {k: x.shape[0] / statistics.median(v) for k, v in times.items()}


def forward_rate(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        times = [_timed(lambda: model(x)) for _ in range(repeats)]
    return x.shape[0] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="dlib_resnet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=512, help="real LFW images for the full path")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (slow start)")
    args = ap.parse_args()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = load_backbone(args.backbone).eval()
    w, h = model.input_size
    x = torch.rand(args.batch, 3, h, w) * 255
    peak = matmul_peak_gflops()
    flops = count_flops(model, x[:2])
    res: dict[str, object] = {
        "backbone": args.backbone, "batch": args.batch, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "matmul_peak_gflops": round(peak, 1), "gflop_per_image": round(flops / 1e9, 3),
    }
    variants = {"eager": (model, x)}
    cl = load_backbone(args.backbone).eval().to(memory_format=torch.channels_last)
    variants["channels_last"] = (cl, x.contiguous(memory_format=torch.channels_last))
    if args.compile:
        variants["channels_last+compile"] = (torch.compile(cl), variants["channels_last"][1])
    for name, (m, inp) in variants.items():
        rate = forward_rate(m, inp, args.repeats)
        res[f"{name}_images_per_s"] = round(rate, 1)
        res[f"{name}_share_of_peak"] = round(rate * flops / 1e9 / peak, 3)
    fused = fused_dlib(cl)
    if fused is not None:
        rates = interleaved_rates({"module": cl, "fused": fused},
                                  x.contiguous(memory_format=torch.channels_last), args.repeats)
        res["interleaved_module_images_per_s"] = round(rates["module"], 1)
        res["interleaved_fused_images_per_s"] = round(rates["fused"], 1)
        res["fused_speedup"] = round(rates["fused"] / rates["module"], 3)
    ref = LFW / "landmarks_5pt.csv"
    if ref.is_file():
        rows = pd.read_csv(ref).head(args.images).assign(root=str(LFW))
        with tempfile.TemporaryDirectory() as tmp:
            # the module path: fused_dlib disabled for this call only
            import aikd.embed as embed_mod

            full: dict[str, float] = {}
            tables = {}
            for name, off in (("module", True), ("fused", False), ("module", True),
                              ("fused", False)):
                embed_mod.fused_dlib = (lambda _m: None) if off else fused_dlib
                t0 = time.perf_counter()
                _, vec, _ = embed_table(cl, rows, Path(tmp) / f"{name}{len(full)}.parquet",
                                        batch_size=args.batch, progress=False)
                full[name] = full.get(name, 0.0) + time.perf_counter() - t0
                tables[name] = vec
            embed_mod.fused_dlib = fused_dlib
            res["full_path_images"] = len(rows)
            for name, secs in full.items():
                res[f"full_path_{name}_images_per_s"] = round(2 * len(rows) / secs, 1)
            res["full_path_fused_speedup"] = round(full["module"] / full["fused"], 3)
            res["fused_max_abs_descriptor_diff"] = float(
                abs(tables["fused"] - tables["module"]).max())
    for k, v in res.items():
        print(f"{k:>32}: {v}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
