"""One INT8 export, backend by backend the same: calibrate, choose the INT8 layers (recipe, then the sensitivity
search against the accuracy budget, measured on the QDQ graph in ONNX Runtime), and hand the backend the plan.

The search runs on ONNX Runtime because it quantizes in about a second; the backend (NNCF, the TFLite converter,
coremltools, TensorRT) then quantizes the same layers, and its own artifact is measured again by the gate.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..detector import Detector
from ..formats import format_of
from ..metadata import ArtifactMetadata
from ..progress import step
from ..runtimes.torch import TorchRuntime
from .data import CalibrationSet, load_calibration
from .gate import GateData, measure, public
from .hooks import Int8Hooks
from .qdq import QdqQuantizer
from .recipe import Plan, make_plan
from .sensitivity import rank_layers, search
from .settings import DEFAULT_BUDGET, QuantizeSettings

@dataclass
class Int8Plan:
    """What a backend needs to write its INT8 artifact, and what the report says about how it was chosen."""

    fp32_onnx: onnx.ModelProto
    calibration: CalibrationSet
    plan: Plan
    qdq_onnx: onnx.ModelProto | None  # the plan as a QDQ graph, where the target ships it (onnx-int8, trt-int8)
    figures: dict  # the gate's figures of the chosen plan as the search measured it (QDQ in ORT, or the backend's)
    rounds: list[dict] = field(default_factory=list)
    ranking: list[tuple[str, float]] = field(default_factory=list)
    backend_model: Any = None  # the backend's model of `plan` where the search made it last (hooks.search_on): the
    # export writes it instead of quantizing again

    def record(self, settings: QuantizeSettings) -> dict:
        """metadata.extra["int8"]: how the artifact was quantized."""
        return {"recipe": settings.recipe, "calib_method": settings.calib_method,
                "calibration": self.calibration.summary(), **self.plan.summary(), "search": self.rounds,
                "sensitivity": [list(s) for s in self.ranking[:10]]}


def plan_int8(model: Any, metadata: ArtifactMetadata, settings: QuantizeSettings, fp32_onnx: onnx.ModelProto,
              hooks: Int8Hooks = Int8Hooks(), progress: bool = True) -> tuple[Int8Plan, Detector, GateData]:
    """Calibrate on settings.calib_data, choose the INT8 layers and quantize `fp32_onnx` as the backend's `hooks`
    prepare it. The search measures each candidate as the QDQ graph in ONNX Runtime, or (hooks.search_on) as the
    backend's own artifact (fast enough for OpenVINO). Also returns the FP32 reference and the gate data for the
    final measurement."""
    settings.require_calibration("INT8")
    if hooks.prepare is not None:
        fp32_onnx = hooks.prepare(fp32_onnx, metadata)
    style = hooks.qdq_style
    backend = hooks.search_on(fp32_onnx, settings.calib_method) if hooks.search_on is not None else None
    calibration = load_calibration(settings.calib_data, metadata, settings.calib_size, progress=progress)
    step(f"calibration set: {len(calibration)} images" + (f", {len(calibration.skipped)} unreadable skipped"
                                                          if calibration.skipped else ""))
    reference = Detector(TorchRuntime.of(model, metadata))
    data = GateData.find(settings.val_data, calibration.images, f"{len(calibration)} calibration images (no "
                                                                   f"--val-data: agreement with FP32)")
    plan = make_plan(fp32_onnx, settings.recipe, activation_products=hooks.activation_products)
    with QdqQuantizer(fp32_onnx, calibration.batches(), plan.op_types, settings.calib_method, style,
                      progress) as quantizer, tempfile.TemporaryDirectory(prefix="deim-edge-gate-") as folder:
        cache: dict = {}
        last: dict = {}  # the backend's model of the plan measured last

        def measure_plan(candidate: Plan) -> dict:
            if backend is None:
                path = Path(folder) / "candidate.onnx"
                onnx.save(quantizer.quantize(candidate.nodes), str(path))
            else:
                last.clear()  # one backend model in memory at a time
                suffix, write = backend
                path, model = write(candidate.nodes, calibration.batches(), Path(folder) / f"candidate{suffix}")
                last[tuple(candidate.nodes)] = model
            step(f"measuring {candidate.recipe} INT8 ({len(candidate.nodes)} nodes, "
                 f"{len(candidate.float_layers)} layers kept float) as {path.suffix}")
            fmt = format_of(path)
            figures = measure(Detector(fmt.open(path, **fmt.check_options)), reference, data, cache.get("reference"),
                              progress)
            cache.setdefault("reference", figures["_reference"])
            return figures

        ranking: list = []

        def rank() -> list[tuple[str, float]]:
            ranking.extend(rank_layers(quantizer, plan, fp32_onnx, calibration.batches(), metadata, progress))
            return ranking

        if settings.recipe == "naive":  # the baseline: measured as it is, never searched
            chosen, figures, rounds = plan, measure_plan(plan), []
        else:
            budget = settings.max_drop if settings.max_drop is not None else DEFAULT_BUDGET
            chosen, figures, rounds = search(plan, measure_plan, rank, budget, fail=settings.max_drop is not None)
        qdq = quantizer.quantize(chosen.nodes) if hooks.ships_qdq else None
    return (Int8Plan(fp32_onnx, calibration, chosen, qdq, public(figures), rounds, ranking,
                     last.get(tuple(chosen.nodes))), reference, data)
