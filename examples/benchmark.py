"""Time one artifact on this device: preprocess, inference and postprocess, p50/p90/p99 in milliseconds.

    python examples/benchmark.py deimv2-pico.engine                  # on a Jetson
    python examples/benchmark.py deimv2-pico.onnx --threads 4 --runs 500

Run it once per power mode (sudo nvpmodel -m N; sudo jetson_clocks) to see what each does to latency. The full
harness, several artifacts side by side with a report, is `python -m deim_edge.bench`.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from deim_edge import DeimEdgeError, Detector


def device_summary() -> str:
    """The machine; on a Jetson its model and nvpmodel power mode."""
    lines = [f"{platform.machine()} {platform.system()} {platform.release()}, Python {platform.python_version()}"]
    model = Path("/proc/device-tree/model")
    if model.exists():
        lines.append(model.read_text(errors="ignore").strip("\x00\n "))
    if shutil.which("nvpmodel"):
        try:
            query = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
            lines.append("power mode: " + " ".join(query.split()))
        except (OSError, subprocess.SubprocessError):
            pass
    return "\n".join(lines)


def percentiles(ms: list[float]) -> str:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"{p50:8.2f}{p90:8.2f}{p99:8.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an artifact: .engine, .onnx, .xml, .tflite, .mlpackage, .pth")
    p.add_argument("--image", help="an image to run on (default: random pixels at 1280x720)")
    p.add_argument("--runs", type=int, default=200, help="timed runs (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    p.add_argument("--backend", help="runtime (default: by file suffix)")
    p.add_argument("--threads", type=int, help="inference threads (ONNX Runtime, OpenVINO, LiteRT)")
    args = p.parse_args(argv)

    try:
        detector = Detector(args.model, backend=args.backend, conf=0.35,
                            **({"threads": args.threads} if args.threads else {}))
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.image:
        bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"error: cannot read the image {args.image}", file=sys.stderr)
            return 2
    else:
        bgr = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    images = [rgb] * (detector.metadata.batch or 1)  # an artifact with a fixed batch gets a whole batch

    print(device_summary())
    print(f"{detector!r}, image {bgr.shape[1]}x{bgr.shape[0]}, batch {len(images)}, "
          f"{args.warmup} warm-up + {args.runs} timed runs")
    times: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": [], "total": []}
    for i in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        batch, transforms = detector.preprocess(images)
        t1 = time.perf_counter()
        outputs = detector.infer(batch)
        t2 = time.perf_counter()
        detector.postprocess(outputs, transforms)
        t3 = time.perf_counter()
        if i >= args.warmup:
            for key, ms in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                times[key].append(1000 * ms)
    print(f"{'ms':<12}{'p50':>8}{'p90':>8}{'p99':>8}")
    for key, ms in times.items():
        print(f"{key:<12}{percentiles(ms)}")
    median = float(np.median(times["total"]))
    print(f"throughput  {1000 * len(images) / median:.1f} images/s at the median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
