"""RKNN accuracy in rknn-toolkit2's simulator: a checkpoint exported for a Rockchip NPU as FP16 (`rknn`) and as
the INT8 encoder + FP16 decoder pair (`rknn-int8`, calibrated on synthetic training images), each measured by the
export's accuracy gate against the FP32 PyTorch model on held-out synthetic images.

    python benchmarks/rknn_gate.py --checkpoint deim_edge/assets/deimv2-atto-synthetic.pth --out runs/rknn-atto
    python benchmarks/rknn_gate.py --checkpoint runs/learn-pico/pico-synthetic.pth --out runs/rknn-pico

The toolkit runs in its own environment (--rknn-python, or DEIM_EDGE_RKNN_PYTHON; README: Rockchip NPUs).
Prints a Markdown table and writes it to --out/report.md.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from deim_edge.errors import DeimEdgeError
from deim_edge.export import export
from deim_edge.fileio import atomic_path
from deim_edge.training.data import make_synthetic_coco

RUNS = [("rknn", {}), ("rknn-int8", {"calib_size": 48}), ("rknn-int8", {"calib_size": 100})]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (the synthetic shapes' classes)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--platform", default="rk3588")
    p.add_argument("--rknn-python", help="python of the rknn-toolkit2 environment")
    p.add_argument("--val-images", type=int, default=150, help="synthetic images made; a fifth are held out")
    args = p.parse_args()
    heldout = args.out / "heldout"
    if not heldout.is_dir():
        make_synthetic_coco(heldout, num_images=args.val_images, image_size=320, seed=1, split_val=0.2)
    options = {"platform": args.platform, **({"rknn_python": args.rknn_python} if args.rknn_python else {})}
    rows = ["| target | calibration images | AP | FP32 AP | drop (AP points) | FP32 detections matched | minutes |",
            "|---|---|---|---|---|---|---|"]
    for target, settings in RUNS:
        calibration = {"calib_data": "synthetic", **settings} if target == "rknn-int8" else {}
        out = args.out / f"{target}-{settings.get('calib_size', 'none')}" / "model.rknn"
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the small calibration set is warned about
                path = export(args.checkpoint, target, out=out, val_data=str(heldout), **calibration, **options)
        except DeimEdgeError as e:
            rows.append(f"| {target} | {settings.get('calib_size', '-')} | export failed: {e} ||||| ")
            print(rows[-1], flush=True)
            continue
        minutes = (time.perf_counter() - start) / 60
        gate = json.loads(path.with_name(path.name + ".accuracy.json").read_text())["accuracy"]
        rows.append(f"| {target} | {settings.get('calib_size', '-')} | {gate['AP']:.4f} | {gate['reference_AP']:.4f} | "
                    f"{gate['drop']:.2f} | {gate['matched']:.1%} | {minutes:.1f} |")
        print(rows[-1], flush=True)
    text = f"# RKNN in the simulator ({args.platform}): {args.checkpoint}\n\n" + "\n".join(rows) + "\n"
    with atomic_path(args.out / "report.md") as tmp:
        tmp.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
