"""Detect objects in every frame of a video: an annotated copy and, optionally, JSON lines (one per frame).

    python examples/detect_video.py deimv2-pico.onnx clip.mp4 --out clip-detected.mp4 --json clip.jsonl

For cameras, streams and live viewing in a browser see examples/jetson/detect_stream.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2

from deim_edge import DeimEdgeError, Detector
from deim_edge.media import Video


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an artifact: .onnx, .engine, .xml, .tflite, .mlpackage, .pth")
    p.add_argument("video", help="a video file OpenCV can read")
    p.add_argument("--out", help="the annotated video, .mp4 or .avi (default: <video>-detected.mp4)")
    p.add_argument("--json", help="JSON lines: one {frame, image_size, detections} per frame")
    p.add_argument("--conf", type=float, default=0.35, help="minimum score (default 0.35)")
    p.add_argument("--backend", help="runtime (default: by file suffix)")
    p.add_argument("--threads", type=int, help="inference threads (ONNX Runtime, OpenVINO, LiteRT)")
    args = p.parse_args(argv)

    try:
        detector = Detector(args.model, backend=args.backend, conf=args.conf,
                            **({"threads": args.threads} if args.threads else {}))
        video = Video(args.video)  # frames come BGR, as OpenCV decodes them
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fps = video.fps or 30.0
    total = video.frame_count or "?"
    out_path = args.out or args.video.rsplit(".", 1)[0] + "-detected.mp4"
    codec = "MJPG" if out_path.lower().endswith(".avi") else "mp4v"
    writer = None
    lines = open(args.json, "w") if args.json else None  # noqa: SIM115
    count, start = 0, time.perf_counter()
    try:
        for frame in video:
            dets = detector(frame, color="BGR")
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*codec), fps, size)
            writer.write(dets.draw(frame))
            if lines is not None:
                lines.write(json.dumps({"frame": count, **dets.to_dict()}) + "\n")
            count += 1
            if count % 50 == 0:
                print(f"{count}/{total} frames, {count / (time.perf_counter() - start):.1f} fps", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        video.close()
        if writer is not None:
            writer.release()
        if lines is not None:
            lines.close()
    elapsed = time.perf_counter() - start
    print(f"{count} frames in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.1f} fps): {out_path}", file=sys.stderr)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())
