"""INT8 weights for a CoreML ML program: coremltools' post-training linear quantization of the weights
(int8, symmetric, one scale per output channel). Activations stay float (Core ML dequantizes the weights
on load or on the fly, depending on the device), so this shrinks the package about 4x against FP32 weights
without calibration data; ops the caller names keep their float weights.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..errors import ExportError, MissingDependencyError
from ..progress import step

MODE = "linear_symmetric"
DTYPE = "int8"
GRANULARITY = "per_channel"


def quantize_coreml_weights(mlmodel: Any, float_op_names: Collection[str] = ()) -> Any:
    """`mlmodel` (an FP32 or FP16 ML program, ct.models.MLModel) with its constant weights stored as int8
    (linear_symmetric, per channel), except the weights of the ops named in `float_op_names` (the ML
    program's op names, as in mlmodel._mil_program); weights below coremltools' size threshold (2048 values) stay
    float too. Returns a new MLModel; the input is not changed."""
    try:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights
    except ImportError as e:
        raise MissingDependencyError("CoreML INT8 needs coremltools: pip install 'deim-edge[coreml]'") from e
    if mlmodel.get_spec().WhichOneof("Type") != "mlProgram":
        raise ExportError("INT8 weight quantization needs a CoreML ML program (convert_to='mlprogram')")
    config = OptimizationConfig(
        global_config=OpLinearQuantizerConfig(mode=MODE, dtype=DTYPE, granularity=GRANULARITY),
        op_name_configs={name: None for name in float_op_names})
    step(f"quantizing CoreML weights to int8 ({MODE}, {GRANULARITY}; {len(float_op_names)} ops kept float)")
    try:
        return linear_quantize_weights(mlmodel, config)
    except Exception as e:  # noqa: BLE001 -- coremltools raises bare exceptions (e.g. a name it does not know)
        raise ExportError(f"coremltools could not quantize the weights: {type(e).__name__}: {e}") from e
