"""The variant's recipe fitted to the run: its data, batch, length in epochs (or time budget).

The official recipes are written for COCO (118k images, batch 32-128, 58-500 epochs). `fit_recipe` returns a
TrainRecipe whose epoch numbers are already in the run's epochs (recipe.epochs == the run's epochs, so the
policy and the schedule scale by 1) and a line per decision, printed at the start of training:

- epoch boundaries (flat LR, augmentation policy, multi-scale stop, matcher change) keep their share of the run;
- learning rates scale with sqrt(batch / the recipe's batch) (AdamW's usual rule) above the recipe's batch and
  stay at the recipe's below it (times --lr-scale): on a 42-image set at batch 8, Atto with the rate scaled
  down (5e-4) reached half the AP50 of the recipe's 2e-3 after 66 epochs (0.066 against 0.123);
- on a small set the rate falls to 5% of itself by the end (the recipe: to half): on the 42-tile forest set a
  20-minute Atto run's held-out AP50 rose as long as the rate fell, and reached 0.299 against 0.285 (to half);
- warm-up is at most 5% of the run's iterations, so a short run does not spend its budget warming up;
- on a small set (under SMALL_SET images) there is no final no-augmentation phase and the photometric /
  zoom-out / IoU-crop augmentations run to the end (the recipe stops them at 80%, and its last 32 of 500
  epochs are unaugmented): a few dozen images seen unaugmented are learnt by heart. Cut to 2% of the epochs
  (3 of a 20-minute Pico run on the forest set), the phase still lowered the held-out AP50 from 0.264 to
  0.250; without it, two runs of the same day scored their best at their last epochs, 0.293 and 0.287;
- the EMA's horizon (1 / (1 - decay)) and its warm-up are at most 5% of the run's iterations (a horizon of 10%:
  Pico 0.288 / 0.291 on the forest set against 0.296 / 0.286 at 5% the same day);
- on a small set, augmentation may shrink the median object to two cells of the finest feature map and no
  further: zoom-out is limited to that, and a mosaic that would shrink objects below it (the recipe's halves
  every tile) keeps full-size tiles and crops a window instead; mosaic runs with p >= 0.5 (more objects per
  image: DEIM's dense one-to-one matching);
- on a small set, brightness varies x0.6..1.4 (the recipe: x0.875..1.125; YOLO's default: +-40%): trained on
  one site, Atto found half as many trees as YOLO11n on another place of it, twice as bright;
- on a small set, brightness, contrast, saturation and hue change on every image (the recipe: each with
  p=0.5) and the channels are never swapped (the recipe permutes them with p=0.5; YOLO never does): the
  objects' colours carry over to other sites. Pico's held-out AP50 on the forest set: 0.299 / 0.265 / 0.283 /
  0.282 (140-150 epochs, a slow day; that day's YOLO11n 0.281 / 0.288) against 0.251 / 0.273 without it
  (159-169 epochs) and 0.229-0.256 for the same day's runs of other changes (100 queries, rate x1.25, mosaic
  on every image); Atto 0.291;
- the minimum box size after augmentation drops to half the data's 5th-percentile short side;
- on a small set, the first 20% of the epochs also train every encoder anchor one-to-many (up to 10 anchors
  inside each object, chosen by score * IoU ** 6 as YOLOv8's assigner does) beside DETR's one-to-one matching:
  20-minute runs on the forest set reached held-out AP50 0.333 / 0.294 (Atto; 0.293-0.315 without it) and
  0.251 / 0.273 (Pico; 0.198 without it the same day). Kept on for the whole run, the encoder's several
  high-scoring anchors per object held the one-to-one decoder back (Pico's in-training AP50 stalled near 0.1
  for 50 epochs while the plain run climbed to 0.16).
On COCO-sized data with the recipe's batch and epochs every rule leaves the official recipe as it is.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..variants import TrainRecipe, Variant
from .data_check import DataStats, finest_stride

SMALL_SET = 2000  # images; under this the small-set rules apply
SMALL_SET_LR_GAMMA = 0.05  # the final rate's share of the initial on a small set
DENSE_POSITIVES = 10  # encoder anchors per object on a small set (YOLOv8's task-aligned assigner: 10)
DENSE_SHARE = 0.2  # ... in this share of the run's first epochs
SHARE = 0.05  # the most of a run's iterations warm-up and the EMA horizon take


def scale_epoch(epoch: int, factor: float) -> int:
    """A recipe epoch number in a run `factor` times as long: rounded half up, a non-zero one at least 1."""
    return 0 if epoch == 0 else max(1, int(np.floor(epoch * factor + 0.5)))


def fit_recipe(variant: Variant, stats: DataStats, batch: int, epochs: int, iters_per_epoch: int,
               lr_scale: float = 1.0, warmup_iters: int | None = None) -> tuple[TrainRecipe, list[str]]:
    """(recipe in run epochs, the decisions as lines). `warmup_iters` fixes the warm-up (a run refitted to a
    new length after it started keeps the warm-up it had)."""
    base = variant.recipe
    f = epochs / base.epochs
    total = epochs * iters_per_epoch
    small = stats.images < SMALL_SET
    lines = [f"recipe for {stats.images} images, batch {batch}, {epochs} epochs of {iters_per_epoch} iterations:"]

    lr_factor = max(1.0, math.sqrt(batch / base.total_batch_size)) * lr_scale
    lines.append(f"  learning rate {base.lr * lr_factor:.2e} (backbone {base.backbone_lr * lr_factor:.2e}): the "
                 f"recipe's {base.lr:.1e} at batch {base.total_batch_size}"
                 + (f", x sqrt({batch}/{base.total_batch_size})" if batch > base.total_batch_size else
                    f", kept at batch {batch}" if batch < base.total_batch_size else "")
                 + (f", x lr-scale {lr_scale:g}" if lr_scale != 1 else ""))
    lr_gamma = base.lr_gamma
    if small:  # a short run on a few images keeps improving as the rate falls: let it fall further
        lr_gamma = min(lr_gamma, SMALL_SET_LR_GAMMA)
        lines.append(f"  the rate falls to {lr_gamma:g}x by the end (the recipe: {base.lr_gamma:g}x)")
    if warmup_iters is None:
        warmup_iters = max(1, min(round(base.warmup_iters * f), round(SHARE * total)))
    lines.append(f"  warm-up {warmup_iters} iterations ({warmup_iters / total:.1%} of the run)")

    no_aug = scale_epoch(base.no_aug_epoch, f)
    if small:
        lines.append(f"  no epochs without augmentation at the end (the recipe: the last {no_aug}; none for a set "
                     f"under {SMALL_SET} images)")
        no_aug = 0
    else:
        lines.append(f"  last {no_aug} epoch(s) without augmentation")

    horizon = max(10.0, min(1.0 / (1.0 - base.ema_decay), SHARE * total))
    ema_decay = 1.0 - 1.0 / horizon
    ema_warmups = max(1, min(base.ema_warmups, round(SHARE * total)))
    lines.append(f"  EMA decay {ema_decay:.4f} (averages about {horizon:.0f} iterations), warm-up {ema_warmups}")

    stride, median = finest_stride(variant), stats.median_side()
    mosaic_prob, zoom_out_max, mosaic_size = base.mosaic_prob, base.zoom_out_max, base.mosaic_output_size
    mosaic_size = max(32, round(mosaic_size * stats.size / variant.input_size))
    keeps_scale = False
    if small and stats.boxes:  # objects shrunk below two cells are lost to a short run
        zoom_out_max = float(np.clip(median / (2 * stride), 1.0, base.zoom_out_max))
        if median * mosaic_size / stats.size < 2 * stride:  # the recipe's mosaic would shrink them below that
            mosaic_size, keeps_scale = stats.size, True
        mosaic_prob = max(mosaic_prob, 0.5)
        lines.append(f"  median object {median:.0f} px = {median / stride:.1f} stride-{stride} cells: zoom-out up to "
                     f"{zoom_out_max:.2g}x; mosaic p={mosaic_prob:g} "
                     + ("of full-size tiles, a window kept (objects keep their size)" if keeps_scale else
                        f"of {mosaic_size}-px tiles"))
    else:
        lines.append(f"  mosaic p={mosaic_prob:g}, zoom-out up to {zoom_out_max:g}x")
    short = np.percentile(stats.short_side, 5) if stats.boxes else base.min_box_size
    min_box = int(max(1, min(base.min_box_size, np.floor(short / 2))))
    lines.append(f"  boxes under {min_box} px dropped after augmentation (recipe: {base.min_box_size})")

    brightness, photometric_p, channel_swap = base.brightness, base.photometric_p, base.channel_swap
    if small:
        brightness = (min(brightness[0], 0.6), max(brightness[1], 1.4))
        photometric_p, channel_swap = 1.0, False
        lines.append(f"  brightness (x{brightness[0]:g}..{brightness[1]:g}; the recipe: x{base.brightness[0]:g}.."
                     f"{base.brightness[1]:g}), contrast, saturation and hue change on every image (the recipe: "
                     f"each with p={base.photometric_p:g}), the channels are never swapped: a few images show a few "
                     "lighting conditions, and objects keep their colours")
    p0, p1, p2 = (scale_epoch(e, f) for e in base.aug_policy_epochs)
    if small:
        p2 = epochs
        lines.append(f"  photometric distortion, zoom-out and IoU crop until the end (the recipe stops them at "
                     f"{base.aug_policy_epochs[2] / base.epochs:.0%} of the run)")
    dense, dense_epochs = base.dense_positives, base.dense_epochs
    if small:
        dense, dense_epochs = DENSE_POSITIVES, max(1, round(DENSE_SHARE * epochs))
        lines.append(f"  the first {dense_epochs} epochs also train the encoder's anchors one-to-many ({dense} per "
                     "object, task-aligned): a faster start")
    recipe = dataclasses.replace(
        base, epochs=epochs, lr=base.lr * lr_factor, backbone_lr=base.backbone_lr * lr_factor, lr_gamma=lr_gamma,
        total_batch_size=batch, warmup_iters=warmup_iters, flat_epoch=scale_epoch(base.flat_epoch, f),
        no_aug_epoch=no_aug, aug_policy_epochs=(p0, p1, p2),
        mixup_epochs=tuple(scale_epoch(e, f) for e in base.mixup_epochs),
        copyblend_epochs=tuple(scale_epoch(e, f) for e in base.copyblend_epochs),
        stop_epoch=scale_epoch(base.stop_epoch, f), matcher_change_epoch=scale_epoch(base.matcher_change_epoch, f),
        ema_decay=ema_decay, ema_warmups=ema_warmups, mosaic_prob=mosaic_prob, zoom_out_max=zoom_out_max,
        min_box_size=min_box, mosaic_output_size=mosaic_size, mosaic_keeps_scale=keeps_scale, brightness=brightness,
        photometric_p=photometric_p, channel_swap=channel_swap, dense_positives=dense, dense_epochs=dense_epochs)
    return recipe, lines
