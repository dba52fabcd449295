"""Detector end to end (load, preprocess, run, decode) against the bare ONNX Runtime call.

    python benchmarks/bench_detector.py [--model deimv2-atto.onnx] [--image photo.jpg] [--rounds 200]

Without --model, exports Atto at 320 (random weights) to a temporary folder. Both paths share
one session (1 intra-op thread by default) and run interleaved, round by round, so a noisy
machine slows them alike; the table gives medians, the overhead ratio and the split of the
Detector's time into preprocess, inference and decode.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from deim_edge import Detector

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "images" / "astronaut.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a deim-edge ONNX artifact (default: export Atto at 320)")
    parser.add_argument("--image", default=str(PHOTO))
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from deim_edge.export import export

            model = export(None, "onnx", variant="deimv2-atto", out=Path(tmp) / "atto.onnx")
        run(Path(model), cv2.imread(args.image), args.rounds, args.threads)


def run(model: Path, image, rounds: int, threads: int) -> None:
    det = Detector(model, threads=threads, conf=0.25)
    session = det.runtime.session
    batch, _ = det.preprocess([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])
    feed = {session.get_inputs()[0].name: batch.copy()}
    times = {"bare session.run": [], "Detector end to end": [], "preprocess": [], "inference": [], "decode": []}
    for _ in range(10):  # warm-up
        session.run(None, feed)
        det(image)
    for _ in range(rounds):
        start = time.perf_counter()
        session.run(None, feed)
        times["bare session.run"].append(time.perf_counter() - start)

        start = time.perf_counter()
        det(image)
        times["Detector end to end"].append(time.perf_counter() - start)

        t0 = time.perf_counter()
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        inputs, transforms = det.preprocess([rgb])
        t1 = time.perf_counter()
        outputs = det.infer(inputs)
        t2 = time.perf_counter()
        det.postprocess(outputs, transforms)
        t3 = time.perf_counter()
        times["preprocess"].append(t1 - t0)
        times["inference"].append(t2 - t1)
        times["decode"].append(t3 - t2)

    medians = {k: 1000 * statistics.median(v) for k, v in times.items()}
    bare = medians["bare session.run"]
    h, w = image.shape[:2]
    print(f"{det!r}; image {w}x{h}; {rounds} interleaved rounds, {threads} thread(s); medians")
    for name, ms in medians.items():
        print(f"  {name:<22}{ms:8.3f} ms   {ms / bare:6.3f} x bare")
    overhead = medians["Detector end to end"] / bare - 1
    print(f"Detector overhead over the bare call: {100 * overhead:+.1f}% (target: at most +10%)")


if __name__ == "__main__":
    main()
