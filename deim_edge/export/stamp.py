"""Rewrite the metadata record inside an artifact already written (the accuracy gate adds its figures after
measuring the file): ONNX, OpenVINO IR and TFLite, the artifacts the gate can run on any machine. They are still
in export's staging folder, so the rewrite in place is not seen half-done."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExportError
from ..metadata import METADATA_KEY, ArtifactMetadata


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    """Replace the deim-edge metadata of the artifact at `path` with `metadata`."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        _onnx(path, metadata)
    elif suffix == ".xml":
        from ..runtimes.openvino import import_openvino

        ov = import_openvino()
        model = ov.Core().read_model(str(path))
        model.set_rt_info(metadata.to_json(), METADATA_KEY)
        staged = path.with_name(f"{path.stem}.restamp.xml")
        ov.save_model(model, str(staged), compress_to_fp16=False)  # weights are kept as stored (int8, f16, f32)
        staged.replace(path)
        staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
    elif suffix == ".tflite":
        from .tflite import embed_metadata

        path.write_bytes(embed_metadata(path.read_bytes(), metadata))
    else:
        raise ExportError(f"cannot rewrite the metadata of {path.name} here")


def _onnx(path: Path, metadata: ArtifactMetadata) -> None:
    import onnx

    from .onnx import _embed

    proto = onnx.load(str(path))
    _embed(proto, metadata)
    onnx.save(proto, str(path))
