"""Sensitivity analysis: how much each INT8 layer alone moves the detections, and the search that moves the
worst layers back to float until the accuracy drop is within the budget.

A layer's sensitivity is measured on a few calibration images with only that layer in INT8 (ONNX Runtime,
QDQ): the FP32 graph's detections (score >= gate.REF_CONF) not found again, plus the IoU lost on those found,
plus their mean score error. The search then quantizes the plan, measures it with the gate, and while the drop
exceeds the budget moves the most sensitive INT8 layer left back to float.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx

from ..errors import AccuracyGateError
from ..metadata import ArtifactMetadata
from ..progress import Progress, step
from ..results import Detections
from .gate import detection_agreement, summary
from .qdq import INPUT_NAME, QdqQuantizer
from .recipe import Plan

SENSITIVITY_IMAGES = 16
MAX_ROUNDS = 12  # layers moved back to float, one gate measurement each, before giving up


def rank_layers(quantizer: QdqQuantizer, plan: Plan, proto: onnx.ModelProto, batches: Sequence[np.ndarray],
                metadata: ArtifactMetadata, progress: bool = True) -> list[tuple[str, float]]:
    """(layer, sensitivity) for every INT8 layer of `plan`, most sensitive first."""
    batches = list(batches[:SENSITIVITY_IMAGES])
    reference = _detections(_session(proto), batches, metadata)
    kept = set(plan.float_layers)
    scores = []
    layers = [layer for layer in plan.layers if layer not in kept]
    step(f"sensitivity of {len(layers)} INT8 layers, each alone, on {len(batches)} images")
    with Progress(len(layers), "sensitivity", enabled=progress) as bar:
        for layer in layers:
            session = _session(quantizer.quantize(plan.layers[layer]))
            a = detection_agreement(reference, _detections(session, batches, metadata))
            scores.append((layer, round((1 - a["matched"]) + (1 - (a["mean_iou"] or 0)) + (a["score_error"] or 0), 5)))
            bar.update(note=layer)
    return sorted(scores, key=lambda s: -s[1])


def search(plan: Plan, measure: Callable[[Plan], dict], ranking: Callable[[], list[tuple[str, float]]],
           budget: float, fail: bool) -> tuple[Plan, dict, list[dict]]:
    """Measure `plan`; while its drop exceeds `budget`, move the next most sensitive layer (from `ranking`, asked
    for once, when first needed) back to float and measure again. Returns the plan, its figures and the rounds.
    When the budget is not reached: AccuracyGateError if `fail`, else the best plan seen."""
    figures = measure(plan)
    rounds = [{"float_layers": list(plan.float_layers), "drop": figures["drop"]}]
    best = (figures["drop"], plan, figures)
    order: list[tuple[str, float]] | None = None
    while figures["drop"] > budget and len(rounds) <= MAX_ROUNDS:
        order = order if order is not None else [s for s in ranking() if s[0] not in plan.float_layers]
        if not order or len(plan.layers) - len(set(plan.float_layers)) <= 1:
            break  # nothing left to move, or only the last INT8 layer (an all-float model is not INT8)
        layer, sensitivity = order.pop(0)
        plan = plan.keep_float(layer)
        step(f"drop {figures['drop']:.2f} > {budget:g}: {layer} (sensitivity {sensitivity:g}) back to float")
        figures = measure(plan)
        rounds.append({"float_layers": list(plan.float_layers), "drop": figures["drop"]})
        if figures["drop"] < best[0]:
            best = (figures["drop"], plan, figures)
    if figures["drop"] > budget:
        message = (f"INT8 could not keep the accuracy drop within {budget:g} ({len(rounds) - 1} layers moved back "
                   f"to float; best: {summary(best[2])})")
        if fail:
            raise AccuracyGateError(message + "; nothing was written. Try more --calib-size images, another "
                                    "--calib-method, or an fp16 target")
        step(message + "; keeping the best")
        _, plan, figures = best
    return plan, figures, rounds


def _session(proto: onnx.ModelProto):
    from ..runtimes.onnxruntime import ort_session

    return ort_session(proto.SerializeToString())


def _detections(session, batches: Sequence[np.ndarray], metadata: ArtifactMetadata) -> list[Detections]:
    from ..decode import top_detections

    out = []
    names = [o.name for o in session.get_outputs()]
    for batch in batches:
        outputs = dict(zip(names, session.run(None, {INPUT_NAME: batch})))
        scores, labels, boxes = top_detections(outputs, metadata.output, metadata.max_det)
        out.append(Detections(boxes[0], scores[0], labels[0]))
    return out
