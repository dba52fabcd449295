"""CPU forward latency of every DEIMv2 variant at batch 1, with parameter counts and FLOPs.

    python benchmarks/bench_models.py [--variants atto pico ...] [--rounds 10] [--threads 1]

Variants are timed interleaved, round by round, so a noisy shared machine slows them alike;
the table gives medians, the p90 and each variant's ratio to the first. Deploy-mode models.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deim_edge import VARIANTS, get_variant
from deim_edge.models import build_model, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=10, help="timed forwards per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = [get_variant(v) for v in args.variants]
    rows = {}
    for v in variants:
        train = build_model(v)
        n_train = sum(p.numel() for p in train.parameters())
        model = train.deploy()
        rows[v.name] = {"model": model, "x": torch.rand(1, 3, v.input_size, v.input_size), "times": [],
                        "train": n_train, "deploy": sum(p.numel() for p in model.parameters()),
                        "gflops": flops(model) / 1e9}
        print(f"built {v.name}", flush=True)

    with torch.no_grad():
        for _ in range(args.warmup):
            for r in rows.values():
                r["model"](r["x"])
        for i in range(args.rounds):
            for r in rows.values():
                start = time.perf_counter()
                r["model"](r["x"])
                r["times"].append(1000 * (time.perf_counter() - start))
            print(f"\rround {i + 1}/{args.rounds}", end="", flush=True)
    print()

    first = statistics.median(rows[variants[0].name]["times"])
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, deploy mode, {args.rounds} rounds")
    print(f"{'variant':<14}{'input':>6}{'params train':>14}{'params deploy':>15}{'GFLOPs':>9}{'(table)':>9}"
          f"{'p50 ms':>9}{'p90 ms':>9}{'ratio':>7}")
    for v in variants:
        r = rows[v.name]
        times = sorted(r["times"])
        p50 = statistics.median(times)
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(f"{v.name:<14}{v.input_size:>6}{r['train']:>14,}{r['deploy']:>15,}{r['gflops']:>9.3f}"
              f"{v.published.gflops:>9.3f}{p50:>9.1f}{p90:>9.1f}{p50 / first:>7.2f}")


if __name__ == "__main__":
    main()
