"""INT8 OpenVINO IR: the FP32 ONNX graph converted to OpenVINO and quantized with NNCF post-training
quantization (int8 weights per channel, uint8/int8 activations), only on the ONNX nodes the caller names.

OpenVINO does not keep one op per ONNX node: a Conv becomes Convolution + Add (bias), a Gemm MatMul + Add,
attention MatMuls fuse into ScaledDotProductAttention, and identity-like nodes vanish into their
neighbours. The op's friendly name is sometimes the ONNX node name and sometimes its output tensor name
(".../Conv" vs ".../Conv_output_0"), so the ops are matched to ONNX nodes through the output tensor names
they carry, then through their friendly names; everything that cannot be matched to a node in
`quantize_nodes` stays float (NNCF IgnoredScope), so a surprise in the conversion costs speed, not accuracy.

`preset=MIXED, model_type=TRANSFORMER` is required for this DETR: NNCF's defaults (symmetric activations,
CNN patterns) collapse its detections (top-100 overlap 0.21 against 0.90).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..calibration.hooks import CandidateWriter, Int8Hooks
from ..errors import ConfigError, ExportError, MissingDependencyError
from ..metadata import ArtifactMetadata
from ..progress import step
from ..formats.openvino import embed, import_openvino
from .openvino import no_telemetry, onnx_to_openvino

if TYPE_CHECKING:
    import openvino

METHODS = ("minmax", "percentile")  # calibration methods NNCF has an equivalent of
PERCENTILE_OUTLIER = 1e-4  # "percentile": each activation's range is its 0.01 / 99.99 % quantile, averaged
STRUCTURAL = frozenset({"Constant", "Parameter", "Result"})  # ops NNCF never quantizes; never in a scope
WEIGHTED = frozenset({"Conv", "Gemm", "MatMul"})  # ONNX ops whose OpenVINO ops must be found
SHAPE_ONLY = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})  # move data, compute nothing
SUFFIX_SEPARATOR = "/"  # OpenVINO names ops it splits off a node "<name>/WithoutBiases", ...


def _search_on_ir(fp32: onnx.ModelProto, method: str) -> tuple[str, CandidateWriter]:
    """The INT8 search measures NNCF's own IR (it quantizes Atto in seconds)."""
    def write(nodes: Sequence[str], batches: Sequence[np.ndarray], path: Path) -> tuple[Path, Any]:
        ov_model = quantize_openvino(fp32, batches, nodes, method)
        return save_int8_ir(ov_model, path), ov_model

    return ".xml", write


INT8_HOOKS = Int8Hooks(calib_methods=METHODS, search_on=_search_on_ir)


def export_openvino_int8(model: Any, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """The openvino-int8 target: NNCF INT8 on the layers of the plan calibration.int8 chose (options["int8"]),
    the IR written to `out_path` (.xml + .bin) with `metadata` in its rt_info. NNCF runs again only where the
    search did not keep the chosen plan's model (it keeps its last; the chosen one is another when no plan was
    within the budget)."""
    plan = options["int8"]
    ov_model = plan.backend_model
    if ov_model is None:
        ov_model = quantize_openvino(plan.fp32_onnx, plan.calibration.batches(), plan.plan.nodes,
                                     metadata.extra["int8"]["calib_method"])
    return save_int8_ir(ov_model, out_path, metadata)


def write_int8_ir(proto: onnx.ModelProto, batches: Sequence[np.ndarray], quantize_nodes: Collection[str],
                  method: str, out_path: Path, metadata: ArtifactMetadata | None = None) -> Path:
    """quantize_openvino, saved at `out_path` (save_int8_ir)."""
    return save_int8_ir(quantize_openvino(proto, batches, quantize_nodes, method), out_path, metadata)


def save_int8_ir(ov_model: openvino.Model, out_path: Path, metadata: ArtifactMetadata | None = None) -> Path:
    """An INT8 model saved at `out_path` with `metadata` in its rt_info (None: the ONNX graph's, as a candidate
    of the layer search is measured)."""
    if metadata is not None:
        embed(ov_model, metadata)
    step(f"writing the INT8 IR {Path(out_path).name}")
    try:
        import_openvino().save_model(ov_model, str(out_path), compress_to_fp16=False)
    except RuntimeError as e:  # OpenVINO reports write failures as RuntimeError
        raise ExportError(f"OpenVINO cannot write {Path(out_path).name}: {e}") from e
    return Path(out_path)


def quantize_openvino(proto: onnx.ModelProto, batches: Sequence[np.ndarray], quantize_nodes: Collection[str],
                      method: str = "minmax", progress: bool = True) -> "openvino.Model":
    """The ONNX graph `proto` (FP32) as an OpenVINO model with INT8 quantizers on the ops made from the ONNX
    nodes named in `quantize_nodes`; every other op stays float.

    batches: the calibration inputs, preprocessed as the runtime does ([1,3,H,W] float32), all of them used;
    method: "minmax" (activation ranges = the extremes seen) or "percentile" (their 1e-4 / 1-1e-4
    quantiles, averaged over the batches); progress: NNCF's progress bars on stderr.
    The model carries the ONNX graph's metadata (rt_info) like any converted model; save it with
    openvino.save_model(model, path, compress_to_fp16=False) (the int8 weights are stored as int8 either way).
    """
    with no_telemetry():  # NNCF sets its telemetry up when first imported
        nncf = _import_nncf()
    range_params = _range_estimator(nncf, method)
    if not batches:
        raise ConfigError("INT8 calibration needs at least one calibration batch")
    _check_node_names(proto, quantize_nodes)
    step(f"converting to OpenVINO for INT8 ({len(proto.graph.node)} ONNX nodes)")
    model = onnx_to_openvino(proto)
    ops = ov_ops_by_onnx_node(proto, model)
    float_ops = float_op_names(proto, ops, quantize_nodes)
    step(f"NNCF {method} calibration on {len(batches)} images, {len(float_ops)} ops kept float")
    advanced = nncf.AdvancedQuantizationParameters(activations_range_estimator_params=range_params)
    try:
        with _nncf_output(progress), no_telemetry():
            return nncf.quantize(
                model, nncf.Dataset(list(batches)), preset=nncf.QuantizationPreset.MIXED,
                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches),
                ignored_scope=nncf.IgnoredScope(names=sorted(float_ops), validate=False),
                advanced_parameters=advanced)
    except Exception as e:  # noqa: BLE001 -- NNCF and OpenVINO raise their own error types
        raise ExportError(f"NNCF cannot quantize the OpenVINO model: {type(e).__name__}: {e}") from e


def ov_ops_by_onnx_node(proto: onnx.ModelProto, model: "openvino.Model") -> dict[str, frozenset[str]]:
    """OpenVINO op friendly name -> the ONNX node names it was made from, for every op that is not a
    Constant/Parameter/Result; an empty set where no ONNX node can be found (ops OpenVINO inserted).

    An op belongs to the nodes whose output tensors it carries (more than one where identity-like nodes
    were folded into it); an op with no such name (a conv without its bias, "<node>/WithoutBiases") to the
    node its friendly name, or the longest "/"-prefix of it, names, as node or as output tensor.
    """
    node_of_output = {name: node.name for node in proto.graph.node for name in node.output if name}
    node_names = {node.name for node in proto.graph.node}
    found: dict[str, frozenset[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in STRUCTURAL:
            continue
        name = op.get_friendly_name()
        tensors = {t for output in op.outputs() for t in output.get_names()}
        nodes = {node_of_output[t] for t in tensors if t in node_of_output}
        if not nodes:
            nodes = _node_by_name(name, node_names, node_of_output)
        found[name] = frozenset(nodes) | found.get(name, frozenset())  # names are not guaranteed unique
    return found


def float_op_names(proto: onnx.ModelProto, ops: dict[str, frozenset[str]], quantize_nodes: Collection[str]
                   ) -> set[str]:
    """The friendly names of the ops to keep float: all but those made only from nodes in
    `quantize_nodes`. ExportError when a Conv/Gemm/MatMul node with weights named has no op in the quantized set
    (the ONNX -> OpenVINO name matching no longer works: the INT8 model would silently be float)."""
    wanted = set(quantize_nodes)
    op_types = {node.name: node.op_type for node in proto.graph.node}

    def computing(nodes: frozenset[str]) -> set[str]:  # a reshape OpenVINO folded into a MatMul is no reason to
        return {n for n in nodes if op_types.get(n) not in SHAPE_ONLY}  # keep it float (ViT MLPs: Gemm + reshapes)

    quantized = {name for name, nodes in ops.items() if computing(nodes) and computing(nodes) <= wanted}
    covered = set().union(*(ops[name] for name in quantized))
    weighted = {node.name for node in _weighted_nodes(proto) if node.name in wanted}
    missed = sorted(weighted - covered)
    if missed:
        raise ExportError(f"{len(missed)} of the {len(weighted)} Conv/Gemm/MatMul nodes with weights to quantize match no "
                          f"OpenVINO op (e.g. {missed[:3]}): OpenVINO's op names no longer follow the ONNX graph's")
    step(f"INT8 scope: {len(quantized)} OpenVINO ops from {len(covered)} of the {len(wanted)} ONNX nodes named "
         f"(all {len(weighted)} Conv/Gemm/MatMul with weights)")
    return set(ops) - quantized


def _weighted_nodes(proto: onnx.ModelProto) -> list:
    """The Conv/Gemm/MatMul nodes with a constant input (weights): OpenVINO keeps each as its own op, where
    activation x activation MatMuls may be fused away (attention into ScaledDotProductAttention)."""
    constants = {t.name for t in proto.graph.initializer}
    constants |= {out for node in proto.graph.node if node.op_type == "Constant" for out in node.output}
    return [node for node in proto.graph.node if node.op_type in WEIGHTED and constants & set(node.input)]


def _node_by_name(name: str, node_names: set[str], node_of_output: dict[str, str]) -> set[str]:
    """The ONNX node `name` or its longest "/"-prefix names (as node name or output tensor name)."""
    parts = name.split(SUFFIX_SEPARATOR)
    for end in range(len(parts), 1, -1):
        prefix = SUFFIX_SEPARATOR.join(parts[:end])
        if prefix in node_names:
            return {prefix}
        if prefix in node_of_output:
            return {node_of_output[prefix]}
    return set()


def _check_node_names(proto: onnx.ModelProto, quantize_nodes: Iterable[str]) -> None:
    """ConfigError when `quantize_nodes` names nodes the graph does not have (a typo quantizes nothing)."""
    unknown = sorted(set(quantize_nodes) - {node.name for node in proto.graph.node})
    if unknown:
        raise ConfigError(f"{len(unknown)} of the ONNX nodes to quantize are not in the graph, e.g. {unknown[:3]}")


def _range_estimator(nncf, method: str) -> Any:
    """NNCF's activation range estimator for a calibration method; ConfigError for the others."""
    from nncf.quantization.range_estimator import (AggregatorType, RangeEstimatorParameters,
                                                   RangeEstimatorParametersSet, StatisticsCollectorParameters,
                                                   StatisticsType)

    if method == "minmax":
        return RangeEstimatorParametersSet.MINMAX
    if method == "percentile":
        quantile = StatisticsCollectorParameters(statistics_type=StatisticsType.QUANTILE,
                                                 aggregator_type=AggregatorType.MEAN,
                                                 quantile_outlier_prob=PERCENTILE_OUTLIER)
        return RangeEstimatorParameters(min=quantile, max=quantile)
    raise ConfigError(f"OpenVINO (NNCF) INT8 calibration supports {', '.join(METHODS)}, not {method!r}"
                      + (" (NNCF has no entropy/KL calibration)" if method == "entropy" else ""))


@contextlib.contextmanager
def _nncf_output(progress: bool) -> Iterator[None]:
    """NNCF writes its log (INFO: a line per op left unquantized, hundreds here) and its progress bars to
    stdout: keep its warnings and, with `progress`, its bars, on stderr; drop the rest."""
    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    streams = [(h, h.setStream(sys.stderr)) for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)]
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)
        for handler, stream in streams:
            handler.setStream(stream)


def _import_nncf():
    """The nncf module; MissingDependencyError naming the extra when it is not installed."""
    try:
        import nncf
    except ImportError as e:
        raise MissingDependencyError("OpenVINO INT8 needs nncf: pip install 'deim-edge[openvino]'") from e
    return nncf
