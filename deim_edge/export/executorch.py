"""ExecuTorch (.pte) export: the deployed model in the metadata's layout, captured with torch.export at the
metadata's fixed batch and size, lowered to the XNNPACK delegate, the metadata JSON stored as a constant method of
the program (formats/executorch.py). Phones and boards run it with ExecuTorch's C++ runtime; this machine with
its Python runtime (runtimes/executorch.py).

executorch-int8 quantizes with PT2E (XNNPACK's quantizer: symmetric INT8, per-channel weights) exactly the
modules of the shared INT8 plan (calibration/int8.py: the DETR recipe, searched on the QDQ graph in ONNX Runtime;
decoder float), calibrated on the same images; the export's gate then measures the .pte itself."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..calibration.hooks import Int8Hooks
from ..errors import ExportError, MissingDependencyError
from ..formats.executorch import METHOD
from ..metadata import ArtifactMetadata
from ..progress import step
from .graph import wrap


def export_executorch(model: nn.Module, metadata: ArtifactMetadata, out_path: Path,
                      options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as an XNNPACK-delegated ExecuTorch program with `metadata`."""
    if metadata.batch is None:
        raise ExportError("ExecuTorch programs take a fixed batch here: give --batch N, not --dynamic-batch")
    module = wrap(model, metadata).eval()
    h, w = metadata.input_size
    images = torch.rand(metadata.batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    step(f"capturing with torch.export ({metadata.output} outputs, batch {metadata.batch})")
    with torch.no_grad():
        program = torch.export.export(module, (images,))
    write_program(program, metadata, out_path)
    return out_path


NEEDS_EXECUTORCH = "the executorch targets need ExecuTorch: pip install 'deim-edge[executorch]'"
INT8_HOOKS = Int8Hooks(activation_products=False)  # PT2E quantizes modules (convs, linears), not products


def export_executorch_int8(model: nn.Module, metadata: ArtifactMetadata, out_path: Path,
                           options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) as an XNNPACK program with the modules of the INT8 plan (options["int8"]) in
    INT8, calibrated on the plan's calibration images."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                              get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter
    except ImportError as e:
        raise MissingDependencyError(NEEDS_EXECUTORCH) from e
    int8 = options["int8"]
    modules = int8_modules(int8.plan.nodes)
    module = wrap(model, metadata).eval()
    batch = metadata.batch or 1
    h, w = metadata.input_size
    images = torch.zeros(batch, 3, h, w)
    layers = [n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    step(f"capturing with torch.export; {sum(n in modules for n in layers)} of {len(layers)} convolution and "
         f"linear layers to INT8 (the plan's)")
    with torch.no_grad():
        captured = torch.export.export(module, (images,)).module()
    # convolutions and linear layers only (with their fused ReLU), as the plan's layers: with the adds, muls and
    # concatenations between them quantized too, Atto lost 1.56 AP against 1.27 (histogram ranges). The float
    # scopes are filtered out of one pass per op type: configured per module name, the quantizer's conv-bn
    # matching re-exports patterns on each name's pass (hours)
    in_float = [get_module_name_filter(scope) for scope in float_scopes(module, modules)]
    config = _with_activation_observer(get_symmetric_quantization_config(is_per_channel=True),
                                       metadata.extra["int8"]["calib_method"])
    quantizer = XNNPACKQuantizer()
    for op in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
        quantizer.set_operator_type(op, config)
    quantizer.set_filter_function(lambda node: not any(f(node) for f in in_float))
    prepared = prepare_pt2e(captured, quantizer)
    inputs = torch.from_numpy(int8.calibration.inputs)
    step(f"calibrating on {len(inputs)} images")
    with torch.no_grad():
        for start in range(0, len(inputs) - batch + 1, batch):
            prepared(inputs[start:start + batch])
        quantized = convert_pt2e(prepared)
        program = torch.export.export(quantized, (images,))
    write_program(program, metadata, out_path)
    return out_path


def _with_activation_observer(config, calib_method: str):
    """XNNPACK's config with the activation ranges estimated as --calib-method asks: its default, a histogram
    search, cost Atto 1.27 AP against 0.52 with minmax (the project's default, the ranges the QDQ search used)."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    observer = MinMaxObserver if calib_method == "minmax" else HistogramObserver
    activation = dataclasses.replace(config.input_activation,
                                     observer_or_fake_quant_ctr=observer.with_args(eps=2 ** -12))
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def int8_modules(nodes: list[str]) -> list[str]:
    """The module names (inside the export wrapper) of the plan's INT8 ONNX nodes. The TorchScript exporter's
    scopes name a list's item after the list too: /model/backbone/stages.0/blocks/blocks.0/layers/layers.0/conv/Conv
    -> model.backbone.stages.0.blocks.0.layers.0.conv."""
    modules = set()
    for name in nodes:
        parts = [p for p in name.split("/")[:-1] if p]
        modules.add(".".join(p for p, after in zip(parts, [*parts[1:], ""]) if not after.startswith(p + ".")))
    return sorted(modules)


def float_scopes(module: nn.Module, int8: list[str]) -> list[str]:
    """The fewest module names that cover every convolution and linear layer of `module` outside `int8` and none
    inside it: a whole subtree (the decoder) where all of its layers stay float."""
    weighted = [name for name, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    quantized = set(int8)
    floats = [name for name in weighted if name not in quantized]

    def all_float(scope: str) -> bool:
        return not any(q == scope or q.startswith(scope + ".") for q in quantized)

    scopes: list[str] = []
    for name in floats:
        parts = name.split(".")
        top = next(".".join(parts[:i]) for i in range(1, len(parts) + 1) if all_float(".".join(parts[:i])))
        if top not in scopes:
            scopes.append(top)
    return scopes


def write_program(program: torch.export.ExportedProgram, metadata: ArtifactMetadata, out_path: Path) -> None:
    """Lower an exported program to XNNPACK and write it with `metadata` as its METHOD."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise MissingDependencyError(NEEDS_EXECUTORCH) from e
    step("lowering to the XNNPACK delegate (a few minutes on one core)")
    try:
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={METHOD: metadata.to_json()}).to_executorch()
    except Exception as e:  # noqa: BLE001 -- ExecuTorch reports unsupported graphs as its own error types
        raise ExportError(f"ExecuTorch cannot lower the graph: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    step(f"writing the program ({len(lowered.buffer) / 1e6:.1f} MB)")
    Path(out_path).write_bytes(lowered.buffer)
