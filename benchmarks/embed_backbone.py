"""Forward throughput of an aikd backbone on random input (images/s).

Usage: python benchmarks/embed_backbone.py [--backbone dlib_resnet] [--batch 32]
       [--repeats 5] [--channels-last] [--device cpu]

Reports the median over ``--repeats`` timed batches after two warm-up batches, so
one-off costs (allocator, oneDNN kernel selection) are excluded.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from aikd.models import RandomWeightsWarning, available_backbones, load_backbone


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backbone", default="dlib_resnet", choices=available_backbones())
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # speed does not depend on weights
        model = load_backbone(args.backbone).to(args.device)
    w, h = model.input_size
    x = torch.rand(args.batch, 3, h, w, device=args.device) * 255
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if x.is_cuda:
            torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for i in range(args.repeats + 2):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    layout = "channels_last" if args.channels_last else "contiguous"
    print(
        f"{args.backbone} batch={args.batch} {layout} device={args.device} "
        f"threads={torch.get_num_threads()}: "
        f"{args.batch / med:.1f} images/s (median of {len(times)}, {med * 1000:.0f} ms/batch)"
    )


if __name__ == "__main__":
    main()
