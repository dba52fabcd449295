"""`python -m deim_edge demo`: the trained Atto checkpoint that ships with deim-edge, exported to every
target this machine can run, each artifact run on the bundled sample images, their detections compared
with ONNX Runtime's, and all of them timed by the benchmark harness. Needs no arguments and no network.

Writes to the output folder (default runs/demo): artifacts/ (reused on the next run while the checkpoint
and deim-edge are unchanged), images/<target>/ (annotated samples), demo.json (targets, agreement) and
bench.json, .md, .csv, .png (the benchmark).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import __version__, compare
from .errors import ConfigError, DeimEdgeError
from .fileio import atomic_path
from .media import read_image
from .progress import reporting, step

CHECKPOINT = Path(__file__).resolve().parent / "assets" / "deimv2-atto-synthetic.pth"
VARIANT = "deimv2-atto"  # of the random weights used while no checkpoint is installed
RANDOM_CLASSES = 4  # classes of those random weights (the synthetic set's first four shapes)
REFERENCE = "onnx"  # the target every other target's detections are compared with
CALIB_SIZE = 100  # INT8 targets calibrate on this many synthetic scenes (what the demo checkpoint learned)
AGREE_IOU = 0.9  # a detection agrees when the reference has one of the same label with at least this IoU
MIN_COMPARED = 5  # detections compared per image even when fewer pass --conf (random weights score low)
SAMPLE_COUNT, SAMPLE_SIZE = 3, 320  # synthetic samples drawn when the bundled ones are not installed


@dataclass
class TargetRun:
    """What happened to one export target: its artifact, or why there is none."""

    target: str
    status: str = "pending"  # skipped | failed | exported | cached | ran
    reason: str = ""
    artifact: Path | None = None
    detections: list = field(default_factory=list)  # Detections per sample image (conf 0)


# ----------------------------------------------------------------------------------------- targets

def unavailable(target) -> str | None:
    """Why `target` cannot be exported and run on this machine, or None when it can."""
    missing = target.missing()
    if missing:
        extras = ",".join((["torch"] if "torch" in missing else []) + [target.extra])
        return f"needs {', '.join(missing)}: pip install 'deim-edge[{extras}]'"
    if importlib.util.find_spec(target.entry.split(":")[0]) is None:
        return f"this deim-edge build has no {target.name} export"
    return target.record.unavailable()


def plan(names: list[str] | None) -> list[TargetRun]:
    """A TargetRun per requested target (default: every registered one), the unavailable ones skipped."""
    from .export.registry import get_target, targets

    chosen = [get_target(n) for n in names] if names else list(targets())
    runs = []
    for t in chosen:
        reason = unavailable(t)
        runs.append(TargetRun(t.name, "skipped", reason) if reason else TargetRun(t.name))
    reference = next((r for r in runs if r.target == REFERENCE), None)
    if reference is None:
        raise ConfigError(f"the demo compares every backend with ONNX Runtime: include the {REFERENCE} target")
    if reference.status == "skipped":
        raise ConfigError(f"the demo needs the {REFERENCE} target, which cannot run here: {reference.reason}")
    return runs


# ------------------------------------------------------------------------------------------- model

class Source:
    """The weights to export: the checkpoint when it exists, else seeded random weights (said loudly)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint if checkpoint.is_file() else None
        self.path = checkpoint
        self._model = None
        self._names: tuple[str, ...] | None = None

    @property
    def stem(self) -> str:
        return self.checkpoint.stem if self.checkpoint else f"{VARIANT}-random"

    def describe(self) -> str:
        if self.checkpoint:
            return f"trained checkpoint {self.checkpoint}"
        return (f"no trained checkpoint at {self.path}: {VARIANT} with RANDOM weights "
                f"(the pipeline runs end to end, but the detections mean nothing)")

    @functools.cached_property
    def weights_id(self) -> str:
        """Names the weights: the checkpoint's content hash, or the random weights' recipe."""
        if self.checkpoint:
            return hashlib.sha256(self.checkpoint.read_bytes()).hexdigest()[:16]
        return f"random-{VARIANT}-{RANDOM_CLASSES}"

    def cache_key(self, target: str) -> str:
        return f"{self.weights_id}:{target}:deim-edge {__version__}"

    def model_and_names(self):
        """The model (torch) and its class names, built on first use."""
        if self._model is None:
            self._model, self._names = self._load()
        return self._model, self._names

    def _load(self):
        from .export.weights import random_model
        from .metadata import COCO_CLASSES
        from .models import load_checkpoint
        from .models.checkpoint import read_checkpoint, variant_of
        from .synthetic import class_names

        if self.checkpoint is None:
            return random_model(VARIANT, num_classes=RANDOM_CLASSES), class_names(RANDOM_CLASSES)
        step(f"loading {self.checkpoint}")
        state, record = read_checkpoint(self.checkpoint)
        model = load_checkpoint(state, variant_of(state, record, None, self.checkpoint), input_size=record.input_size)
        classes = model.decoder.num_classes
        names = record.class_names
        if names is None:
            names = COCO_CLASSES if classes == len(COCO_CLASSES) else [f"class{i}" for i in range(classes)]
            warnings.warn(f"{self.checkpoint} stores no 'class_names'; using {names[0]}, ...", stacklevel=2)
        return model, tuple(str(n) for n in names)


def export_all(runs: list[TargetRun], source: Source, folder: Path, use_cache: bool) -> None:
    """Export each pending target into `folder`, reusing an artifact exported from the same weights by the
    same deim-edge version; a failed export is recorded in its TargetRun."""
    from .export import export
    from .export.registry import get_target

    cache_file = folder / "cache.json"
    cache = json.loads(cache_file.read_text()) if use_cache and cache_file.is_file() else {}
    for run in (r for r in runs if r.status == "pending"):
        target = get_target(run.target)
        path = folder / f"{source.stem}-{run.target}{target.suffix}"
        key = source.cache_key(run.target)
        if cache.get(run.target) == key and path.exists():
            run.status, run.artifact = "cached", path
            step(f"{run.target}: reusing {path}")
            continue
        try:
            model, names = source.model_and_names()
            calibration = {"calib_data": "synthetic", "calib_size": CALIB_SIZE} if target.precision == "int8" else {}
            run.artifact = export(model, run.target, out=path, class_names=names, progress=True, **calibration)
            run.status = "exported"
            cache[run.target] = key
        except Exception as e:  # noqa: BLE001 -- one target failing must not stop the others
            run.status, run.reason = "failed", f"export failed: {_reason(e)}"
            cache.pop(run.target, None)
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(cache, indent=1))


# ---------------------------------------------------------------------------------- images, agreement

def sample_files(folder: Path) -> list[Path]:
    """The bundled sample images; when the package has none installed, synthetic ones drawn into `folder`."""
    from .media import SAMPLES, image_files

    try:
        return image_files([SAMPLES])
    except DeimEdgeError:
        pass  # the package was installed without them: draw some
    from .synthetic import draw_scene

    paths = []
    for i in range(SAMPLE_COUNT):
        scene = draw_scene(np.random.default_rng([2026, i]), SAMPLE_SIZE, SAMPLE_SIZE, RANDOM_CLASSES)[0]
        paths.append(folder / f"synthetic-{i}.jpg")
        with atomic_path(paths[-1]) as tmp:
            cv2.imwrite(str(tmp), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    return paths


def detect_all(runs: list[TargetRun], samples: list[np.ndarray], threads: int | None) -> None:
    """Every sample through every artifact (all detections kept, conf 0), failures recorded."""
    from .bench.candidates import thread_option
    from .detector import Detector
    from .runtimes import runtime_for

    for run in (r for r in runs if r.artifact is not None):
        try:
            detector = Detector(run.artifact, conf=0.0, **thread_option(runtime_for(run.artifact), threads, []))
            run.detections = [detector(image) for image in samples]
            run.status = "ran"
        except Exception as e:  # noqa: BLE001
            run.status, run.reason = "failed", f"cannot run: {_reason(e)}"


def agreement(reference: list, candidate: list, conf: float) -> dict[str, Any]:
    """How many of the reference's detections (those scoring >= conf, at least MIN_COMPARED per image) the
    candidate also found: same label, IoU >= AGREE_IOU; with the largest score difference among them."""
    a = compare.agreement(reference, candidate, AGREE_IOU, conf=conf, at_least=MIN_COMPARED)
    return {"compared": a.compared, "agreed": a.matched, "max_score_diff": float(f"{a.max_score_diff:.3g}"),
            "min_iou": a.min_iou}


def save_images(runs: list[TargetRun], files: list[Path], samples: list[np.ndarray], folder: Path,
                conf: float) -> None:
    """Each artifact's detections scoring >= conf drawn on the samples: folder/<target>/<sample>.jpg."""
    for run in (r for r in runs if r.status == "ran"):
        for name, image, dets in zip(files, samples, run.detections):
            ok, data = cv2.imencode(".jpg", dets.filter(conf=conf).draw(image), [cv2.IMWRITE_JPEG_QUALITY, 90])
            if ok:
                with atomic_path(folder / run.target / f"{Path(name).stem}.jpg") as tmp:
                    data.tofile(str(tmp))


# --------------------------------------------------------------------------------------------- main

def demo(out: str | Path = "runs/demo", targets: list[str] | None = None, budget: float = 10.0,
         threads: int | None = None, conf: float = 0.25, checkpoint: str | Path = CHECKPOINT,
         export_cache: bool = True) -> int:
    """Run the demo; prints what it did and returns the exit status (1 when a target failed)."""
    from .bench import benchmark, format_table, write_report

    out = Path(out)
    if budget <= 0:
        raise ConfigError(f"--budget must be positive, got {budget}")
    source = Source(Path(checkpoint))
    print(f"model: {source.describe()}")
    runs = plan(targets)
    with reporting():
        export_all(runs, source, out / "artifacts", export_cache)
        files = sample_files(out / "samples")
        samples = [read_image(f) for f in files]
        detect_all(runs, samples, threads)
        save_images(runs, files, samples, out / "images", conf)
        ran = sorted((r for r in runs if r.status == "ran"), key=lambda r: r.target != REFERENCE)  # ratios to ONNX
        ref = next((r for r in ran if r.target == REFERENCE), None)
        agree = {r.target: agreement(ref.detections, r.detections, conf) for r in ran if ref and r is not ref}
        report = benchmark([str(r.artifact) for r in ran], [str(f) for f in files], warmup=3, duration=budget,
                           conf=conf, threads=[threads], progress=True) if ran else None
    _print_targets(runs, conf)
    _print_agreement(agree, conf)
    paths = {}
    if report is not None:
        print()
        print(format_table(report))
        paths = write_report(report, out, "bench")
    summary = {"model": source.describe(), "samples": [str(f) for f in files],
               "targets": [{"target": r.target, "status": r.status, "reason": r.reason,
                            "artifact": str(r.artifact) if r.artifact else None} for r in runs],
               "agreement": {"reference": REFERENCE, "iou": AGREE_IOU, "conf": conf, "targets": agree}}
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    print(f"\nwritten to {out}/: annotated images in images/<target>/, demo.json"
          + (f", {', '.join(p.name for p in paths.values())}" if paths else ""))
    return 1 if any(r.status == "failed" for r in runs) else 0


def _print_targets(runs: list[TargetRun], conf: float) -> None:
    print(f"\n{'target':<16}{'status':<10}artifact or reason")
    for r in runs:
        if r.status == "ran":
            found = sum(int((d.scores >= conf).sum()) for d in r.detections)
            print(f"{r.target:<16}{r.status:<10}{r.artifact} ({found} detections >= {conf} drawn)")
        else:
            print(f"{r.target:<16}{r.status:<10}{r.reason}")


def _print_agreement(agree: dict[str, dict], conf: float) -> None:
    if not agree:
        return
    print(f"\nagreement with ONNX Runtime (same label, IoU >= {AGREE_IOU}; detections scoring >= {conf}, "
          f"at least {MIN_COMPARED} per image)")
    print(f"{'target':<16}{'agreed':>12}{'max |score diff|':>18}{'min IoU':>9}")
    for target, a in agree.items():
        share = f"{a['agreed']}/{a['compared']}"
        print(f"{target:<16}{share:>12}{a['max_score_diff']:>18.2e}{a['min_iou'] if a['min_iou'] else '-':>9}")


def _reason(error: Exception) -> str:
    text = str(error) if isinstance(error, DeimEdgeError) else f"{type(error).__name__}: {error}"
    return text.splitlines()[0] if text else type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deim_edge demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--targets", nargs="+", help="export targets (default: every one this machine can run)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds of benchmark rounds (default 10)")
    p.add_argument("--threads", type=int, help="inference threads (default: each runtime's own)")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold of drawn and compared detections")
    p.add_argument("--checkpoint", default=str(CHECKPOINT),
                   help="another checkpoint to demo (default: the bundled one)")
    p.add_argument("--no-export-cache", action="store_true", help="export again even when artifacts are cached")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return demo(args.out, args.targets, args.budget, args.threads, args.conf, args.checkpoint,
                    not args.no_export_cache)
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
