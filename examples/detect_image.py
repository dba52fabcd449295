"""Detect objects in one image: print them and save an annotated copy.

    python examples/detect_image.py deimv2-pico.onnx street.jpg --out street-detected.jpg
    python examples/detect_image.py deimv2-pico.engine street.jpg --json
"""

from __future__ import annotations

import argparse
import sys

import cv2

from deim_edge import DeimEdgeError, Detector


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an artifact: .onnx, .engine, .xml, .tflite, .mlpackage, .pth")
    p.add_argument("image", help="an image file")
    p.add_argument("--out", help="where to save the annotated image (default: <image>-detected.jpg)")
    p.add_argument("--conf", type=float, default=0.35, help="minimum score (default 0.35)")
    p.add_argument("--backend", help="runtime (default: by file suffix)")
    p.add_argument("--threads", type=int, help="inference threads (ONNX Runtime, OpenVINO, LiteRT)")
    p.add_argument("--json", action="store_true", help="print the detections as JSON instead of a table")
    args = p.parse_args(argv)

    image = cv2.imread(args.image, cv2.IMREAD_COLOR)  # BGR, as OpenCV reads it
    if image is None:
        print(f"error: cannot read the image {args.image}", file=sys.stderr)
        return 2
    try:
        detector = Detector(args.model, backend=args.backend, conf=args.conf,
                            **({"threads": args.threads} if args.threads else {}))
        dets = detector(image, color="BGR")
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.json:
        print(dets.to_json())
    else:
        print(f"{len(dets)} objects in {args.image} ({image.shape[1]}x{image.shape[0]})")
        for name, score, (x1, y1, x2, y2) in zip(dets.class_names, dets.scores, dets.xyxy):
            print(f"  {name:<16} {score:.2f}  [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    out = args.out or args.image.rsplit(".", 1)[0] + "-detected.jpg"
    if not cv2.imwrite(out, dets.draw(image)):
        print(f"error: cannot write {out}", file=sys.stderr)
        return 1
    print(f"annotated: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
