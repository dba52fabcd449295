"""Write tests/data/losses/<variant>.npz: the public DEIMv2 criterion's losses on fixed weights,
images and targets, at an epoch before and one at the DEIM matcher switch.

    python tools/make_loss_vectors.py --deimv2 PATH/TO/DEIMv2-checkout

Each variant runs in its own process (the public config system keeps state between builds).
The model weights come from tests/parity_weights.py and the training forward is seeded, so the
tests rebuild the same outputs with deim_edge and compare their DEIMLoss to the stored values.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import torch

from deim_edge.fileio import atomic_path
from deimv2_reference import per_case_main  # tools/, beside this script
from deim_edge.variants import get_variant

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "losses"
CASES = [("deimv2-atto", 320), ("deimv2-s", 320)]
SEED = 0
# Two images: three and two objects, normalized cxcywh.
LABELS = [[1, 17, 3], [0, 79]]
BOXES = [[[0.30, 0.40, 0.20, 0.30], [0.65, 0.55, 0.40, 0.50], [0.50, 0.50, 0.90, 0.85]],
         [[0.20, 0.75, 0.15, 0.20], [0.70, 0.30, 0.35, 0.25]]]


def fixed_targets() -> list[dict[str, torch.Tensor]]:
    """The stored targets as the model and criterion take them."""
    return [{"labels": torch.tensor(lab, dtype=torch.int64), "boxes": torch.tensor(box, dtype=torch.float32)}
            for lab, box in zip(LABELS, BOXES)]


def reference_model_and_criterion(checkout: str, variant: str, size: int):
    """The public model and criterion of `variant`, from one YAMLConfig (as tools/deimv2_reference.py loads it)."""
    from deimv2_reference import CONFIGS, install_stand_ins

    install_stand_ins()
    sys.path.insert(0, str(Path(checkout).resolve()))
    from engine.core import YAMLConfig  # the public code

    overrides = {"HGNetv2": {"pretrained": False}, "DINOv3STAs": {"weights_path": None},
                 "eval_spatial_size": [size, size]}
    with contextlib.redirect_stdout(io.StringIO()):  # the public code prints while building
        cfg = YAMLConfig(str(Path(checkout) / "configs" / "deimv2" / f"{CONFIGS[variant]}.yml"), **overrides)
        return cfg.model, cfg.criterion


def run_case(checkout: str, variant: str, size: int) -> None:
    sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]
    from parity_weights import fill_parity_weights, parity_input

    model, criterion = reference_model_and_criterion(checkout, variant, size)
    model = fill_parity_weights(model, SEED).train()
    epochs = [0, get_variant(variant).recipe.matcher_change_epoch]
    targets = fixed_targets()
    torch.manual_seed(SEED)
    outputs = model(parity_input((size, size), SEED), targets)
    arrays: dict[str, np.ndarray] = {}
    for epoch in epochs:
        losses = criterion(outputs, targets, epoch=epoch)
        arrays.update({f"e{epoch}/{k}": np.float64(v.item()) for k, v in losses.items()})
    with atomic_path(OUT / f"{variant}.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, seed=SEED, size=size, epochs=np.array(epochs),
                            labels=np.array(sum(LABELS, [])), sizes=np.array([len(x) for x in LABELS]),
                            boxes=np.array(sum(BOXES, []), dtype=np.float32), **arrays)
    print(f"{variant}: {len(arrays)} losses at epochs {epochs}", flush=True)


if __name__ == "__main__":
    per_case_main(__doc__, CASES, run_case)
