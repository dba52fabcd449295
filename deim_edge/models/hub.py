"""Checkpoints laid out as the official Hugging Face repos (`Intellindust/DEIMv2_*`): `model.safetensors` and
`config.json`, as huggingface_hub's PyTorchModelHubMixin saves them. The config holds the official
constructor arguments per component ({"HGNetv2": {"name": "Pico", ...}, "LiteEncoder": ..., "DEIMTransformer":
{..., "eval_spatial_size": [640, 640]}, "PostProcessor": ...}); the variant is the one whose backbone it names.
safetensors stores a tensor shared by several modules once (the decoder's shared box head, `up`, `reg_scale`):
load_checkpoint fills the other names from the model's own sharing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DownloadError, MissingDependencyError
from ..variants import VARIANTS

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
BACKBONE_KEYS = ("HGNetv2", "DINOv3STAs")  # the official config's backbone entry, by family


def hub_weights(path: str | os.PathLike) -> Path | None:
    """The safetensors file of a Hub-layout folder or file, None when `path` is neither."""
    path = Path(path)
    if path.is_dir() and (path / WEIGHTS).is_file():
        return path / WEIGHTS
    if path.is_file() and path.suffix == ".safetensors":
        return path
    return None


def read_hub(weights: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, config) of a Hub-layout checkpoint: the safetensors file and the config.json beside it
    ({} when there is none: the variant is then guessed from the weights)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:
        raise MissingDependencyError("reading .safetensors checkpoints needs safetensors: "
                                     "pip install 'deim-edge[torch]'") from e
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    config_path = weights.parent / CONFIG
    if not config_path.is_file():
        return state, {}
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path} is not a JSON file: {e}") from e
    if isinstance(config, dict) and isinstance(config.get("config"), dict):  # the mixin's wrapper, when present
        config = config["config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} holds no object of DEIMv2 components")
    return state, config


def variant_of_config(config: dict[str, Any]) -> str | None:
    """The variant whose backbone the official config names (HGNetv2 "Atto", DINOv3STAs "vit_tiny", ...)."""
    for key in BACKBONE_KEYS:
        name = config.get(key, {}).get("name") if isinstance(config.get(key), dict) else None
        for v in VARIANTS.values():
            if name is not None and v.backbone.name == name:
                return v.name
    return None


def input_size_of_config(config: dict[str, Any]) -> tuple[int, int] | None:
    """The decoder's eval_spatial_size, the size the checkpoint's anchors were made for."""
    decoder = config.get("DEIMTransformer") or config.get("DFINETransformer") or {}
    size = decoder.get("eval_spatial_size") if isinstance(decoder, dict) else None
    if isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return (size[0], size[1])
    return None


def hub_cache_repo(path: str | os.PathLike) -> str | None:
    """The repo name of a folder (or file in it) in huggingface_hub's cache (models--ORG--NAME/snapshots/REV),
    else None."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return None


def download_hub(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local folder of a Hub repo's model.safetensors and config.json, downloaded through huggingface_hub
    (its cache, token and HF_ENDPOINT apply) when not cached yet."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:
        raise MissingDependencyError("--hub needs huggingface_hub: pip install 'deim-edge[hub]'") from e
    folder = None
    for name in (WEIGHTS, CONFIG):
        try:
            folder = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)).parent
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
            raise DownloadError(f"could not download {name} of {repo_id} from the Hugging Face Hub: "
                                f"{str(e).splitlines()[0]}; check the name (e.g. Intellindust/"
                                f"DEIMv2_HGNetv2_PICO_COCO) and the network, or download the folder by hand "
                                f"and pass it as --checkpoint") from e
    return folder
