"""INT8 weights for a CoreML ML program: coremltools' post-training linear quantization of the weights
(int8, symmetric, one scale per output channel). Activations stay float (Core ML dequantizes the weights
on load or on the fly, depending on the device), so this shrinks the package about 4x against FP32 weights
without calibration data; ops the caller names keep their float weights.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..calibration.hooks import Int8Hooks
from ..errors import ConfigError, ExportError, MissingDependencyError
from ..progress import step

INT8_HOOKS = Int8Hooks()  # the shared search on the QDQ graph chooses the layers whose weights become int8
MODE = "linear_symmetric"
DTYPE = "int8"
GRANULARITY = "per_channel"


def quantize_coreml_weights(mlmodel: Any, float_op_names: Collection[str] = ()) -> Any:
    """`mlmodel` (an FP32 or FP16 ML program, ct.models.MLModel) with its constant weights stored as int8
    (linear_symmetric, per channel), except those named in `float_op_names`: weight consts (named after
    the PyTorch parameter, e.g. "model_decoder_..._weight") or the ops using them; weights below coremltools' size threshold (2048 values) stay
    float too. Returns a new MLModel; the input is not changed."""
    try:
        from coremltools.optimize.coreml import (OpLinearQuantizerConfig, OptimizationConfig, get_weights_metadata,
                                                 linear_quantize_weights)
    except ImportError as e:
        raise MissingDependencyError("CoreML INT8 needs coremltools: pip install 'deim-edge[coreml]'") from e
    if mlmodel.get_spec().WhichOneof("Type") != "mlProgram":
        raise ExportError("INT8 weight quantization needs a CoreML ML program (convert_to='mlprogram')")
    unknown = sorted(set(float_op_names) - weight_names(mlmodel, get_weights_metadata))
    if unknown:  # coremltools ignores names it does not have: the weights would be quantized after all
        raise ConfigError(f"{len(unknown)} of the CoreML ops to keep float are not weights (or ops using them) of "
                          f"the model, e.g. {unknown[:3]}")
    config = OptimizationConfig(
        global_config=OpLinearQuantizerConfig(mode=MODE, dtype=DTYPE, granularity=GRANULARITY),
        op_name_configs={name: None for name in float_op_names})
    step(f"quantizing CoreML weights to int8 ({MODE}, {GRANULARITY}; {len(float_op_names)} ops kept float)")
    try:
        return linear_quantize_weights(mlmodel, config)
    except Exception as e:  # noqa: BLE001 -- coremltools raises bare exceptions (e.g. a name it does not know)
        raise ExportError(f"coremltools could not quantize the weights: {type(e).__name__}: {e}") from e


def weight_names(mlmodel: Any, get_weights_metadata) -> set[str]:
    """The names `float_op_names` may use: every weight const of the program and every op that reads one."""
    metadata = get_weights_metadata(mlmodel, weight_threshold=0)
    return set(metadata) | {op.name for weight in metadata.values() for op in weight.child_ops}


def float_weights(mlmodel: Any, plan) -> set[str]:
    """The weight consts of what `plan` (calibration.recipe.Plan) keeps float: consts named after a PyTorch
    parameter outside the INT8 layers (the decoder: model_decoder_...) or in a layer the search moved back, and
    unnamed consts that feed anything but a convolution. The converter folds BatchNorm into the backbone's
    convolution weights and names the result const_N: those follow the recipe (INT8)."""
    from coremltools.optimize.coreml import get_weights_metadata

    int8 = {_const_prefix(layer) for layer in plan.layers} - {_const_prefix(layer) for layer in plan.float_layers}
    kept = set()
    for name, weight in get_weights_metadata(mlmodel, weight_threshold=0).items():
        if name.startswith("model_"):
            if not any(name.startswith(prefix + "_") for prefix in int8):
                kept.add(name)
        elif any(op.op_type != "conv" for op in weight.child_ops):
            kept.add(name)
    return kept


def _const_prefix(layer: str) -> str:
    return layer.strip("/").replace("/", "_").replace(".", "_")
