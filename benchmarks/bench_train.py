"""Training throughput (images/s, the whole step: loading, augmentation, forward, loss, backward, update).

    python benchmarks/bench_train.py [--cases deimv2-atto:320 deimv2-pico:640] [--images 64] [--batch 8]

Each case trains one epoch on a generated synthetic set of --images images in a temporary folder
(no validation) and prints the trainer's measured images/s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from deim_edge.training import TrainConfig, Trainer
from deim_edge.training.data import make_synthetic_coco


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["deimv2-atto:320", "deimv2-pico:640"], help="VARIANT:SIZE")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        variant, size = case.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            data = make_synthetic_coco(Path(tmp) / "data", num_images=args.images, image_size=int(size), split_val=0.0)
            config = TrainConfig(train_images=str(data.train_images), train_json=str(data.train_json),
                                 variant=variant, epochs=1, batch_size=args.batch, imgsz=int(size),
                                 workers=args.workers, out=str(Path(tmp) / "run"), progress=False)
            record = Trainer(config).fit()[-1]
        rows.append((variant, int(size), record["images_per_s"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.workers} workers, {args.images} synthetic images")
    for variant, size, speed in rows:
        print(f"  {variant:<14}{size:>5}  {speed:6.2f} images/s")


if __name__ == "__main__":
    main()
