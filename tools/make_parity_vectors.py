"""Write tests/data/parity/*.npz: outputs of the public DEIMv2 code on fixed weights and inputs.

    python tools/make_parity_vectors.py --deimv2 PATH/TO/DEIMv2-checkout

Each case runs in its own process (the public config system keeps state between builds). The
weights come from tests/parity_weights.py, so the tests rebuild them without the public code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from deim_edge.fileio import atomic_path
from deimv2_reference import per_case_main  # tools/, beside this script

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "parity"
# (variant, input size): every variant at its eval size, the large ones reduced, and two other sizes.
CASES = [("deimv2-atto", 320), ("deimv2-femto", 416), ("deimv2-pico", 640), ("deimv2-n", 640),
         ("deimv2-s", 640), ("deimv2-m", 320), ("deimv2-l", 320), ("deimv2-x", 320),
         ("deimv2-atto", 640), ("deimv2-pico", 480)]
SEED = 0


def run_case(checkout: str, variant: str, size: int) -> None:
    sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]
    from deimv2_reference import build_reference
    from parity_weights import fill_parity_weights, parity_input

    torch.manual_seed(SEED)
    model = fill_parity_weights(build_reference(checkout, variant, size), SEED).eval()
    x = parity_input((size, size), SEED)
    with torch.no_grad():
        out = model(x)
        deployed = model.deploy()(x)
    with atomic_path(OUT / f"{variant}_{size}.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, seed=SEED, size=size,
            pred_logits=out["pred_logits"].numpy(), pred_boxes=out["pred_boxes"].numpy(),
            deploy_logits=deployed["pred_logits"].numpy(), deploy_boxes=deployed["pred_boxes"].numpy())
    print(f"{variant} @ {size}: logits {tuple(out['pred_logits'].shape)}", flush=True)


if __name__ == "__main__":
    per_case_main(__doc__, CASES, run_case)
