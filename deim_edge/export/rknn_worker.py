"""The rknn-toolkit2 side of the RKNN export, run by the Python of the toolkit's own environment (its pins keep it
out of deim-edge's): `python rknn_worker.py JOB.json`. It imports the toolkit and numpy only, never deim_edge.

It converts the job's ONNX stages to .rknn files, then runs them in the toolkit's simulator (which simulates only
models built in the same process) for as long as the parent asks. It writes one JSON object per line on stdout:
{"step": text} while it works, {"ready": {"toolkit": version}} once every stage is built, then, for each request
{"input": "x.npy", "output": "y.npz"} read from stdin, {"done": "y.npz"} once the last stage's outputs are saved
there (arr_0, arr_1, ... in the model's output order); it ends at the end of stdin. A toolkit failure ends it with
{"error": text} and exit status 1. The toolkit's own messages go to the job's log file.

JOB: {"platform": "rk3588", "mean": [r, g, b], "std": [r, g, b] (in pixel values, 0-255), "log": path,
      "stages": [{"onnx": path, "rknn": path, "quantize": bool, "dataset": path or null, "algorithm": "normal"}]}
The first stage takes uint8 NHWC pixels (normalized inside the model by mean and std); each later stage takes the
float NCHW outputs of the stage before. A request's .npy holds the first stage's input.

`python rknn_worker.py --version` prints {"toolkit": version, or null where rknn-toolkit2 is not installed}.
"""
import json
import os
import re
import sys
from importlib import metadata

# run as a script, this file's folder (deim_edge/export) comes first on sys.path, where rknn.py would shadow the
# toolkit's rknn package
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]
COLOR = re.compile(r"\x1b\[[0-9;]*m")
NOT_THE_CAUSE = ("rknn-toolkit2 version", "Traceback", "Unkown op target")  # error lines that say nothing of it


class ToolkitError(Exception):
    """A toolkit call failed; the message is the toolkit's."""


def toolkit_version():
    try:
        return metadata.version("rknn-toolkit2")
    except metadata.PackageNotFoundError:
        return None


def main(argv):
    if argv == ["--version"]:
        print(json.dumps({"toolkit": toolkit_version()}))
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol; the toolkit prints on fds 1 and 2: the log
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)

    def send(**message):
        channel.write(json.dumps(message) + "\n")

    try:
        stages = [build(stage, job, first=i == 0, send=send) for i, stage in enumerate(job["stages"])]
        send(ready={"toolkit": toolkit_version()})
        for line in sys.stdin:
            request = json.loads(line)
            simulate(stages, request, job["log"])
            send(done=request["output"])
    except ToolkitError as e:
        send(error=str(e))
        return 1
    except Exception as e:  # noqa: BLE001 -- anything else ends the worker too, said to the parent
        send(error=f"{type(e).__name__}: {e}")
        return 1
    return 0


def build(stage, job, first, send):
    """An RKNN of the stage's ONNX, built, written to stage["rknn"] and started in the simulator."""
    from rknn.api import RKNN

    what = f"{'INT8' if stage['quantize'] else 'FP16'} {os.path.basename(stage['rknn'])}"
    send(step=f"rknn-toolkit2: building {what} for {job['platform']}")
    rknn = RKNN(verbose=False)
    config = {"target_platform": job["platform"]}
    if first:
        config.update(mean_values=[job["mean"]], std_values=[job["std"]])
    if stage["quantize"]:
        config["quantized_algorithm"] = stage["algorithm"]
    call(job["log"], "config", rknn.config, **config)
    call(job["log"], "load_onnx", rknn.load_onnx, model=stage["onnx"])
    call(job["log"], "build", rknn.build, do_quantization=stage["quantize"], dataset=stage["dataset"])
    call(job["log"], "export_rknn", rknn.export_rknn, stage["rknn"])
    call(job["log"], "init_runtime (the simulator)", rknn.init_runtime)
    return rknn


def simulate(stages, request, log):
    import numpy as np

    outputs, layout = [np.load(request["input"])], "nhwc"
    for rknn in stages:
        outputs = call(log, "inference", rknn.inference, inputs=outputs, data_format=layout)
        layout = "nchw"
    np.savez(request["output"], *[np.asarray(o, np.float32) for o in outputs])


def call(log, what, fn, *args, **kwargs):
    """fn(*args, **kwargs); ToolkitError with the toolkit's own error lines when it raises, returns -1 (its
    failure status) or returns None (inference's)."""
    start = os.path.getsize(log)
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- the toolkit raises bare exceptions
        raise ToolkitError(f"{what}: {errors(log, start) or f'{type(e).__name__}: {e}'}") from e
    if result is None or (isinstance(result, int) and result != 0):
        raise ToolkitError(f"{what} failed: {errors(log, start) or 'the toolkit said nothing more'}")
    return result


def errors(log, start):
    """The toolkit's error lines ("E ...") written to the log since offset `start`, without repeats."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        lines = [COLOR.sub("", line).strip() for line in f.read().replace("\r", "\n").splitlines()]
    found = [line[2:] for line in lines if line.startswith("E ") and not any(s in line for s in NOT_THE_CAUSE)]
    return "; ".join(dict.fromkeys(found))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
