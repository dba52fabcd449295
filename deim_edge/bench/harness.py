"""The interleaved latency harness: every (artifact, thread count, batch size) loads and warms up, then
all of them run round by round in one process, so a noisy machine slows each of them alike and the
ratios between them hold. Returns the report record (see report.py for its fields)."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, DeimEdgeError
from ..fileio import artifact_size_mb
from ..progress import Progress, reporting, step
from ..accuracy import ValSet, coco_api
from . import memory
from .accuracy import coco_ap
from .candidates import FOREIGN, ArtifactSpec, Candidate, Timing, load_candidate
from .clocks import ClockMonitor
from .device import device_facts
from ..media import sample_images
from .report import new_report

STAGES = ("preprocess", "inference", "decode", "end_to_end")
DEFAULT_RUNS = 100  # timed rounds when neither runs nor duration is given
MIN_RUNS = 3  # rounds run even when the duration is spent


@dataclass
class Row:
    """One (artifact, threads, batch) being measured: its record, and its call while it is measured."""

    record: dict[str, Any]
    call: Callable[[], Timing] | None = None
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})


def benchmark(artifacts: Sequence[str | os.PathLike], images: Sequence[str | os.PathLike] | None = None, *,
              warmup: int = 10, runs: int | None = None, duration: float | None = None,
              batches: Sequence[int] = (1,), threads: Sequence[int | None] = (None,), conf: float = 0.25,
              imgsz: int = 640, val: ValSet | None = None, progress: bool = False,
              clock_interval: float = 1.0) -> dict[str, Any]:
    """Time `artifacts` interleaved and return the report record.

    warmup: untimed calls per row after the first call; runs / duration: stop after this many rounds or
    seconds of rounds, whichever comes first (default 100 rounds; at least 3). batches, threads: every
    combination is a row (None: the runtime's default threads). images: files or folders (default: the
    bundled samples). imgsz: the size given to symbolic dimensions of ONNX models that are not
    deim-edge's. val: also measure COCO AP on it. An artifact that fails to load or run is reported in
    its rows with the reason; a file type no runtime reads raises ModelFileError before anything runs.
    """
    specs = [ArtifactSpec.parse(a) for a in artifacts]
    if not specs:
        raise ConfigError("name at least one artifact to benchmark")
    _check_settings(warmup, runs, duration, batches, threads)
    if val is not None:
        coco_api()  # a missing COCO library is an error now, not after the timing
    runs = DEFAULT_RUNS if runs is None and duration is None else runs
    with reporting(progress):
        bgr, sources = sample_images(images)
        step(f"{len(bgr)} image(s): {', '.join(Path(s).name for s in sources)}")
        facts = device_facts()
        rows, loaded = _load_all(specs, batches, threads, bgr, conf, imgsz, warmup)
        monitor = ClockMonitor(interval=clock_interval)
        rounds, seconds = _interleave([r for r in rows if r.call is not None], runs, duration, monitor, progress)
        for row in rows:
            row.record["latency_ms"], row.record["samples_ms"] = _statistics(row.times)
            row.record["runs"] = len(row.times["inference"])
            row.record["fps"] = _fps(row)
            row.call = None
        _ratios(rows)
        if val is not None:
            _accuracy(rows, loaded, val)
        clocks = monitor.summary()
        for row in rows:
            row.record["throttled"] = clocks["throttled"] if row.record["status"] == "ok" else None
    settings = {"warmup": warmup, "runs": runs, "duration_s": duration, "rounds": rounds,
                "timed_s": round(seconds, 3), "batches": list(batches), "threads": list(threads), "conf": conf,
                "images": sources, "val": None if val is None else {"annotations": str(val.annotations),
                                                                     "images": str(val.images),
                                                                     "max_images": val.max_images}}
    return new_report([r.record for r in rows], settings, facts, clocks)


def _check_settings(warmup: int, runs: int | None, duration: float | None, batches: Sequence[int],
                    threads: Sequence[int | None]) -> None:
    if warmup < 0:
        raise ConfigError(f"warmup must be 0 or more, got {warmup}")
    if runs is not None and runs < 1:
        raise ConfigError(f"runs must be at least 1, got {runs}")
    if duration is not None and duration <= 0:
        raise ConfigError(f"duration must be positive, got {duration}")
    if not batches or any(int(b) < 1 for b in batches):
        raise ConfigError(f"batch sizes must be at least 1, got {list(batches)}")
    if not threads or any(t is not None and int(t) < 1 for t in threads):
        raise ConfigError(f"thread counts must be at least 1, got {list(threads)}")


def _load_all(specs: list[ArtifactSpec], batches: Sequence[int], threads: Sequence[int | None],
              images: list[np.ndarray], conf: float, imgsz: int,
              warmup: int) -> tuple[list[Row], list[tuple[Candidate, list[Row]]]]:
    """Load, first-call and warm up each row; record failures in the rows."""
    rows: list[Row] = []
    loaded: list[tuple[Candidate, list[Row]]] = []
    for spec in specs:
        for n_threads in threads:
            group = [Row(_blank_record(spec, n_threads, b)) for b in batches]
            rows.extend(group)
            step(f"loading {spec.name}" + (f" ({n_threads} thread(s))" if n_threads else ""))
            memory.reset_peak()
            rss_before = memory.rss_mb()
            start = time.perf_counter()
            try:
                candidate = load_candidate(spec, n_threads, images, conf, imgsz)
            except Exception as e:  # noqa: BLE001 -- any failure to load belongs in the row, not a traceback
                for row in group:
                    _fail(row, e, "failed to load")
                continue
            load_s = time.perf_counter() - start
            loaded.append((candidate, group))
            for row in group:
                _warm_up(row, candidate, warmup, load_s)
            rss_after, peak = memory.rss_mb(), memory.peak_rss_mb()
            added = rss_after - rss_before if rss_after is not None and rss_before is not None else None
            for row in group:
                row.record.update(rss_added_mb=_round(added, 1), peak_rss_mb=_round(peak, 1))
    return rows, loaded


def _blank_record(spec: ArtifactSpec, threads: int | None, batch: int) -> dict[str, Any]:
    return {"name": spec.name, "artifact": str(spec.path), "backend": spec.backend, "runtime": None, "kind": None,
            "batch": batch, "threads": threads, "status": "ok", "error": None, "notes": [],
            "size_mb": _round(artifact_size_mb(spec.path), 2), "load_s": None, "first_call_ms": None, "warmup": 0,
            "runs": 0, "rss_added_mb": None, "peak_rss_mb": None, "latency_ms": {}, "fps": None, "ratio": None,
            "ratio_basis": None, "ratio_to": None, "ap": None, "throttled": None, "metadata": None, "samples_ms": {},
            "float_precision": None}


def _warm_up(row: Row, candidate: Candidate, warmup: int, load_s: float) -> None:
    record = row.record
    record.update(runtime=candidate.runtime, kind=candidate.kind, load_s=round(load_s, 3),
                  metadata=candidate.describe(), notes=list(candidate.notes),
                  float_precision=getattr(candidate, "float_precision", None))
    if candidate.fixed_batch is not None and candidate.fixed_batch != record["batch"]:
        record.update(status="skipped", error=f"skipped: the artifact takes batch {candidate.fixed_batch} only "
                                              f"(export it with --dynamic-batch, or --batch {record['batch']})")
        return
    try:
        call = candidate.prepare(record["batch"])
        start = time.perf_counter()
        call()
        record["first_call_ms"] = round(1000 * (time.perf_counter() - start), 3)
        for _ in range(warmup):
            call()
    except Exception as e:  # noqa: BLE001
        _fail(row, e, "failed in its first calls")
        return
    record["warmup"] = warmup
    row.call = call


def _interleave(rows: list[Row], runs: int | None, duration: float | None, monitor: ClockMonitor,
                progress: bool) -> tuple[int, float]:
    """Round after round, each row once per round (starting with a different row each round, so none is
    always first); returns the rounds run and the seconds they took."""
    if not rows:
        return 0, 0.0
    step(f"timing {len(rows)} row(s) interleaved: " + (f"{runs} rounds" if runs else "") +
         (" or " if runs and duration else "") + (f"{duration:g} s" if duration else ""))
    monitor.sample(force=True)
    gc.collect()
    gc.disable()  # a collection inside a timed call would land on whichever row was running
    start = time.perf_counter()
    done = 0
    try:
        with Progress(runs, "bench rounds") if progress else contextlib.nullcontext() as bar:
            while rows:
                active = list(rows)
                for i in range(len(active)):
                    row = active[(done + i) % len(active)]
                    try:
                        timing = row.call()
                    except Exception as e:  # noqa: BLE001
                        _fail(row, e, f"failed in round {done + 1}")
                        rows.remove(row)
                        continue
                    _append(row, timing)
                done += 1
                monitor.sample()
                if bar is not None:
                    bar.update()
                elapsed = time.perf_counter() - start
                if (runs is not None and done >= runs) or (duration is not None and elapsed >= duration
                                                           and done >= MIN_RUNS):
                    break
    finally:
        gc.enable()
    monitor.sample(force=True)
    return done, time.perf_counter() - start


def _append(row: Row, timing: Timing) -> None:
    pre, infer, post = timing
    row.times["inference"].append(infer)
    if pre is not None and post is not None:
        row.times["preprocess"].append(pre)
        row.times["decode"].append(post)
        row.times["end_to_end"].append(pre + infer + post)


def _statistics(times: dict[str, list[float]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Per stage: {p50, p90, p99, mean, std, min, max} in ms, and the samples in ms."""
    stats, samples = {}, {}
    for stage, values in times.items():
        if not values:
            continue
        ms = 1000 * np.asarray(values)
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        stats[stage] = {k: round(float(v), 4) for k, v in (("p50", p50), ("p90", p90), ("p99", p99),
                                                           ("mean", ms.mean()), ("std", ms.std()),
                                                           ("min", ms.min()), ("max", ms.max()))}
        samples[stage] = [round(float(v), 4) for v in ms]
    return stats, samples


def _fps(row: Row) -> float | None:
    """Images per second: the batch over the mean time of a whole call (end to end, else inference)."""
    basis = row.times["end_to_end"] or row.times["inference"]
    return round(row.record["batch"] / statistics.fmean(basis), 2) if basis else None


def _ratios(rows: list[Row]) -> None:
    """Each row's time over the first measured row's, as the median over rounds of the per-round ratio
    (end to end when both rows have it, else inference alone)."""
    measured = [r for r in rows if r.record["status"] == "ok" and r.times["inference"]]
    if not measured:
        return
    ref = measured[0]
    for row in measured:
        basis = "end_to_end" if row.times["end_to_end"] and ref.times["end_to_end"] else "inference"
        pairs = [a / b for a, b in zip(row.times[basis], ref.times[basis])]
        row.record["ratio"] = round(statistics.median(pairs), 4)
        row.record["ratio_basis"] = basis
        row.record["ratio_to"] = ref.record["name"]


def _accuracy(rows: list[Row], loaded: list[tuple[Candidate, list[Row]]], val: ValSet) -> None:
    """COCO AP once per loaded deim-edge artifact, shared by its rows (the batch does not change it)."""
    for candidate, group in loaded:
        if candidate.kind == FOREIGN or all(r.record["status"] != "ok" for r in group):
            continue
        name = group[0].record["name"]
        step(f"COCO AP of {name} on {val.annotations.name}")
        try:
            ap = coco_ap(candidate.detector, val, desc=f"AP {name}")
        except Exception as e:  # noqa: BLE001 -- the timings stand without the AP
            for row in group:
                row.record["notes"].append(f"no AP: {_reason(e)}")
            continue
        for row in group:
            if row.record["status"] == "ok":
                row.record["ap"] = ap


def _fail(row: Row, error: Exception, when: str) -> None:
    row.record.update(status="failed", error=f"{when}: {_reason(error)}")
    row.call = None


def _reason(error: Exception) -> str:
    """Our errors say what to do; anything else is named by its type too."""
    return str(error) if isinstance(error, DeimEdgeError) else f"{type(error).__name__}: {error}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
