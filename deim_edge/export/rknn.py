"""The rknn and rknn-int8 targets: Rockchip NPU models (.rknn) built by rknn-toolkit2 from the npu profile's ONNX
graph (no GridSample, no TopK, decoded on the host), then checked against PyTorch and measured by the accuracy gate
in the toolkit's simulator while the worker that built them still holds them (export/rknn_toolkit.py). The metadata,
with the gate's figures, goes beside the file (formats/rknn.py).

rknn: one FP16 model. rknn-int8, recipe detr: two models run in turn, the backbone and encoder quantized by the
toolkit on the calibration images (<name>.rknn) and the decoder in FP16 (<name>.decoder.rknn). One model cannot
hold both: the toolkit runs comparisons (Equal, Greater) in int8 even in layers its hybrid quantization keeps FP16,
so the npu graph's top-k by comparisons sees ranks 0..499 on 256 levels and keeps one query (Atto @320: 36 AP points
lost, against 0.02 to 0.7 split). Recipe naive: everything INT8 in one model, the baseline the gate refuses (42).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from ..calibration.data import CalibrationSet, load_calibration
from ..calibration.hooks import Int8Hooks
from ..calibration.recipe import INT8_SCOPES
from ..calibration.settings import QuantizeSettings
from ..compare import output_agreement
from ..errors import ExportError
from ..formats import get_format
from ..formats.rknn import pixels, write_metadata
from ..metadata import OUTPUT_NAMES, RAW, ArtifactMetadata
from ..preprocess import preprocess
from ..progress import step
from .graph import wrap
from .onnx import INPUT_NAME, build_onnx
from .rknn_toolkit import Simulator

ALGORITHMS = {"minmax": "normal", "entropy": "kl_divergence"}  # --calib-method -> the toolkit's quantized_algorithm
INT8_HOOKS = Int8Hooks(calib_methods=tuple(ALGORITHMS))  # the toolkit quantizes: no search, no QDQ graph
DECODER_SUFFIX = ".decoder.rknn"


def export_rknn(model: nn.Module, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed, npu ops) as .rknn stages at `out_path` with the metadata beside it; options: opset,
    simplify, verify, platform, rknn_python (found by rknn_toolkit.find_toolkit), quantize (the export's
    QuantizeSettings: calibration and gate data), progress."""
    settings: QuantizeSettings = options["quantize"]
    if metadata.batch != 1:
        raise ExportError("RKNN models here take one image at a time: export with --batch 1")
    proto = build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"]))
    with tempfile.TemporaryDirectory(prefix="deim-edge-rknn-") as tmp:
        folder = Path(tmp)
        calibration = None
        if metadata.precision == "int8":
            calibration = load_calibration(settings.calib_data, metadata, settings.calib_size,
                                           progress=options["progress"])
        stages = _stages(proto, out_path, folder, metadata, settings, calibration)
        mean = [255.0 * m for m in metadata.mean] if metadata.mean is not None else [0.0] * 3
        std = [255.0 * s for s in metadata.std] if metadata.std is not None else [255.0] * 3
        job = {"platform": options["platform"], "mean": mean, "std": std, "log": str(folder / "toolkit.log"),
               "stages": stages}
        with Simulator(options["rknn_python"], job, metadata, folder) as simulator:
            metadata = metadata.with_(extra={**metadata.extra, "rknn": {
                "platform": options["platform"], "toolkit": simulator.toolkit,
                "stages": [{"file": Path(s["rknn"]).name, "precision": "int8" if s["quantize"] else "fp16"}
                           for s in stages]}})
            if options["verify"]:
                _check(simulator, model, metadata)
            if calibration is not None or settings.val_data is not None or settings.max_drop is not None:
                figures = _measure(simulator, model, metadata, settings, calibration, options["progress"])
                metadata = metadata.with_(extra={**metadata.extra, "accuracy": figures})
    if calibration is not None:
        metadata = metadata.with_(extra={**metadata.extra, "int8": {
            "recipe": settings.recipe, "calib_method": settings.calib_method,
            "quantized_algorithm": ALGORITHMS[settings.calib_method], "calibration": calibration.summary()}})
    write_metadata(out_path, metadata)
    return out_path


def _stages(proto: onnx.ModelProto, out_path: Path, folder: Path, metadata: ArtifactMetadata,
            settings: QuantizeSettings, calibration: CalibrationSet | None) -> list[dict]:
    """The worker's stages (see rknn_worker.py) and their ONNX files in `folder`: the graph in FP16; or INT8, the
    whole graph (recipe naive) or the part before the decoder, followed by the decoder in FP16 (recipe detr)."""
    graph = folder / "model.onnx"
    onnx.save(proto, str(graph))
    if calibration is None:
        return [_stage(graph, out_path)]
    dataset = _dataset(calibration, metadata, folder)
    algorithm = ALGORITHMS[settings.calib_method]
    if settings.recipe == "naive":
        return [_stage(graph, out_path, dataset, algorithm)]
    boundary = _decoder_inputs(proto)
    step(f"splitting the graph before the decoder ({len(boundary)} feature maps): INT8 backbone and encoder, "
         f"FP16 decoder")
    encoder, decoder = folder / "encoder.onnx", folder / "decoder.onnx"
    onnx.utils.extract_model(str(graph), str(encoder), [INPUT_NAME], boundary)
    onnx.utils.extract_model(str(graph), str(decoder), boundary, list(OUTPUT_NAMES[RAW]))
    return [_stage(encoder, out_path, dataset, algorithm),
            _stage(decoder, out_path.with_suffix(DECODER_SUFFIX))]


def _stage(graph: Path, rknn: Path, dataset: Path | None = None, algorithm: str | None = None) -> dict:
    return {"onnx": str(graph), "rknn": str(rknn), "quantize": dataset is not None,
            "dataset": None if dataset is None else str(dataset), "algorithm": algorithm}


def _decoder_inputs(proto: onnx.ModelProto) -> list[str]:
    """The tensors the INT8 part of the detr recipe (calibration.recipe.INT8_SCOPES) hands to the rest, in order."""
    made_in = {out: node.name.startswith(INT8_SCOPES) for node in proto.graph.node for out in node.output}
    boundary = [name for node in proto.graph.node if not node.name.startswith(INT8_SCOPES)
                for name in node.input if made_in.get(name)]
    if not boundary:
        raise ExportError(f"no tensor goes from {', '.join(INT8_SCOPES)} to the decoder: is it a deim-edge graph?")
    return list(dict.fromkeys(boundary))


def _dataset(calibration: CalibrationSet, metadata: ArtifactMetadata, folder: Path) -> Path:
    """The toolkit's calibration list: one uint8 [1, 3, H, W] pixel file per image (it normalizes them itself)."""
    (folder / "calibration").mkdir()
    files = []
    for i, batch in enumerate(calibration.batches()):
        files.append(folder / "calibration" / f"{i:05d}.npy")
        np.save(files[-1], pixels(batch, metadata).transpose(0, 3, 1, 2))
    (folder / "dataset.txt").write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    return folder / "dataset.txt"


def _check(simulator: Simulator, model: nn.Module, metadata: ArtifactMetadata) -> None:
    """ExportError unless the simulator reproduces `model` on a random image within the format's check (FP16; INT8
    is measured by the gate), as verify.py does for the runtimes that run here."""
    check = get_format("rknn").checks.get(metadata.precision)
    if check is None:
        step(f"{metadata.precision} rknn: not checked against PyTorch on a random input (the accuracy gate "
             f"measures it)")
        return
    h, w = metadata.input_size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)  # pixels: what the model takes
    images, _ = preprocess([image], (h, w), resize=metadata.resize, mean=metadata.mean, std=metadata.std)
    with torch.no_grad():
        expected = dict(zip(OUTPUT_NAMES[RAW], (t.numpy() for t in wrap(model, metadata)(torch.from_numpy(images)))))
    step("comparing the RKNN simulator with PyTorch on a random input")
    a = output_agreement(expected, simulator.run(images), RAW, check.top, check.min_iou)
    step(f"top-{check.top} detections found again: {a.share:.0%}, largest score/box difference {a.max_diff:.2g}")
    if a.share < check.min_share:
        raise ExportError(f"the RKNN model disagrees with PyTorch on a random input in the simulator: {a.share:.0%} "
                          f"of the top {check.top} detections found again (need {check.min_share:.0%}); try "
                          f"--no-simplify, or export with --no-verify and measure it on your images (--val-data)")


def _measure(simulator: Simulator, model: nn.Module, metadata: ArtifactMetadata, settings: QuantizeSettings,
             calibration: CalibrationSet | None, progress: bool) -> dict:
    """The accuracy gate's figures of the simulated model against the FP32 PyTorch model: on --val-data, else on
    the calibration images (INT8) or the bundled samples, as the other targets measure theirs."""
    from ..calibration.gate import GateData, measure, public
    from ..detector import Detector
    from ..runtimes.torch import TorchRuntime
    from .api import float_gate

    if calibration is None:
        reference, data = float_gate(model, metadata, settings)
    else:
        reference = Detector(TorchRuntime.of(model, metadata))
        data = GateData.find(settings.val_data, calibration.images,
                             f"{len(calibration)} calibration images (no --val-data: agreement with FP32)")
    step(f"measuring the RKNN model in rknn-toolkit2's simulator ({data.description})")
    figures = public(measure(Detector(simulator), reference, data, None, progress))
    platform = metadata.extra["rknn"]["platform"]
    return {**figures, "measured": f"rknn-toolkit2 {simulator.toolkit} simulator ({platform})"}
