"""Command line: `python -m deim_edge.export --checkpoint CKPT [--target onnx] ...`; see --help."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from ..errors import DeimEdgeError
from ..metadata import COCO_CLASSES
from .api import DECODES, export
from .registry import targets


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deim_edge.export",
                                description="Export a DEIMv2 checkpoint to a deployable artifact with its metadata.")
    p.add_argument("--checkpoint", help="a .pth checkpoint (official DEIMv2 or deim-edge); none: random weights")
    p.add_argument("--variant", help="e.g. deimv2-pico; default: guessed from the checkpoint")
    p.add_argument("--target", default="onnx", help="artifact kind (default onnx); see --list-targets")
    p.add_argument("--imgsz", type=int, nargs="+", metavar="N", help="input size: N, or H W (multiples of 32); "
                   "default: the variant's")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size at run time")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--out", help="output file or folder; default: beside the checkpoint, or ./<variant><suffix>")
    p.add_argument("--decode", choices=list(DECODES), default="graph",
                   help="graph: top-k in the artifact (scores, labels, boxes; default); host: raw logits and boxes")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default 300)")
    p.add_argument("--class-names", metavar="FILE",
                   help=f"one name per line, or a JSON list (default: the {len(COCO_CLASSES)} COCO classes)")
    p.add_argument("--no-simplify", action="store_true", help="keep the graph as traced (no onnxslim/onnxsim)")
    p.add_argument("--no-verify", action="store_true", help="skip running the artifact against PyTorch")
    p.add_argument("--list-targets", action="store_true", help="list the targets and whether they can run here")
    return p


def list_targets() -> None:
    """One line per target: name, suffix, extra, whether its dependencies are installed."""
    print(f"{'target':<14}{'suffix':<10}{'extra':<10}{'installed':<28}description")
    for t in targets():
        missing = t.missing()
        state = "yes" if not missing else f"no (missing {', '.join(missing)})"
        print(f"{t.name:<14}{t.suffix:<10}{t.extra:<10}{state:<28}{t.description}")


def _target_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the target options the user set, so each target keeps its own defaults."""
    options: dict[str, Any] = {}
    if args.opset is not None:
        options["opset"] = args.opset
    if args.no_simplify:
        options["simplify"] = False
    if args.no_verify:
        options["verify"] = False
    return options


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_targets:
        list_targets()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            path = export(args.checkpoint, target=args.target, variant=args.variant, imgsz=args.imgsz, out=args.out,
                          decode=args.decode, max_det=args.max_det, batch=args.batch,
                          dynamic_batch=args.dynamic_batch, class_names=args.class_names, progress=True,
                          **_target_options(args))
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
