"""Command line: `python -m deim_edge {predict,export,train,bench,demo,tile,info}`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import VARIANTS, get_variant
from .errors import ConfigError, DeimEdgeError, ImageError


def info(args: argparse.Namespace) -> None:
    """Without a variant: the table of variants. With one: build it and print its summary."""
    if args.variant is None:
        print(f"{'variant':<14}{'input':>6}{'backbone':>20}{'params':>12}{'GFLOPs':>9}{'COCO AP':>9}{'T4 ms':>7}")
        for v in VARIANTS.values():
            p = v.published
            print(f"{v.name:<14}{v.input_size:>6}{v.backbone.name:>20}{p.params_deploy:>12,}{p.gflops:>9.3f}"
                  f"{p.coco_ap:>9.1f}{p.t4_trt_fp16_ms:>7.2f}")
        return

    from .models import build_model, flops, load_checkpoint, num_params  # first: names the extra if torch is missing

    import torch

    variant = get_variant(args.variant)
    size = args.imgsz or variant.input_size
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint, variant, input_size=size)
        source = args.checkpoint
    else:
        model = build_model(variant, input_size=size).eval()
        source = "random weights (no --checkpoint given)"
    train_params = num_params(model)
    deployed = model.deploy()
    deploy_params = num_params(deployed)
    gflops = flops(deployed, size) / 1e9
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        deployed(x)  # warm-up
        start = time.perf_counter()
        out = deployed(x)
        ms = 1000 * (time.perf_counter() - start)
    v = variant
    norm = "x/255" if v.mean is None else f"x/255, mean {v.mean}, std {v.std}"
    print(f"{v.name}  ({source})")
    print(f"  backbone   {v.backbone.name}, taps {list(v.backbone.taps)}")
    print(f"  encoder    {v.encoder.kind} (hidden {v.encoder.hidden_dim})")
    print(f"  decoder    {v.decoder.num_layers} layers, {v.decoder.num_queries} queries, "
          f"points {list(v.decoder.num_points)}")
    print(f"  input      {size}x{size} RGB, {norm}")
    print(f"  params     train {train_params:,} (official {v.published.params_train:,}), "
          f"deploy {deploy_params:,} (official {v.published.params_deploy:,})")
    print(f"  GFLOPs     {gflops:.3f} at {size} (official {v.published.gflops} at {v.input_size})")
    print(f"  outputs    pred_logits {tuple(out['pred_logits'].shape)}, pred_boxes {tuple(out['pred_boxes'].shape)}")
    print(f"  CPU        {ms:.1f} ms for one forward at batch 1 ({torch.get_num_threads()} threads)")


def predict(args: argparse.Namespace) -> None:
    """Detect on images, folders and videos (tile by tile with --slice, tracked with --track); save annotated
    copies and a JSON of detections."""
    from .detector import Detector
    from .predict import errors_path, json_target, predict_files
    from .predict import predict as run_predict

    target = json_target(args.save, args.json)  # before the model loads
    slicing = _slicing(args)
    predict_files(args.sources, track=args.track)  # missing inputs, and --track on images, before the model loads
    options = {"threads": args.threads} if args.threads else {}
    classes = [int(c) if c.isdigit() else c for c in args.classes] if args.classes else None
    detector = Detector(args.model, backend=args.backend, conf=args.conf, max_det=args.max_det, classes=classes,
                        **slicing, **options)
    records, failed = run_predict(detector, args.sources, save=args.save, json_path=args.json, track=args.track)
    if target is None:
        print(json.dumps(records, indent=1))
    elif args.save:
        lines = ", a <video>.jsonl of tracked detections per video" if args.track else ""
        print(f"{len(records)} source(s): annotated copies{lines} and detections.json in {args.save}",
              file=sys.stderr)
    if failed:
        where = f"in {target}, the failed listed in {errors_path(target)}" if target else "on stdout"
        raise ImageError(f"{len(failed)} of {len(records) + len(failed)} input(s) could not be read and were skipped "
                         f"({next(iter(failed.values()))}); the detections of the other {len(records)} are {where}")


def _slicing(args: argparse.Namespace) -> dict:
    """Detector's slice and overlap options from --slice and --overlap, checked (ConfigError)."""
    from .slicing import check_slicing

    if args.slice is None:
        if args.overlap is not None:
            raise ConfigError("--overlap is the overlap of the tiles --slice cuts; give --slice too, e.g. --slice 640")
        return {}
    side = args.slice[0] if len(args.slice) == 1 else tuple(args.slice)
    slice_wh, overlap = check_slicing(side, 0.2 if args.overlap is None else args.overlap)
    return {"slice": slice_wh, "overlap": overlap}


def tile(args: argparse.Namespace) -> None:
    """Cut a dataset's large images into training tiles, written in COCO layout."""
    from .fileio import check_output
    from .training.data.layouts import read_dataset
    from .training.data.tiles import tile_dataset

    # the tiler checks these too, but only once it has made the output folder
    if args.size < 32:
        raise ConfigError(f"--size is the tile side in pixels, at least 32; got {args.size}")
    if not 0 <= args.overlap < 1:
        raise ConfigError(f"--overlap is a fraction of the tile in [0, 1), e.g. 0.2; got {args.overlap}")
    if not 0 < args.min_visible <= 1:
        raise ConfigError(f"--min-visible is a fraction of a box's area in (0, 1], e.g. 0.5; got {args.min_visible}")
    check_output(args.out, folder=True)
    layout, splits = read_dataset(args.dataset)
    try:
        report = tile_dataset(splits, args.out, args.size, overlap=args.overlap, min_visible=args.min_visible,
                              keep_empty=args.keep_empty)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the tiles cut so far are in {args.out}, an incomplete dataset: remove it before "
                                "tiling again") from None
    for name, c in report.items():
        print(f"{name}: {c['tiles']} tiles of {args.size} px, {c['boxes']} boxes ({c['boxes_cut_kept']} cut at a "
              f"border and kept, {c['boxes_cut_dropped']} mostly outside: dropped and filled), "
              f"{c['tiles_empty_skipped']} empty tiles skipped")
    print(f"{layout} dataset tiled into {args.out} (COCO layout): python -m deim_edge train --data {args.out} ...")


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; the exit status: 2 for bad input (one line on stderr), 130 when interrupted (Ctrl-C)."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt as e:  # carries what was kept, where the command knows
        print(f"interrupted; {str(e) or 'files finished before it are kept, none half-written'}", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] == ["export"]:  # export, train, bench and demo have command lines of their own
        from .export.__main__ import main as export_main

        return export_main(argv[1:])
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["bench"]:
        from .bench.__main__ import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m deim_edge", description="DEIMv2 detectors on edge devices")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("export", help="export a checkpoint: python -m deim_edge export --help")
    commands.add_parser("train", help="train a variant: python -m deim_edge train --help")
    commands.add_parser("bench", help="time artifacts interleaved: python -m deim_edge bench --help")
    commands.add_parser("demo", help="export the bundled model to every backend here, compare and time them")
    p = commands.add_parser(
        "predict", help="detect on images, folders and videos",
        description="Detect on images, folders and videos. An input that cannot be read is skipped and the others go "
                    "on; the detections JSON holds the inputs done, and when some failed (exit status 2) or Ctrl-C "
                    "stopped the run (130), detections.errors.json beside it lists the failed and the unfinished.")
    p.add_argument("model", help="an artifact: .onnx (deim-edge or official DEIMv2 export), .pth, ...")
    p.add_argument("sources", nargs="+", help="image files, folders, video files")
    p.add_argument("--save", help="folder for annotated images/videos and detections.json")
    p.add_argument("--json", help="where to write the detections JSON (default: SAVE/detections.json)")
    p.add_argument("--conf", type=float, default=0.25, help="minimum score (default 0.25)")
    p.add_argument("--max-det", type=_positive_int, help="most detections per image (default: the artifact's)")
    p.add_argument("--classes", nargs="+", help="keep only these classes (names or ids)")
    p.add_argument("--backend", help="runtime to use (default: by file suffix)")
    p.add_argument("--threads", type=_positive_int, help="inference threads")
    p.add_argument("--slice", type=int, nargs="+", metavar="SIDE",
                   help="detect tile by tile, for small objects in large images: the tile size in pixels, one side "
                        "or WIDTH HEIGHT (e.g. 640; about the model's input size keeps objects at their own scale)")
    p.add_argument("--overlap", type=float, help="with --slice: the overlap of neighbouring tiles, a fraction (0.2)")
    p.add_argument("--track", action="store_true",
                   help="videos only: follow objects across frames (ByteTrack); detections carry a track id, drawn "
                        "as #id, and SAVE/<video>.jsonl gets one line per frame")
    p.set_defaults(run=predict)

    p = commands.add_parser("tile", help="cut large annotated images into training tiles (COCO layout out)")
    p.add_argument("dataset", help="a dataset folder in COCO, Pascal VOC or YOLO layout")
    p.add_argument("--out", required=True, help="a new folder for the tiles")
    p.add_argument("--size", type=int, default=640, help="tile side in pixels (default 640)")
    p.add_argument("--overlap", type=float, default=0.2, help="overlap of neighbouring tiles, a fraction (0.2)")
    p.add_argument("--min-visible", type=float, default=0.5,
                   help="a cut box is kept when this fraction of it is inside the tile, else masked (0.5)")
    p.add_argument("--keep-empty", action="store_true", help="keep tiles without any box")
    p.set_defaults(run=tile)

    p = commands.add_parser("info", help="list the variants, or build one and print its summary")
    p.add_argument("variant", nargs="?", help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--imgsz", type=int, help="input size (a multiple of 32); default: the variant's")
    p.add_argument("--checkpoint", help="a .pth checkpoint (official DEIMv2 or deim-edge)")
    p.set_defaults(run=info)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
