"""The deim-edge metadata of CoreML models (.mlpackage, .mlmodel): user_defined_metadata[METADATA_KEY], beside
the class names as a JSON list (what Xcode shows). Read from the model specification without loading the model,
so it works on Linux and Windows too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, ModelFileError
from ..metadata import METADATA_KEY, ArtifactMetadata

CLASSES_KEY = "classes"  # user_defined_metadata: the class names as a JSON list


def import_coremltools():
    """The coremltools module; MissingDependencyError naming the extra when it is not installed."""
    try:
        import coremltools
    except ImportError as e:
        raise MissingDependencyError("the CoreML backend needs coremltools: pip install 'deim-edge[coreml]'") from e
    return coremltools


def load_spec(path: Path):
    """The model specification (protobuf) of an .mlpackage folder or .mlmodel file, without
    loading or compiling the model (works on any platform); ModelFileError when it is not one."""
    ct = import_coremltools()
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir() and not (path / "Manifest.json").is_file():
        raise ModelFileError(f"{path} is a folder but not a CoreML package (no Manifest.json); "
                             f"export one with python -m deim_edge.export --target coreml")
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:  # noqa: BLE001 -- protobuf and libmodelpackage raise untyped errors for bad files
        raise ModelFileError(f"{path} is not a readable CoreML model ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); export one with "
                             f"python -m deim_edge.export --target coreml") from e
    if not spec.HasField("description") or not spec.description.input:
        raise ModelFileError(f"{path} is not a CoreML model (no inputs in its specification); export one with "
                             f"python -m deim_edge.export --target coreml")
    return spec


def metadata_of(spec: Any, path: Path) -> ArtifactMetadata:
    """The record in a model specification read from `path` (used in errors)."""
    record = spec.description.metadata.userDefined.get(METADATA_KEY)
    if record is None:
        raise ModelFileError(f"{path} is a CoreML model without deim-edge metadata (user_defined_metadata"
                             f"[{METADATA_KEY!r}]); export it with python -m deim_edge.export --target coreml")
    return ArtifactMetadata.from_json(record)


def read_metadata(path: Path) -> ArtifactMetadata:
    """The record inside the CoreML model at `path`."""
    return metadata_of(load_spec(path), path)


def embed(mlmodel: Any, metadata: ArtifactMetadata) -> None:
    """The record and the class names into a coremltools MLModel (saved with it)."""
    mlmodel.user_defined_metadata[METADATA_KEY] = metadata.to_json()
    mlmodel.user_defined_metadata[CLASSES_KEY] = json.dumps(list(metadata.class_names))


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    """Replace the record inside the CoreML model at `path`: saved beside it, then moved over it (coremltools
    deletes a save's destination first, which here is its own source)."""
    ct = import_coremltools()
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    embed(mlmodel, metadata)
    staged = path.with_name(f"{path.stem}.restamp{path.suffix}")
    mlmodel.save(str(staged))
    if path.is_dir():
        shutil.rmtree(path)
    staged.replace(path)
