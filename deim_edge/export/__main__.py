"""Command line: `python -m deim_edge.export --checkpoint CKPT [--target onnx] ...`, and
`python -m deim_edge.export --build-engine BUNDLE` on a TensorRT device; see --help."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from ..calibration.settings import DEFAULT_SIZE, METHODS, RECIPES
from ..errors import ConfigError, DeimEdgeError
from ..metadata import COCO_CLASSES
from ..progress import reporting
from .api import DECODES, PROFILES, export
from .registry import targets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deim_edge.export",
                                description="Export a DEIMv2 checkpoint to a deployable artifact with its metadata.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a .pth checkpoint (official DEIMv2 or deim-edge), or a Hugging Face "
                        "Hub-layout folder (model.safetensors + config.json); none: random weights")
    source.add_argument("--hub", metavar="REPO", help="download the checkpoint from the Hugging Face Hub, e.g. "
                        "Intellindust/DEIMv2_HGNetv2_PICO_COCO (needs the hub extra; written to ./<repo name>)")
    p.add_argument("--variant", help="e.g. deimv2-pico; default: guessed from the checkpoint")
    p.add_argument("--target", default="onnx", help="artifact kind (default onnx); see --list-targets")
    p.add_argument("--imgsz", type=int, nargs="+", metavar="N", help="input size: N, or H W (multiples of 32); "
                   "default: the variant's")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size at run time")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--out", help="output file or folder; default: beside the checkpoint, or ./<variant><suffix>")
    p.add_argument("--decode", choices=list(DECODES),
                   help="graph: top-k in the artifact (scores, labels, boxes; default); host: raw logits and boxes")
    p.add_argument("--profile", choices=PROFILES,
                   help="npu: the graph NPUs convert (Rockchip, Hailo, Qualcomm): no GridSample, no TopK, decoded on "
                        "the host, fixed batch, ops checked against RKNN's list (the rknn targets' only one); "
                        "default: the target's, else default")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default 300)")
    p.add_argument("--class-names", metavar="FILE",
                   help=f"one name per line, or a JSON list (default: the {len(COCO_CLASSES)} COCO classes)")
    p.add_argument("--no-simplify", action="store_true", help="keep the graph as traced (no onnxslim/onnxsim)")
    p.add_argument("--no-verify", action="store_true", help="skip running the artifact against PyTorch")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a target option, e.g. minimum_deployment_target=iOS17, workspace_gb=2, dla_core=0 "
                        "(values read as JSON when they parse, else as text; see --list-targets)")
    q = p.add_argument_group("INT8 and the accuracy gate")
    q.add_argument("--calib-data", metavar="DATA", help="calibration images for *-int8 targets: a folder (searched "
                   "recursively), a COCO .json, a video, or 'synthetic'")
    q.add_argument("--calib-size", type=int, default=DEFAULT_SIZE, metavar="N",
                   help=f"calibration images to use (default {DEFAULT_SIZE}; fewer than 100 is warned about)")
    q.add_argument("--calib-method", choices=METHODS, default="minmax", help="activation range estimate (default minmax)")
    q.add_argument("--recipe", choices=RECIPES, default="detr",
                   help="detr: INT8 backbone + encoder, float decoder, sensitive layers searched back to float "
                        "(default); naive: quantize everything (the baseline)")
    q.add_argument("--val-data", metavar="DATA", help="accuracy gate data (any target): a COCO folder gives AP vs "
                   "the FP32 PyTorch model; a folder of images gives agreement with it")
    q.add_argument("--max-drop", type=float, metavar="POINTS", help="fail the export (nothing written) when the "
                   "artifact loses more than this (AP points, or agreement points without labels)")
    p.add_argument("--list-targets", action="store_true", help="list the targets and whether they can run here")
    p.add_argument("--build-engine", metavar="BUNDLE",
                   help="on the TensorRT device: build the engine of a bundle (<name>.trt, written by a trt-* export "
                        "where TensorRT or a GPU was missing); writes <name>.engine beside it, or --out")
    return p


def list_targets() -> None:
    """One line per target: name, suffix, extra, whether its dependencies are installed."""
    print(f"{'target':<14}{'suffix':<12}{'extra':<10}{'installed':<28}description")
    for t in targets():
        missing = t.missing()
        state = "yes" if not missing else f"no (missing {', '.join(missing)})"
        print(f"{t.name:<14}{t.suffix:<12}{t.extra:<10}{state:<28}{t.description}")
        print(f"{'':<14}options: {', '.join(f'{k}={v}' for k, v in t.options.items()) or 'none'}")


def _target_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the target options the user set, so each target keeps its own defaults."""
    options: dict[str, Any] = {}
    if args.opset is not None:
        options["opset"] = args.opset
    if args.no_simplify:
        options["simplify"] = False
    if args.no_verify:
        options["verify"] = False
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_targets:
        list_targets()
        return 0
    if args.build_engine:
        return build_engine(args.build_engine, args.out)
    return _run(lambda: export(_checkpoint(args), target=args.target, variant=args.variant, imgsz=args.imgsz,
                               out=args.out, decode=args.decode, profile=args.profile, max_det=args.max_det,
                               batch=args.batch,
                               dynamic_batch=args.dynamic_batch, class_names=args.class_names, progress=True,
                               calib_data=args.calib_data, calib_size=args.calib_size,
                               calib_method=args.calib_method, recipe=args.recipe, max_drop=args.max_drop,
                               val_data=args.val_data, **_target_options(args)))


def _checkpoint(args: argparse.Namespace) -> str | None:
    """--checkpoint, or the local folder of --hub's repo (downloaded into huggingface_hub's cache)."""
    if args.hub is None:
        return args.checkpoint
    from ..models.hub import download_hub

    return str(download_hub(args.hub))


def build_engine(bundle: str, out: str | None = None) -> int:
    """--build-engine: the bundle's engine built here with the TensorRT Python API; the exit status."""
    from ..tensorrt.build import build_bundle  # no torch: this runs on the device

    def build() -> Path:
        with reporting():
            return build_bundle(Path(bundle), Path(out) if out else None)

    return _run(build)


def _run(write: Callable[[], Path]) -> int:
    """Call `write` with warnings shown as plain lines, print the path it wrote; the exit status."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            path = write()
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
