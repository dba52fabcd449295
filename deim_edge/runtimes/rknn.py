"""Rockchip RKNN models (.rknn) on a board's NPU through rknn-toolkit-lite2 (RKNNLite: aarch64 Linux with Rockchip's
NPU driver, e.g. RK3588, RK3566). This machine runs .rknn models only in rknn-toolkit2's simulator while it builds
them (export/rknn.py). The model takes uint8 pixels; run() takes Detector's float batch like every runtime and turns
it back into them (formats/rknn.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingDependencyError, ModelFileError
from ..formats.rknn import pixels, read_metadata, stage_files
from ..metadata import OUTPUT_NAMES, RAW
from . import model_file

# core_mask= -> RKNNLite's NPU core masks (cores 1 and 2 exist on RK3588 only)
CORE_MASKS = {"auto": 0, "0": 1, "1": 2, "2": 4, "0_1": 3, "0_1_2": 7, "all": 0xFFFF}


class RknnRuntime:
    """The .rknn stages of an artifact (formats/rknn.py), each in an RKNNLite, run in turn.

    core_mask: the NPU cores to run on ("auto", "0", "1", "2", "0_1", "0_1_2", "all"; default "auto").
    """

    name = "rknn"

    def __init__(self, path: Path, core_mask: str = "auto") -> None:
        if core_mask not in CORE_MASKS:
            raise ConfigError(f"core_mask must be one of {', '.join(CORE_MASKS)}, got {core_mask!r}")
        path = model_file(Path(path))
        self.metadata = read_metadata(path)
        if self.metadata.output != RAW:
            raise ModelFileError(f"{path}: RKNN models give raw outputs, the metadata says {self.metadata.output!r}")
        files = stage_files(path, self.metadata)
        try:
            from rknnlite.api import RKNNLite
        except ImportError as e:
            raise MissingDependencyError("running .rknn models needs rknn-toolkit-lite2 on a Rockchip board "
                                         "(aarch64 with the NPU driver): pip install 'deim-edge[rknn-lite]'") from e
        self.stages = [_open(RKNNLite, f, CORE_MASKS[core_mask]) for f in files]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        shape = (self.metadata.batch, 3, *self.metadata.input_size)
        if images.shape != shape:
            raise ConfigError(f"{self.name} expects images of shape {shape}, got {images.shape}")
        outputs, data_type, layout = [pixels(images, self.metadata)], "uint8", "nhwc"
        for stage in self.stages:  # each on the float outputs of the one before
            outputs = stage.inference(inputs=outputs, data_type=data_type, data_format=layout)
            if outputs is None:
                raise ModelFileError("RKNNLite inference failed (its log above says why)")
            outputs, data_type, layout = [np.asarray(o, np.float32) for o in outputs], "float32", "nchw"
        return dict(zip(OUTPUT_NAMES[RAW], outputs))


def _open(RKNNLite, file: Path, core_mask: int):  # noqa: N803 -- the class, imported on use
    lite = RKNNLite()
    if lite.load_rknn(str(file)) != 0:
        raise ModelFileError(f"rknn-toolkit-lite2 cannot read {file}")
    if lite.init_runtime(core_mask=core_mask) != 0:
        raise ModelFileError(f"{file} does not start on this board's NPU (its log above says why): is it built for "
                             f"this chip (export --option platform=...) and is the NPU driver loaded?")
    return lite
