"""`python -m deim_edge.train --variant deimv2-atto --data DATA ...`: train a DEIMv2 detector.

DATA is a dataset folder in COCO layout (annotations/instances_train.json with train/ images, and
optionally instances_val.json with val/), Pascal VOC layout (Annotations/*.xml, JPEGImages/,
ImageSets/Main/{train,val}.txt) or YOLO layout (data.yaml, images/{train,val}/, labels/{train,val}/);
`synthetic` to generate the synthetic shapes set into the output folder first; or left out with
--train-json/--train-images (and --val-json/--val-images) given. Large images: cut them into tiles first
with `python -m deim_edge tile`.

Before training, a dataset check (box sizes against the variant's strides, objects per image against its
queries, empty classes, duplicate boxes) is printed and saved as OUT/dataset.txt and OUT/dataset.png, and
the recipe fitted to the data, batch and run length (or --time budget) is printed.
Fine-tuning is the normal path: --init-from an official COCO checkpoint of the variant (any class count:
the class heads start fresh) or an ImageNet backbone file such as PPHGNetV2_B0_stage1.pth.

Several processes (GPUs, or CPU processes with gloo): torchrun --nproc_per_node N -m deim_edge.train ...
with --batch the global batch (split evenly over the processes).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, DeimEdgeError

if TYPE_CHECKING:
    from .training.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deim_edge.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="deimv2-atto", help="e.g. deimv2-atto, deimv2-pico, deimv2-s")
    p.add_argument("--data", help="COCO-layout folder, or 'synthetic'")
    p.add_argument("--train-json"), p.add_argument("--train-images")
    p.add_argument("--val-json"), p.add_argument("--val-images")
    p.add_argument("--synthetic-images", type=int, default=200, help="images of --data synthetic")
    p.add_argument("--epochs", type=int, help="default: the variant's recipe, or what fits --time (the schedule "
                                               "scales to it)")
    p.add_argument("--time", type=float, metavar="MINUTES",
                   help="a time budget: the schedule is fitted into it, training stops at it with best.pth")
    p.add_argument("--batch", type=int, help="default: 8, or 4 for a set under 80 images (ten steps an epoch)")
    p.add_argument("--imgsz", type=int, help="square training size, a multiple of 32 (default: the variant's)")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiplies the recipe's learning rates")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 on CUDA; bfloat16 on CPUs with AVX512-BF16/AMX")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="folder for last.pth, best.pth, log.txt, curves.png")
    p.add_argument("--eval-every", type=int, help="evaluate the EMA model every N epochs (default: in the last "
                                                  "quarter of the run every epoch, or every 2nd or 3rd when the EMA "
                                                  "spans at least 4 or 6 epochs; every epochs/20 before)")
    p.add_argument("--resume", help="last.pth of an interrupted run: continue it")
    p.add_argument("--init-from", help="a checkpoint of any size or variant: start from its matching tensors")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (CUDA and CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def data_paths(args: argparse.Namespace) -> tuple[str, str, str | None, str | None]:
    """(train images, train json, val images, val json) from --data or the explicit paths. A VOC or YOLO
    dataset is read into COCO JSON files under OUT/dataset/ first."""
    if args.data == "synthetic":
        from .training.data import make_synthetic_coco

        s = make_synthetic_coco(Path(args.out) / "synthetic", num_images=args.synthetic_images,
                                image_size=args.imgsz or 320, progress=not args.no_progress)
        return str(s.train_images), str(s.train_json), str(s.val_images), str(s.val_json)
    if args.data:
        from .training.data.layouts import read_dataset, write_coco_layout

        layout, splits = read_dataset(args.data)
        if layout == "coco":
            paths = {name: (str(s.images), str(s.source)) for name, s in splits.items()}
        else:
            paths = write_coco_layout(splits, Path(args.out) / "dataset")
            sizes = ", ".join(f"{name} {len(split.coco['images'])} images" for name, split in splits.items())
            print(f"{layout} dataset {args.data}: {sizes} (as COCO JSON in {Path(args.out) / 'dataset'})")
        val = paths.get("val", (None, None))
        return (*paths["train"], *val)
    if not (args.train_json and args.train_images):
        raise ConfigError("give --data FOLDER, --data synthetic, or --train-json and --train-images")
    if bool(args.val_json) != bool(args.val_images):
        raise ConfigError("give --val-json and --val-images together")
    return args.train_images, args.train_json, args.val_images, args.val_json


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trainer = None
    try:
        from .training.distributed import teardown
        from .training.trainer import TrainConfig, Trainer

        config = TrainConfig("", "", variant=args.variant, epochs=args.epochs, batch_size=args.batch,
                             imgsz=args.imgsz, lr_scale=args.lr_scale, device=args.device, amp=args.amp,
                             workers=args.workers, seed=args.seed, out=args.out, eval_every=args.eval_every,
                             resume=args.resume, init_from=args.init_from, progress=not args.no_progress,
                             sync_bn=args.sync_bn, time_minutes=args.time)
        config.check()  # bad options fail now, before any data is read or generated
        config.train_images, config.train_json, config.val_images, config.val_json = data_paths(args)
        trainer = Trainer(config)
        history = trainer.fit()
        teardown()
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(trainer, args.out), file=sys.stderr)
        return 130
    if history and trainer.dist.main:
        last = history[-1]
        ap = f", AP {last['AP']:.3f}, AP50 {last['AP50']:.3f}" if "AP" in last else ""
        print(f"done: {len(history)} epochs, last loss {last['loss']:.3f}{ap}; checkpoints in {args.out}")
    return 0


def _interrupted(trainer: Trainer | None, out: str) -> str:
    """What a run stopped by Ctrl-C left behind, and how to go on from it."""
    if trainer is None or trainer.start_epoch == 0:
        return "interrupted before the first epoch ended; no checkpoint was written"
    last = Path(out) / "last.pth"
    return f"interrupted; {last} holds the run up to epoch {trainer.start_epoch}: continue with --resume {last}"


if __name__ == "__main__":
    sys.exit(main())
