"""Learning check: a DEIMv2 variant (deimv2-atto by default) at 320 from scratch on the synthetic shapes
set, on this CPU.

    python benchmarks/learn_synthetic.py [--minutes 30] [--asset deim_edge/assets/deimv2-atto-synthetic.pth]
    python benchmarks/learn_synthetic.py --variant deimv2-pico --target 0.3 --minutes 90 --out runs/learn-pico

Trains with the command printed first (python -m deim_edge.train ... --data synthetic), prints the
validation AP50 and the wall time after every epoch, and says whether AP50 reached --target within
--minutes (exit 1 if not). With --asset, the EMA weights of the best epoch are written there as a
small official-format checkpoint ({'model': weights} plus variant, class names, metrics and the command):
the demo's and the INT8 checks' model.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from deim_edge.fileio import atomic_path
from deim_edge.train import data_paths, parse_args
from deim_edge.training import TrainConfig, Trainer

RECIPE = ["--data", "synthetic", "--synthetic-images", "300", "--workers", "1",
          "--seed", "0", "--eval-every", "1"]  # AP50 after every epoch: the check is when it crosses the target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="deimv2-atto")
    parser.add_argument("--imgsz", type=int, default=320, help="training size (the synthetic images are this size)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--target", type=float, default=0.5, help="AP50 to reach")
    parser.add_argument("--out", default="runs/learn-atto")
    parser.add_argument("--asset", help="write the best EMA weights here as a slim checkpoint")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr-scale", type=float, default=0.5)
    args = parser.parse_args()
    argv = [*RECIPE, "--variant", args.variant, "--imgsz", str(args.imgsz), "--epochs", str(args.epochs), "--batch", str(args.batch), "--lr-scale", str(args.lr_scale),
            "--out", args.out, "--no-progress"]
    command = "python -m deim_edge.train " + shlex.join(argv)
    print(command)
    train = parse_args(argv)
    start = time.perf_counter()
    train_images, train_json, val_images, val_json = data_paths(train)
    trainer = Trainer(TrainConfig(train_images, train_json, val_images, val_json, variant=train.variant,
                                  epochs=train.epochs, batch_size=train.batch, imgsz=train.imgsz, lr_scale=train.lr_scale,
                                  workers=train.workers, seed=train.seed, out=train.out, progress=False,
                                  eval_every=train.eval_every))
    reached = None
    print(f"{'epoch':>5} {'loss':>7} {'AP50':>6} {'AP':>6} {'minutes':>8}")
    for epoch in range(trainer.epochs):
        record = trainer.fit(until=epoch + 1)[-1]
        minutes = (time.perf_counter() - start) / 60
        print(f"{epoch + 1:>5} {record['loss']:>7.3f} {record['AP50']:>6.3f} {record['AP']:>6.3f} {minutes:>8.1f}",
              flush=True)
        if reached is None and record["AP50"] >= args.target:
            reached = (epoch + 1, minutes)
    if args.asset:
        write_asset(Path(train.out) / "best.pth", Path(args.asset), command)
    if reached and reached[1] <= args.minutes:
        print(f"PASS: AP50 >= {args.target} at epoch {reached[0]}, {reached[1]:.1f} min (budget {args.minutes:g})")
        return 0
    print(f"FAIL: AP50 did not reach {args.target} within {args.minutes:g} min")
    return 1


def write_asset(best: Path, dest: Path, command: str) -> None:
    """The best epoch's EMA weights with what a user needs to know about them, written atomically."""
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    slim = {"model": ckpt["ema"]["module"], "command": command,
            **{k: ckpt[k] for k in ("variant", "num_classes", "class_names", "input_size", "epoch", "metrics")}}
    with atomic_path(dest) as tmp:
        torch.save(slim, tmp)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB, epoch {ckpt['epoch'] + 1}, {ckpt['metrics']})")


if __name__ == "__main__":
    sys.exit(main())
