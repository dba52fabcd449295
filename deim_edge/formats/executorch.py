"""The deim-edge metadata of ExecuTorch programs (.pte): the ArtifactMetadata JSON returned by a constant method
of the program, METHOD, so the file is the whole artifact (a board's C++ runtime can read it the same way).

Reading loads the program with ExecuTorch's Python runtime and calls that method; writing (the accuracy figures
the export measures after lowering) replaces the method's string in the program's flatbuffer with ExecuTorch's
own serializer, which keeps the delegate segments as they were.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import MetadataError, MissingDependencyError, ModelFileError
from ..fileio import atomic_path
from ..metadata import ArtifactMetadata

METHOD = "deim_edge_metadata"  # the constant method holding the metadata JSON


def load_program(path: Path):
    """The ExecuTorch program at `path`, loaded by its Python runtime; ModelFileError when it is none."""
    try:
        from executorch.runtime import Runtime
    except ImportError as e:
        raise MissingDependencyError("running .pte files needs ExecuTorch: pip install 'deim-edge[executorch]'") from e
    try:
        return Runtime.get().load_program(Path(path))
    except (RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path} is not an ExecuTorch program ExecuTorch can load: {str(e).splitlines()[0]}; "
                             f"export one with python -m deim_edge.export --target executorch") from e


def metadata_of(program, path: Path) -> ArtifactMetadata:
    """The metadata a loaded program returns from METHOD."""
    if METHOD not in program.method_names:
        raise ModelFileError(f"{path} has no deim-edge metadata (no {METHOD} method): export it with "
                             f"python -m deim_edge.export --target executorch")
    try:
        return ArtifactMetadata.from_json(program.load_method(METHOD).execute([])[0])
    except (MetadataError, ValueError, TypeError, IndexError) as e:
        raise ModelFileError(f"{path}: its deim-edge metadata is unreadable ({e})") from e


def read_metadata(path: Path) -> ArtifactMetadata:
    return metadata_of(load_program(path), path)


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary
        from executorch.exir.schema import String
    except ImportError as e:
        raise MissingDependencyError("writing .pte metadata needs ExecuTorch: "
                                     "pip install 'deim-edge[executorch]'") from e
    pte = deserialize_pte_binary(Path(path).read_bytes())
    plan = next((p for p in pte.program.execution_plan if p.name == METHOD), None)
    strings = [v for v in plan.values if isinstance(v.val, String)] if plan is not None else []
    if len(strings) != 1:
        raise ModelFileError(f"{path} has no deim-edge metadata method to rewrite ({METHOD})")
    strings[0].val = String(metadata.to_json())
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(serialize_pte_binary(pte, extract_delegate_segments=True)))
