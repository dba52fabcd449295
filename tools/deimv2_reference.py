"""Build models of the public DEIMv2 code (Intellindust-AI-Lab/DEIMv2) for parity checks.

Not part of the package and never imported by it or by the tests: the tools in this folder use it
to produce the test vectors the tests pin. It needs a checkout of the public code and installs a
stand-in for the few torchvision pieces that code imports (torchvision has no CPU build here).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

CONFIGS = {
    "deimv2-atto": "deimv2_hgnetv2_atto_coco", "deimv2-femto": "deimv2_hgnetv2_femto_coco",
    "deimv2-pico": "deimv2_hgnetv2_pico_coco", "deimv2-n": "deimv2_hgnetv2_n_coco",
    "deimv2-s": "deimv2_dinov3_s_coco", "deimv2-m": "deimv2_dinov3_m_coco",
    "deimv2-l": "deimv2_dinov3_l_coco", "deimv2-x": "deimv2_dinov3_x_coco",
}


def _box_area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    if (in_fmt, out_fmt) != ("cxcywh", "xyxy"):
        raise NotImplementedError(f"stand-in box_convert only does cxcywh -> xyxy, not {in_fmt} -> {out_fmt}")
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _generalized_box_iou(b1: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    inter_wh = (torch.min(b1[:, None, 2:], b2[:, 2:]) - torch.max(b1[:, None, :2], b2[:, :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = _box_area(b1)[:, None] + _box_area(b2) - inter
    hull_wh = (torch.max(b1[:, None, 2:], b2[:, 2:]) - torch.min(b1[:, None, :2], b2[:, :2])).clamp(min=0)
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return inter / union - (hull - union) / hull


def _sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    p = torch.sigmoid(inputs)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    loss = ce * (1 - (p * targets + (1 - p) * (1 - targets))) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


class _Anything:
    """Stand-in for any torchvision class: constructible, callable, subclassable."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return args[0] if args else None


class _StubModule(types.ModuleType):
    """A module whose missing attributes are stand-in classes (Capitalized) or submodules."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (_Anything,), {}) if name[:1].isupper() else _stub_module(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __call__(self, *args, **kwargs):
        return None


def _stub_module(name: str) -> _StubModule:
    module = _StubModule(name)
    module.__path__ = []
    return module


# what the public code imports but never needs to build a model: torchvision (box ops are given real stand-ins
# below), calflops, and tensorboard's SummaryWriter (imported by its config module)
STUBBED = ("torchvision", "calflops", "torch.utils.tensorboard")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name in STUBBED or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _stub_module(spec.name)

    def exec_module(self, module):
        pass


def install_stand_ins() -> None:
    """Make `import torchvision` (and the other STUBBED modules) resolve to stand-ins, with real box ops."""
    if any(isinstance(f, _StubFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _StubFinder())
    import torchvision.ops  # noqa: F401  (resolved by the stand-in finder)
    import torchvision.ops.boxes  # noqa: F401

    ops = sys.modules["torchvision.ops"]
    ops.box_area = sys.modules["torchvision.ops.boxes"].box_area = _box_area
    ops.box_convert = _box_convert
    ops.generalized_box_iou = _generalized_box_iou
    ops.sigmoid_focal_loss = _sigmoid_focal_loss
    real_version = importlib.metadata.version
    importlib.metadata.version = lambda n: "0.16.0" if n == "torchvision" else real_version(n)


def build_reference(checkout: str | Path, variant: str, input_size: int | None = None,
                    num_classes: int | None = None):
    """The public code's model for `variant` (with `num_classes` classes, default the config's 80), with random
    init. One variant per process: the public config system keeps state between builds."""
    checkout = Path(checkout).resolve()
    install_stand_ins()
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from engine.core import YAMLConfig  # the public code

    overrides: dict = {"HGNetv2": {"pretrained": False}, "DINOv3STAs": {"weights_path": None}}
    if input_size:
        overrides["eval_spatial_size"] = [input_size, input_size]
    if num_classes:
        overrides["num_classes"] = num_classes
    devnull = open(os.devnull, "w")
    stdout, sys.stdout = sys.stdout, devnull  # the public code prints while building
    try:
        cfg = YAMLConfig(str(checkout / "configs" / "deimv2" / f"{CONFIGS[variant]}.yml"), **overrides)
        model = cfg.model
    finally:
        sys.stdout = stdout
        devnull.close()
    return model


def per_case_main(doc: str, cases: list[tuple[str, int]], run_case) -> None:
    """The command line of the vector tools: `--deimv2 CHECKOUT` runs `run_case(checkout, variant, size)`
    for every case, each in its own process (the public config system keeps state between builds)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deimv2", required=True, help="checkout of Intellindust-AI-Lab/DEIMv2")
    parser.add_argument("--case", nargs=2, metavar=("VARIANT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.deimv2, args.case[0], int(args.case[1]))
        return
    for variant, size in cases:
        subprocess.run([sys.executable, sys.argv[0], "--deimv2", args.deimv2, "--case", variant, str(size)],
                       check=True)
