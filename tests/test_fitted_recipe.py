"""The dataset check (numbers, suggestions, histogram) and the recipe fitted to data, batch and run length."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from deim_edge.training.data import CocoDetection
from deim_edge.training.data_check import DataStats, report, write_histogram
from deim_edge.training.fitted_recipe import SMALL_SET, fit_recipe, scale_epoch
from deim_edge.variants import get_variant


def make_set(root: Path, sides: list[list[float]], size: int = 320, classes=("a", "b"),
             twice: bool = False) -> CocoDetection:
    """A COCO set with one image per entry of `sides`, each with square class-0 boxes of those sides, 100 px
    apart; `twice`: the last box is labelled a second time, half a pixel off."""
    (root / "img").mkdir(parents=True)
    images, anns = [], []
    for i, row in enumerate(sides, 1):
        cv2.imwrite(str(root / "img" / f"{i}.png"), np.zeros((size, size, 3), np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "width": size, "height": size})
        for k, side in enumerate(row):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "bbox": [100 * k, 100 * k, side, side]})
    if twice:
        anns.append({**anns[-1], "id": len(anns) + 1, "bbox": [v + 0.5 for v in anns[-1]["bbox"]]})
    categories = [{"id": j + 1, "name": n} for j, n in enumerate(classes)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return CocoDetection(root / "img", root / "ann.json")


def test_check_measures_at_the_training_size_and_suggests(tmp_path):
    data = make_set(tmp_path, [[16, 16, 20], [24, 80], [80]], size=640, twice=True)
    stats = DataStats.of(data, 320)  # half the image size: every box halves
    assert stats.images == 3 and stats.boxes == 7
    assert stats.median_side() == pytest.approx(12.0)
    assert stats.per_image.tolist() == [3, 2, 2] and stats.per_class.tolist() == [7, 0]
    text = "\n".join(report(stats, get_variant("deimv2-atto")))
    assert "finest stride 16" in text and "under one stride-16 cell" in text
    assert "train at --imgsz" in text and "python -m deim_edge tile" in text
    assert "classes without any training box (b)" in text
    assert "1 pairs of same-class boxes overlap" in text
    png = write_histogram(stats, get_variant("deimv2-atto"), tmp_path / "dataset.png")
    assert cv2.imread(str(png)).shape[2] == 3


def test_check_is_quiet_on_clean_data(tmp_path):
    stats = DataStats.of(make_set(tmp_path, [[60, 70], [80]], classes=("a",)), 320)
    assert not [line for line in report(stats, get_variant("deimv2-atto")) if line.startswith("suggestion")]


def test_a_coco_sized_run_keeps_the_official_recipe(tmp_path):
    variant = get_variant("deimv2-pico")
    base = variant.recipe
    stats = DataStats.of(make_set(tmp_path, [[30, 200]]), 640)
    stats.images = 118_287  # COCO train2017
    recipe, _ = fit_recipe(variant, stats, base.total_batch_size, base.epochs, 924)
    assert recipe == base  # lr at the recipe's batch, warm-up, phases, EMA and augmentation all as published


def test_a_small_short_run_is_fitted(tmp_path):
    variant = get_variant("deimv2-atto")
    base = variant.recipe
    stats = DataStats.of(make_set(tmp_path, [[38, 40, 36]] * 4), 320)
    assert stats.images < SMALL_SET
    recipe, lines = fit_recipe(variant, stats, batch=8, epochs=100, iters_per_epoch=5)
    assert recipe.epochs == 100 and recipe.lr == base.lr  # kept below the recipe's batch (128)
    assert base.lr_gamma == 0.5 and recipe.lr_gamma == 0.05  # the rate falls to 5% of itself, not half
    assert recipe.warmup_iters <= 0.05 * 500 and recipe.ema_warmups <= 25 and 1 / (1 - recipe.ema_decay) <= 25
    assert base.no_aug_epoch == 32 and recipe.no_aug_epoch == 0 and recipe.aug_policy_epochs[2] == 100  # none
    assert recipe.flat_epoch == scale_epoch(base.flat_epoch, 100 / base.epochs) == 50
    assert recipe.matcher_change_epoch == 90
    assert 1 <= recipe.zoom_out_max < 1.3  # 38 px: 2.4 cells of stride 16, never shrunk below 2
    assert recipe.mosaic_prob == 0.5 and recipe.mosaic_keeps_scale and recipe.mosaic_output_size == 320
    assert recipe.min_box_size == 12  # half the 5th-percentile short side (36 px) is above the recipe's 12
    assert base.dense_epochs == 0 and (recipe.dense_positives, recipe.dense_epochs) == (10, 20)  # one-to-many
    assert recipe.brightness == (0.6, 1.4) and recipe.photometric_p == 1.0 and not recipe.channel_swap
    assert base.photometric_p == 0.5 and base.channel_swap  # torchvision's, as the official recipe
    assert any("learning rate" in line for line in lines) and any("warm-up" in line for line in lines)
    again, _ = fit_recipe(variant, stats, batch=8, epochs=300, iters_per_epoch=5, warmup_iters=recipe.warmup_iters)
    assert again.warmup_iters == recipe.warmup_iters and again.flat_epoch == 150


def test_a_larger_batch_scales_the_learning_rate_up(tmp_path):
    variant = get_variant("deimv2-s")  # recipe batch 32
    stats = DataStats.of(make_set(tmp_path, [[200]]), 640)
    recipe, _ = fit_recipe(variant, stats, batch=128, epochs=10, iters_per_epoch=5, lr_scale=0.5)
    assert recipe.lr == pytest.approx(variant.recipe.lr * 2 * 0.5)  # sqrt(128 / 32), times lr-scale


def test_the_time_budget_counts_epochs_at_the_recent_pace():
    from deim_edge.training.budget import TimeBudget, pace

    history = [{"train_s": 50.0, "time_s": 52.0}, {"train_s": 9.0, "time_s": 10.0, "AP": 0.1},
               {"train_s": 11.0, "time_s": 13.0, "AP": 0.2}, {"train_s": 10.0, "time_s": 10.0}]
    assert pace([]) == (None, 0.0) and pace(history) == (10.5, 1.5)  # medians: the slow first epoch is outvoted
    budget = TimeBudget(1.0)  # 60 s from now
    assert budget.epochs_that_fit(3, 10.0, 2.0) == 3 + 4  # 4 more of 12 s fit in ~59.99 s
    assert budget.epochs_that_fit(3, 100.0, 0.0) == 4  # always at least one more
    assert budget.fits_another(history) and budget.fits_another([])
    budget.seconds = 5.0
    assert not budget.fits_another(history)
