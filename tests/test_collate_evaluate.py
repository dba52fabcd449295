"""Collate (tensors, normalization, box conversion, batch augmentations, seeding) and COCO evaluation."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from deim_edge.accuracy import METRICS, score
from deim_edge.errors import ConfigError
from deim_edge.results import Detections
from deim_edge.training.collate import Collate
from deim_edge.training.data.coco import CocoDetection
from deim_edge.training.data.synthetic import make_synthetic_coco
from deim_edge.training.dense_o2o import AugmentationPolicy
from deim_edge.training.evaluate import evaluate
from deim_edge.training.transforms import resize
from deim_edge.variants import get_variant

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _samples(n: int = 4, size: int = 64) -> list:
    """n synthetic samples of size x size with two known boxes each."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        boxes = np.array([[0, 0, 32, 16], [16 + i, 8, 48 + i, 56]], np.float32)
        target = {"boxes": boxes, "labels": np.array([i % 3, 1], np.int64), "image_id": 10 + i,
                  "orig_size": (100, 120)}
        samples.append((image, target))
    return samples


def _policy(**changes) -> AugmentationPolicy:
    """A short policy with MixUp always on and multi-scale in every epoch (unless changed)."""
    fields = {"epochs": 10, "no_aug_epoch": 0, "stop_epoch": 10, "mixup_prob": 1.0, "mixup_epochs": (0, 10),
              "base_size_repeat": 1, **changes}
    recipe = dataclasses.replace(get_variant("deimv2-atto").recipe, **fields)
    return AugmentationPolicy(recipe)


def test_collate_shapes_and_boxes():
    samples = _samples()
    images, targets = Collate()(samples)
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_allclose(images[1].permute(1, 2, 0).numpy() * 255, samples[1][0], atol=1e-3)
    t = targets[1]
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [1, 1]
    assert t["boxes"].dtype == torch.float32
    np.testing.assert_allclose(t["boxes"][0].numpy(), [16 / 64, 8 / 64, 32 / 64, 16 / 64])
    np.testing.assert_allclose(t["boxes"][1].numpy(), [33 / 64, 32 / 64, 0.5, 0.75])
    assert t["image_id"] == 11 and t["orig_size"] == (100, 120)


def test_collate_normalizes_and_keeps_empty_targets():
    image, target = _samples(1)[0]
    empty = {**target, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    images, targets = Collate(normalize=(MEAN, STD))([(image, empty)])
    expected = (image / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(images[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert targets[0]["boxes"].shape == (0, 4) and targets[0]["labels"].shape == (0,)


def test_collate_rejects_mixed_sizes_and_missing_epoch():
    samples = _samples(2)
    with pytest.raises(ConfigError, match="Resize"):
        Collate()([samples[0], (samples[1][0][:32], samples[1][1])])
    with pytest.raises(ConfigError, match="set_epoch"):
        Collate(_policy())(samples)


def test_multiscale_changes_size_not_boxes():
    samples = _samples(size=320)
    plain_images, plain = Collate()(samples)
    collate = Collate(_policy(mixup_prob=0.0))
    collate.set_epoch(0)
    sizes = set()
    for seed in range(12):
        collate.seed = seed
        images, targets = collate(samples)
        sizes.add(images.shape[-1])
        assert images.shape[-2] == images.shape[-1]
        for t, p in zip(targets, plain):
            torch.testing.assert_close(t["boxes"], p["boxes"])
    assert len(sizes) > 1 and sizes <= {224, 256, 288, 320, 352, 384}
    collate.set_epoch(10)  # past stop_epoch: no resizing
    assert collate(samples)[0].shape == plain_images.shape


def test_mixup_and_determinism():
    samples = _samples()
    collate = Collate(_policy(base_size_repeat=None), seed=3)
    collate.set_epoch(2)
    images, targets = collate(samples)
    assert len(targets[0]["labels"]) == 4 and targets[0]["mixup"].shape == (4,)
    assert not torch.equal(images, Collate()(samples)[0])  # the images were blended
    again = pickle.loads(pickle.dumps(collate))(samples)  # what a DataLoader worker computes
    torch.testing.assert_close(again[0], images)
    for a, b in zip(again[1], targets):
        torch.testing.assert_close(a["mixup"], b["mixup"])
    collate.set_epoch(3)
    assert not torch.equal(collate(samples)[0], images)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> CocoDetection:
    root = make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=10, image_size=(96, 128), split_val=0.0)
    return CocoDetection(root.train_images, root.train_json)


def _ground_truth(dataset: CocoDetection, shift: float = 0.0) -> dict[int, Detections]:
    """Each image's ground truth as detections (score 1), moved right by `shift` of its width."""
    dets = {}
    for i in range(len(dataset)):
        _, t = dataset[i]
        boxes = t["boxes"] + np.array([1, 0, 1, 0], np.float32) * shift * (t["boxes"][:, 2:3] - t["boxes"][:, 0:1])
        dets[t["image_id"]] = Detections(boxes, np.ones(len(boxes)), t["labels"])
    return dets


def _score(dataset: CocoDetection, detections: dict[int, Detections]) -> dict[str, float]:
    return score(dataset.coco, detections, dataset.category_ids, dataset.image_ids)


def test_scoring_a_dataset_ground_truth(synthetic):
    perfect = _score(synthetic, _ground_truth(synthetic))
    assert set(perfect) == set(METRICS)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    shifted = _score(synthetic, _ground_truth(synthetic, shift=0.3))
    assert shifted["AP"] < 0.9 and shifted["AP75"] < perfect["AP75"]


def test_scoring_a_dataset_empty_and_unknown(synthetic):
    assert _score(synthetic, {})["AP"] == 0.0
    no_boxes = {i: Detections.empty() for i in synthetic.image_ids}
    assert _score(synthetic, no_boxes)["AP50"] == 0.0
    with pytest.raises(ConfigError, match="not in the dataset"):
        _score(synthetic, {999: Detections.empty()})


def test_evaluate_model_end_to_end(tmp_path):
    from deim_edge.models import build_model

    root = make_synthetic_coco(tmp_path, num_images=4, image_size=(240, 300), split_val=0.0)
    dataset = CocoDetection(root.train_images, root.train_json)
    torch.manual_seed(0)
    model = build_model("deimv2-atto", num_classes=dataset.num_classes, input_size=320)
    assert model.training
    metrics = evaluate(model, dataset, batch_size=3)
    assert set(metrics) == set(METRICS)
    assert all(-1.0 <= v <= 1.0 for v in metrics.values()) and metrics["AP"] < 0.1
    assert model.training  # restored
    resized = CocoDetection(root.train_images, root.train_json, transforms=lambda im, t: resize(im, t, 320, 320))
    with pytest.raises(ConfigError, match="transforms=None"):
        evaluate(model, resized)
