"""rknn-toolkit2 in its own Python environment: found before an RKNN export starts, then run as a worker process
(export/rknn_worker.py, see its protocol) that builds the .rknn files and keeps them in the toolkit's simulator
while the export checks and measures them. No torch here.

rknn-toolkit2 2.3.2 pins numpy<=1.26.4, onnx, protobuf<=4.25.4 and torch<=2.4, which deim-edge's environment does
not hold; its interpreter is named by the target option rknn_python or the DEIM_EDGE_RKNN_PYTHON variable.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError, MissingDependencyError
from ..formats.rknn import PLATFORMS, pixels
from ..metadata import OUTPUT_NAMES, RAW, ArtifactMetadata
from ..progress import step

ENV = "DEIM_EDGE_RKNN_PYTHON"
TOOLKIT = "rknn-toolkit2==2.3.2"
SETUP = (f"create one with `python3.11 -m venv rknn-env && rknn-env/bin/pip install {TOOLKIT}`, then pass "
         f"--option rknn_python=rknn-env/bin/python (or set {ENV}=rknn-env/bin/python)")
WORKER = Path(__file__).with_name("rknn_worker.py")
PROBE_TIMEOUT_S = 120


def find_toolkit(options: dict[str, Any]) -> dict[str, Any]:
    """The rknn targets' options with platform checked and rknn_python resolved (the option, else $DEIM_EDGE_RKNN_
    PYTHON) to an interpreter that has rknn-toolkit2: what an export checks before any work. ConfigError for an
    unknown platform; MissingDependencyError saying how to create the environment where there is none."""
    if options["platform"] not in PLATFORMS:
        raise ConfigError(f"rknn-toolkit2 builds for {', '.join(PLATFORMS)}; got platform={options['platform']!r}")
    given = options["rknn_python"] or os.environ.get(ENV)
    if not given:
        raise MissingDependencyError(f"the rknn targets convert with rknn-toolkit2, which runs in its own Python "
                                     f"environment (it pins numpy<=1.26.4, onnx, protobuf and torch<=2.4): {SETUP}")
    python = shutil.which(str(given))
    if python is None:
        raise MissingDependencyError(f"no Python at {given} (rknn_python, or {ENV}): {SETUP}")
    try:
        probe = subprocess.run([python, str(WORKER), "--version"], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT_S)
        version = json.loads(probe.stdout)["toolkit"] if probe.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError, TypeError) as e:
        raise MissingDependencyError(f"cannot run {given} ({type(e).__name__}: {e}): {SETUP}") from e
    if version is None:
        raise MissingDependencyError(f"{given} has no rknn-toolkit2: {given} -m pip install {TOOLKIT}")
    return {**options, "rknn_python": python}


class Simulator:
    """The worker process of one job: builds its stages, then runs them in rknn-toolkit2's simulator. A runtime
    (run: Detector's float batch -> the RAW outputs) for the export's check and the accuracy gate; a context
    manager that ends the worker."""

    name = "rknn-simulator"

    def __init__(self, python: str, job: dict[str, Any], metadata: ArtifactMetadata, folder: Path) -> None:
        self.metadata, self.folder, self.log = metadata, folder, Path(job["log"])
        (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        self.process = subprocess.Popen([python, str(WORKER), str(folder / "job.json")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        try:
            self.toolkit = self._reply("ready")["toolkit"]
        except BaseException:
            self.close()
            raise

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        shape = (self.metadata.batch, 3, *self.metadata.input_size)
        if images.shape != shape:
            raise ConfigError(f"the RKNN simulator expects images of shape {shape}, got {images.shape}")
        request = {"input": str(self.folder / "input.npy"), "output": str(self.folder / "output.npz")}
        np.save(request["input"], pixels(images, self.metadata))
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        with np.load(self._reply("done")) as outputs:
            return {name: outputs[f"arr_{i}"] for i, name in enumerate(OUTPUT_NAMES[RAW])}

    def _reply(self, key: str) -> Any:
        """The worker's next answer (its steps reported on the way); ExportError with the toolkit's message when it
        failed."""
        for line in self.process.stdout:
            message = json.loads(line)
            if "step" in message:
                step(message["step"])
            elif "error" in message:
                raise ExportError(f"rknn-toolkit2 failed: {message['error']}")
            else:
                return message[key]
        status = self.process.wait()
        log = self.log.read_text(encoding="utf-8", errors="replace") if self.log.is_file() else ""
        last = [line.strip() for line in log.replace("\r", "\n").splitlines() if line.strip()][-3:]
        raise ExportError(f"the rknn-toolkit2 worker ended without answering (exit status {status}); the end of its "
                          f"log: {' | '.join(last) or 'empty'}")

    def close(self) -> None:
        """End the worker: the end of its requests, then (after a minute) a kill."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
