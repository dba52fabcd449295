"""Our ONNX export against the public DEIMv2 export of the same weights, under ONNX Runtime.

    python benchmarks/bench_official_onnx.py --variant deimv2-atto --deimv2 /path/to/DEIMv2
    python benchmarks/bench_official_onnx.py --variant deimv2-pico --checkpoint pico.pth --deimv2 ...

Weights: --checkpoint, or a seeded random checkpoint (BatchNorm statistics set from random
images, so scores do not tie). Ours: `deim_edge.export` (TOPK outputs, static batch 1, and the
same with a dynamic batch). Official: what the public tools/deployment/export_onnx.py does --
model.deploy() + postprocessor.deploy(), inputs images + orig_target_sizes, outputs labels,
boxes, scores, a dynamic batch traced at 32, opset 17, then onnxsim (or onnxslim) -- built in a
subprocess from the checkout given by --deimv2 (skipped, with a message, without it).

Prints the agreement of the files' detections, ONNX Runtime latency (one intra-op thread by
default; candidates interleaved round by round in one process; medians, p90 and the ratio to
the official file: of medians, and the median of per-round ratios) and node counts by op type.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from deim_edge.models.checkpoint import SCORE_HEAD, SIZE_DEPENDENT

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_OPSET = 17
OFFICIAL_TRACE_BATCH = 32  # the public script traces a batch of 32 with a dynamic N axis
OFFICIAL_TOP_QUERIES = 300  # configs/base/deimv2.yml PostProcessor.num_top_queries


def export_official(deimv2: Path, variant: str, size: int, checkpoint: Path, out: Path) -> None:
    """The public export_onnx.py, step by step, for `checkpoint` (runs in its own process)."""
    import warnings

    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "tools"))
    from deimv2_reference import build_reference

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = ckpt["ema"]["module"] if "ema" in ckpt else ckpt["model"]
    num_classes = state[SCORE_HEAD].shape[0]
    model = build_reference(deimv2, variant, size, num_classes)
    from engine.deim.postprocessor import PostProcessor  # importable once build_reference set the path

    own = model.state_dict()  # anchors and valid mask are built for `size`; a checkpoint may be of another size
    model.load_state_dict({k: own[k] if k in SIZE_DEPENDENT else v for k, v in state.items()})

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.deploy()
            self.postprocessor = PostProcessor(num_classes=num_classes, use_focal_loss=True,
                                               num_top_queries=OFFICIAL_TOP_QUERIES).deploy()

        def forward(self, images, orig_target_sizes):
            return self.postprocessor(self.model(images), orig_target_sizes)

    warnings.simplefilter("ignore")  # the public code's tracer warnings
    wrapper = Model()
    data = torch.rand(OFFICIAL_TRACE_BATCH, 3, size, size)
    sizes = torch.tensor([[size, size]])
    wrapper(data, sizes)
    torch.onnx.export(wrapper, (data, sizes), str(out), input_names=["images", "orig_target_sizes"],
                      output_names=["labels", "boxes", "scores"],
                      dynamic_axes={"images": {0: "N"}, "orig_target_sizes": {0: "N"}},
                      opset_version=OFFICIAL_OPSET, do_constant_folding=True, dynamo=False)
    import onnx

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    try:
        import onnxsim

        proto, ok = onnxsim.simplify(proto, test_input_shapes={"images": list(data.shape),
                                                               "orig_target_sizes": list(sizes.shape)})
        name = f"onnxsim (check {ok})"
    except ImportError:
        import onnxslim

        proto, name = onnxslim.slim(proto), "onnxslim (onnxsim not installed)"
    onnx.save(proto, str(out))
    print(f"official export simplified with {name}", file=sys.stderr)


def seeded_checkpoint(variant: str, size: int, seed: int, path: Path) -> Path:
    from deim_edge.export.weights import random_model
    from deim_edge.models import save_checkpoint

    return save_checkpoint(path, random_model(variant, input_size=size, seed=seed))


def detections(name: str, sess, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, boxes normalized xyxy) of either file kind, batch 1."""
    if name == "official":
        h, w = images.shape[2:]
        labels, boxes, scores = sess.run(None, {"images": images, "orig_target_sizes": np.array([[w, h]])})
        return scores[0], labels[0], boxes[0] / np.array([w, h, w, h], dtype=np.float32)
    scores, labels, boxes = sess.run(None, {"images": images})
    return scores[0], labels[0], boxes[0]


def op_counts(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="deimv2-atto")
    parser.add_argument("--imgsz", type=int, help="default: the variant's")
    parser.add_argument("--checkpoint", type=Path, help="default: a seeded random checkpoint")
    parser.add_argument("--deimv2", type=Path, help="a checkout of the public DEIMv2 code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--keep", type=Path, help="write the ONNX files here (default: a temporary folder)")
    parser.add_argument("--official-worker", nargs=3, metavar=("CKPT", "OUT", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from deim_edge import get_variant

    variant = get_variant(args.variant)
    if args.official_worker:
        ckpt, out, size = args.official_worker
        export_official(args.deimv2, variant.name, int(size), Path(ckpt), Path(out))
        return

    size = args.imgsz or variant.input_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = args.checkpoint or seeded_checkpoint(variant.name, size, args.seed,
                                                          folder / f"{variant.name}_seed{args.seed}.pth")
        run(args, variant.name, size, checkpoint, folder)


def run(args: argparse.Namespace, variant: str, size: int, checkpoint: Path, folder: Path) -> None:
    from deim_edge.export import export

    files: dict[str, Path] = {}
    t = time.perf_counter()
    files["ours"] = export(checkpoint, variant=variant, imgsz=size, out=folder / f"{variant}_{size}_ours.onnx")
    print(f"ours exported in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    files["ours-dynamic"] = export(checkpoint, variant=variant, imgsz=size, dynamic_batch=True,
                                   out=folder / f"{variant}_{size}_ours_dynamic.onnx")
    print(f"ours (dynamic batch) exported in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    if args.deimv2 is None:
        print("official side skipped: pass --deimv2 PATH (a checkout of Intellindust-AI-Lab/DEIMv2) to compare "
              "with the public export")
    else:
        out = folder / f"{variant}_{size}_official.onnx"
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--variant", variant, "--deimv2", str(args.deimv2),
                        "--official-worker", str(checkpoint), str(out), str(size)], check=True)
        print(f"official exported in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        files["official"] = out

    images = np.random.default_rng(args.seed).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    from deim_edge.runtimes.onnxruntime import ort_session

    sessions = {name: ort_session(path, args.threads) for name, path in files.items()}
    results = {name: detections(name, s, images) for name, s in sessions.items()}
    reference = "official" if "official" in results else "ours"
    for name, (scores, labels, boxes) in results.items():
        if name == reference:
            continue
        ref_scores, ref_labels, ref_boxes = results[reference]
        same = labels == ref_labels
        print(f"{name:<13} vs {reference}: labels equal {same.mean():.3f}, max |score diff| "
              f"{np.abs(scores - ref_scores).max():.2e}, max |box diff| (same label) "
              f"{np.abs(boxes - ref_boxes)[same].max() if same.any() else float('nan'):.2e}")

    times = {name: [] for name in sessions}
    for _ in range(args.warmup):
        for name, s in sessions.items():
            detections(name, s, images)
    for i in range(args.rounds):
        for name in list(sessions) if i % 2 == 0 else list(sessions)[::-1]:  # no file always runs first
            start = time.perf_counter()
            detections(name, sessions[name], images)
            times[name].append(1000 * (time.perf_counter() - start))

    import onnxruntime

    base = statistics.median(times[reference])
    print(f"\n{variant} at {size}x{size}, batch 1, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} intra-op thread(s), {args.rounds} interleaved rounds")
    print(f"{'file':<14}{'min ms':>9}{'p50 ms':>9}{'p90 ms':>9}{'ratio':>8}{'nodes':>8}")
    counts = {name: op_counts(path) for name, path in files.items()}
    for name, ms in times.items():
        ms = sorted(ms)
        p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
        print(f"{name:<14}{ms[0]:>9.2f}{statistics.median(ms):>9.2f}{p90:>9.2f}{statistics.median(ms) / base:>8.3f}"
              f"{sum(counts[name].values()):>8}")

    for name, ms in times.items():  # per-round pairs cancel the machine's slow drifts
        if name != reference:
            paired = [a / b for a, b in zip(ms, times[reference])]
            print(f"{name} / {reference}, paired by round: median ratio {statistics.median(paired):.3f}, "
                  f"faster in {sum(r < 1 for r in paired) / len(paired):.0%} of rounds")

    ops = sorted(set().union(*counts.values()), key=lambda op: -max(c[op] for c in counts.values()))
    print(f"\n{'op':<18}" + "".join(f"{name:>14}" for name in counts))
    for op in ops:
        print(f"{op:<18}" + "".join(f"{c[op]:>14}" for c in counts.values()))


if __name__ == "__main__":
    main()
