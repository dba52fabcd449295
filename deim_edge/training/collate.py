"""Collate: a list of equally sized samples -> (images [B,3,H,W] float32, targets), with the batch-level
Dense O2O augmentations (MixUp / Copy-Blend) and multi-scale resizing of a policy, as DEIMv2's collate does."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .data.coco import Sample
from .dense_o2o import AugmentationPolicy

Normalize = tuple[Sequence[float], Sequence[float]]  # (mean, std) per RGB channel of [0, 1] pixels


def images_to_tensor(images: Sequence[np.ndarray], normalize: Normalize | None = None) -> Tensor:
    """Equally sized HxWx3 uint8 RGB images -> float32 [B,3,H,W] in [0, 1], then (x - mean) / std when
    `normalize` = (mean, std) is given."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)  # [B,3,H,W]
    if normalize is not None:
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in normalize)
        batch = batch.sub_(mean).div_(std)
    return batch.contiguous()


def target_to_tensors(target: dict, height: int, width: int) -> dict:
    """A sample's target for an image of height x width -> {"labels" int64 [N], "boxes" float32 [N,4]
    normalized cx,cy,w,h, "image_id", "orig_size"} (plus "mixup" float32 [N] when the target has it)."""
    xyxy = torch.as_tensor(np.asarray(target["boxes"], np.float32).reshape(-1, 4))  # [N,4] pixels
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1) / scale
    out = {"labels": torch.as_tensor(np.asarray(target["labels"], np.int64)), "boxes": boxes,
           "image_id": target["image_id"], "orig_size": target["orig_size"]}
    if "mixup" in target:
        out["mixup"] = torch.as_tensor(np.asarray(target["mixup"], np.float32))
    return out


class Collate:
    """Turns a list of samples (all resized to one size by the transforms) into a training batch.

    With a policy, each batch of epoch `e` (set with `set_epoch(e)` before the epoch) first goes through
    `policy.mix_batch` (MixUp or Copy-Blend on the uint8 images) and is then resized, nearest neighbour as
    DEIMv2 does, to a square size drawn by `policy.batch_size_px(e, base_size, ...)`; normalized boxes do
    not change with it. base_size defaults to the larger side of the batch's images.

    Randomness: each batch draws from np.random.default_rng([seed, epoch, *image_ids of the batch]) -- a
    key that needs no state, so a batch gets the same augmentation whatever DataLoader worker collates it
    and in a run resumed at any epoch (given the same sampler order). Image ids must be non-negative.
    The object is plain data and pickles for DataLoader workers; with persistent_workers=True the workers
    keep the epoch they were started with, so leave persistent_workers off when using a policy.
    """

    def __init__(self, policy: AugmentationPolicy | None = None, normalize: Normalize | None = None,
                 base_size: int | None = None, seed: int = 0) -> None:
        if normalize is not None and (len(normalize) != 2 or any(len(v) != 3 for v in normalize)):
            raise ConfigError(f"normalize must be (mean, std) with three values each, got {normalize!r}; "
                              "pass get_variant(name).mean and .std, or None")
        self.policy, self.normalize, self.base_size, self.seed = policy, normalize, base_size, int(seed)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch (0-based) whose augmentations the next batches get."""
        self.epoch = int(epoch)

    def batch_rng(self, image_ids: Sequence[int]) -> np.random.Generator:
        """The generator of the batch holding these images in this epoch."""
        return np.random.default_rng([self.seed, self.epoch or 0, *(int(i) for i in image_ids)])

    def __call__(self, samples: Sequence[Sample]) -> tuple[Tensor, list[dict]]:
        if not samples:
            raise ConfigError("cannot collate an empty batch; check the dataset is not empty")
        images, targets = [s[0] for s in samples], [s[1] for s in samples]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise ConfigError(f"a batch needs equally sized images, got {sorted(shapes)}; end the transforms "
                              "with Resize((h, w))")
        size_px = None
        if self.policy is not None:
            if self.epoch is None:
                raise ConfigError("this Collate has an augmentation policy: call set_epoch(epoch) before each epoch")
            rng = self.batch_rng([t["image_id"] for t in targets])
            images, targets = self.policy.mix_batch(images, targets, self.epoch, rng)
            base = self.base_size or max(images[0].shape[:2])
            size_px = self.policy.batch_size_px(self.epoch, base, rng)
        h, w = images[0].shape[:2]
        batch = images_to_tensor(images, self.normalize)  # [B,3,H,W]
        if size_px is not None and (h, w) != (size_px, size_px):
            batch = F.interpolate(batch, size=(size_px, size_px), mode="nearest")
        return batch, [target_to_tensors(t, h, w) for t in targets]
