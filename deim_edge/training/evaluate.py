"""COCO box AP of a model on a CocoDetection set: its detections, made as at deployment, scored by
deim_edge.accuracy."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..accuracy import score
from ..decode import decode
from ..errors import ConfigError
from ..preprocess import preprocess
from ..progress import Progress
from ..results import Detections
from ..sizes import as_hw
from .data.coco import CocoDetection


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: CocoDetection, batch_size: int = 8,
                    input_size: int | tuple[int, int] | None = None, device: str | torch.device = "cpu",
                    max_det: int = 300, progress: bool = False) -> dict[int, Detections]:
    """{image id: Detections in original pixels} of a DEIMv2 model over every image of `dataset`.

    Images go through exactly what Detector does at deployment (deim_edge.preprocess: stretch to
    input_size, default model.input_size, /255, the variant's normalization; deim_edge.decode; boxes
    mapped back to the image and clipped), so AP measured here is the AP an artifact should keep.
    The model must already be on `device`; its training mode is restored afterwards.
    """
    if dataset.transforms is not None:
        raise ConfigError("evaluate a CocoDetection built without transforms (transforms=None): evaluation "
                          "resizes each image itself and maps boxes back to the file's size")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    height, width = as_hw(model.input_size if input_size is None else input_size)
    variant = model.variant
    was_training = model.training
    model.eval()
    detections: dict[int, Detections] = {}
    try:
        with Progress(len(dataset), "evaluate") if progress else contextlib.nullcontext() as bar:
            for start in range(0, len(dataset), batch_size):
                stop = min(start + batch_size, len(dataset))
                samples = [dataset[i] for i in range(start, stop)]
                batch, transforms = preprocess([image for image, _ in samples], (height, width),
                                               mean=variant.mean, std=variant.std)  # [B,3,H,W]
                out = model(torch.from_numpy(batch).to(device))
                scores, labels, boxes = decode(out["pred_logits"].float().cpu().numpy(),
                                               out["pred_boxes"].float().cpu().numpy(), max_det)  # [B,K], [B,K,4]
                for (_, target), t, s, lab, b in zip(samples, transforms, scores, labels, boxes):
                    detections[target["image_id"]] = Detections(t.to_original(b), s, lab, dataset.class_names,
                                                                t.original_size)
                if bar is not None:
                    bar.update(stop - start)
    finally:
        model.train(was_training)
    return detections


def evaluate(model: nn.Module, dataset: CocoDetection, batch_size: int = 8,
             input_size: int | tuple[int, int] | None = None, device: str | torch.device = "cpu",
             max_det: int = 300, progress: bool = False) -> dict[str, float]:
    """COCO bbox metrics {AP, AP50, AP75, APs, APm, APl} of a DEIMv2 model on `dataset` (see
    predict_dataset for the preprocessing and deim_edge.accuracy.score for the metrics)."""
    detections = predict_dataset(model, dataset, batch_size, input_size, device, max_det, progress)
    return score(dataset.coco, detections, dataset.category_ids, dataset.image_ids)
