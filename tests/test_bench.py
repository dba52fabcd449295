"""The latency harness: one command times the ONNX, OpenVINO and TFLite artifacts of Atto at 320 and
writes JSON, Markdown, CSV and PNG whose contents agree; failures stay in their rows; unknown file
types, foreign ONNX models, the AP column, thread counts and batch sizes, merging reports, throttling.

Checks contents, never absolute timings (the CI machine is shared and noisy)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deim_edge.accuracy import ValSet
from deim_edge.bench import benchmark, format_table, load_report, merge_reports, write_report
from deim_edge.bench.clocks import ClockMonitor
from deim_edge.errors import ConfigError, MissingDependencyError, ModelFileError
from deim_edge.metadata import COCO_CLASSES

VARIANT, SIZE, CLASSES = "deimv2-atto", 320, ("circle", "square", "triangle", "ring")
STATS = ("p50", "p90", "p99", "mean", "std", "min", "max")


def _why_not(target: str) -> str | None:
    from deim_edge.demo import unavailable
    from deim_edge.export.registry import get_target

    return unavailable(get_target(target))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """Atto at 320 (random weights, the synthetic set's 4 classes): a dynamic-batch ONNX file, an OpenVINO IR
    and, where this build and machine can make one, a TFLite file: COCO's 80 classes there, the graph the TFLite
    tests convert (onnx2tf's result of a graph is reused within a process)."""
    pytest.importorskip("onnxruntime", reason="the benchmark tests time ONNX Runtime")
    from deim_edge.export import export
    from deim_edge.export.weights import random_model

    folder = tmp_path_factory.mktemp("bench")
    model = random_model(VARIANT, input_size=SIZE, num_classes=len(CLASSES))
    out = {"onnx": export(model, "onnx", out=folder / "atto.onnx", class_names=CLASSES, dynamic_batch=True)}
    if _why_not("openvino") is None:
        out["openvino"] = export(model, "openvino", out=folder / "atto.xml", class_names=CLASSES)
    if _why_not("tflite") is None:
        out["tflite"] = export(random_model(VARIANT, input_size=SIZE), "tflite", out=folder / "atto.tflite",
                               decode="host")
    return out


@pytest.fixture(scope="module")
def cli_report(artifacts, tmp_path_factory) -> tuple[dict, Path]:
    """`python -m deim_edge.bench` over every artifact with batch sizes 1 and 2, with torch made unimportable."""
    out = tmp_path_factory.mktemp("report")
    argv = [str(p) for p in artifacts.values()] + ["--runs", "8", "--warmup", "2", "--threads", "1",
                                                   "--batch", "1", "2", "--out", str(out)]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from deim_edge.bench.__main__ import main\n"
            f"rc = main({argv!r})\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None], 'bench imported torch'\n"
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((out / "bench.json").read_text()), out


def test_one_command_writes_json_markdown_csv_and_png(artifacts, cli_report):
    report, out = cli_report
    rows = report["rows"]
    assert [r["name"] for r in rows] == [p.name for p in artifacts.values() for _ in (1, 2)]
    assert report["settings"]["rounds"] == 8 and report["settings"]["threads"] == [1]
    ok = [r for r in rows if r["status"] == "ok"]
    runtimes = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "tflite"}
    expected = [("onnxruntime", 1), ("onnxruntime", 2)] + [(runtimes[t], 1) for t in artifacts if t != "onnx"]
    assert [(r["runtime"], r["batch"]) for r in ok] == expected
    for r in rows:
        if r["batch"] == 2 and r["runtime"] != "onnxruntime":  # static-batch artifacts: a reason, no numbers
            assert r["status"] == "skipped" and "batch 1 only" in r["error"] and not r["latency_ms"]
    for r in ok:
        assert r["kind"] == "deim-edge" and r["threads"] == 1 and r["runs"] == 8
        names = list(COCO_CLASSES) if r["runtime"] == "tflite" else list(CLASSES)
        assert r["metadata"]["input_size"] == [SIZE, SIZE] and r["metadata"]["class_names"] == names
        assert r["load_s"] > 0 and r["first_call_ms"] > 0 and r["size_mb"] > 0.5 and r["peak_rss_mb"] > 0
        for stage in ("preprocess", "inference", "decode", "end_to_end"):
            s = r["latency_ms"][stage]
            assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
            assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
            assert len(r["samples_ms"][stage]) == 8
        # end to end is the sum of the three stages, call by call
        parts = np.sum([r["samples_ms"][s] for s in ("preprocess", "inference", "decode")], axis=0)
        np.testing.assert_allclose(r["samples_ms"]["end_to_end"], parts, atol=1e-3)
        assert r["fps"] == pytest.approx(1000 * r["batch"] / r["latency_ms"]["end_to_end"]["mean"], rel=1e-3)
        assert r["ratio"] > 0 and r["ratio_basis"] == "end_to_end" and r["ratio_to"] == "atto.onnx"
    assert ok[0]["ratio"] == 1.0
    device = report["device"]
    assert device["cpu"]["logical_cores"] >= 1 and "onnxruntime" in device["versions"]
    assert report["device_label"] and report["clocks"]["throttled"] in (True, False)

    markdown = (out / "bench.md").read_text()
    assert "| artifact |" in markdown and all(p.name in markdown for p in artifacts.values())
    assert f"{ok[0]['latency_ms']['end_to_end']['p50']:.2f}" in markdown

    table = list(csv.DictReader(io.StringIO((out / "bench.csv").read_text())))
    assert len(table) == len(rows)
    for line, r in zip(table, rows):
        assert line["name"] == r["name"] and line["status"] == r["status"]
        if r["status"] == "ok":
            assert float(line["end_to_end_p50_ms"]) == r["latency_ms"]["end_to_end"]["p50"]
            assert float(line["ratio"]) == r["ratio"]

    assert_png(out / "bench.png")


def test_tflite_artifact_is_timed(artifacts, cli_report):
    if "tflite" not in artifacts:
        pytest.skip(f"no TFLite artifact here: {_why_not('tflite')}")
    row = next(r for r in cli_report[0]["rows"] if r["name"] == "atto.tflite" and r["batch"] == 1)
    assert row["status"] == "ok" and row["runtime"] == "tflite" and row["latency_ms"]["inference"]["p50"] > 0


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 300
    assert (image < 128).mean() > 0.005 and image.std() > 10  # bars, text and axes, not a blank canvas


def test_failed_artifacts_stay_in_their_rows(artifacts, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    missing = tmp_path / "missing.xml"
    report = benchmark([corrupt, artifacts["onnx"], missing], runs=3, warmup=1, threads=[1])
    bad, good, gone = report["rows"]
    assert bad["status"] == "failed" and "not a loadable ONNX model" in bad["error"] and not bad["latency_ms"]
    assert gone["status"] == "failed" and "not found" in gone["error"]
    assert good["status"] == "ok" and good["runs"] == 3 and good["ratio"] == 1.0  # the first measured row
    table = format_table(report)
    assert "corrupt.onnx" in table and "failed to load" in table and "missing.xml" in table


def test_unknown_file_type_is_a_clear_error(tmp_path):
    notes = tmp_path / "model.txt"
    notes.write_text("hello")
    with pytest.raises(ModelFileError, match=r"cannot tell which runtime runs .*model.txt.* \(file type .txt\)"):
        benchmark([notes], runs=1)
    result = subprocess.run([sys.executable, "-m", "deim_edge", "bench", str(notes)], capture_output=True, text=True)
    assert result.returncode == 2 and "error: cannot tell which runtime" in result.stderr
    assert "Traceback" not in result.stderr


def test_foreign_onnx_is_timed_for_inference_only(artifacts, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], pads=[1, 1, 1, 1])], "yolo-like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "yolo.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    report = benchmark([artifacts["onnx"], path], runs=4, warmup=1, threads=[1], imgsz=64, batches=[1, 2])
    foreign = [r for r in report["rows"] if r["name"] == "yolo.onnx"]
    assert [r["status"] for r in foreign] == ["ok", "ok"]
    for r in foreign:
        assert r["kind"] == "foreign" and list(r["latency_ms"]) == ["inference"]
        assert r["ratio_basis"] == "inference" and r["metadata"]["inputs"]["images"]["shape"] == ["batch", 3, "h", "w"]
        assert r["fps"] > 0
    assert "*" in format_table(report)


def test_accuracy_column(artifacts, tmp_path):
    pytest.importorskip("faster_coco_eval", reason="the AP column needs faster-coco-eval or pycocotools")
    from deim_edge.training.data.synthetic import make_synthetic_coco

    make_synthetic_coco(tmp_path / "coco", num_images=6, split_val=0.5, image_size=(240, 320))
    val = ValSet.find(tmp_path / "coco")
    names = [artifacts["onnx"]] + ([artifacts["openvino"]] if "openvino" in artifacts else [])
    report = benchmark(names, runs=2, warmup=0, threads=[1], val=val)
    aps = [r["ap"] for r in report["rows"]]
    for ap in aps:
        assert ap["images"] == 3 and 0.0 <= ap["AP"] <= ap["AP50"] <= 1.0
    if len(aps) == 2:  # the same model through two runtimes scores the same
        assert aps[0]["AP"] == pytest.approx(aps[1]["AP"], abs=0.01)
    assert "AP" in format_table(report)
    with pytest.raises(ConfigError, match="instances_val.json"):
        ValSet.find(tmp_path)


def test_thread_counts_are_rows(artifacts):
    report = benchmark([artifacts["onnx"]], runs=3, warmup=1, threads=[1, 2])
    assert [(r["threads"], r["status"]) for r in report["rows"]] == [(1, "ok"), (2, "ok")]


def test_compare_merges_reports_of_devices(cli_report, tmp_path):
    report, out = cli_report
    other = dict(report, device_label="Jetson Orin Nano (test copy)")
    (tmp_path / "orin.json").write_text(json.dumps(other))
    result = subprocess.run([sys.executable, "-m", "deim_edge.bench", "compare", str(out / "bench.json"),
                             str(tmp_path / "orin.json"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Jetson Orin Nano (test copy)" in result.stdout and report["device_label"] in result.stdout
    merged = load_report(tmp_path / "compare.json")
    assert len(merged["rows"]) == 2 * len(report["rows"]) and set(merged["devices"]) == {
        report["device_label"], "Jetson Orin Nano (test copy)"}
    assert_png(tmp_path / "compare.png")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a deim-edge benchmark report"):
        load_report(tmp_path / "notes.json")


def test_missing_matplotlib_names_the_extra(cli_report, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("matplotlib")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"deim-edge\[bench\]"):
        write_report(cli_report[0], tmp_path)
    assert (tmp_path / "bench.json").is_file() and not (tmp_path / "bench.png").exists()
    assert set(merge_reports([cli_report[0]], ["a"])["devices"]) == {cli_report[0]["device_label"]}


def test_clock_monitor_flags_throttling(tmp_path):
    cpu = tmp_path / "devices/system/cpu/cpu0"
    (cpu / "cpufreq").mkdir(parents=True)
    (cpu / "thermal_throttle").mkdir()
    gpu = tmp_path / "class/devfreq/17000000.ga10b"
    gpu.mkdir(parents=True)
    zone = tmp_path / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)

    def state(mhz: int, cap: int, events: int, gpu_hz: int, temp: int) -> None:
        (cpu / "cpufreq/scaling_cur_freq").write_text(f"{mhz * 1000}\n")
        (cpu / "cpufreq/scaling_max_freq").write_text(f"{cap * 1000}\n")
        (cpu / "thermal_throttle/core_throttle_count").write_text(f"{events}\n")
        (gpu / "cur_freq").write_text(str(gpu_hz))
        (gpu / "max_freq").write_text("1020000000")
        (zone / "temp").write_text(str(temp * 1000))

    monitor = ClockMonitor(root=tmp_path, gpu=False)
    state(2400, 2400, 5, 918_000_000, 50)
    monitor.sample(force=True)
    state(2300, 2400, 5, 612_000_000, 60)
    monitor.sample(force=True)
    quiet = monitor.summary()
    assert not quiet["throttled"] and quiet["cpu_mhz"] == {"min": 2300, "median": 2350, "max": 2400}
    assert quiet["gpu_mhz"]["min"] == 612 and quiet["temp_c"]["max"] == 60
    state(1200, 1500, 9, 306_000_000, 95)
    monitor.sample(force=True)
    hot = monitor.summary()
    assert hot["throttled"] and "CPU thermal throttling (4 throttle events)" in hot["reasons"]
    assert any("CPU frequency cap lowered from 2400 to 1500" in r for r in hot["reasons"])


def _row(name: str, runtime: str, precision: str, p50: float, drop: float | None = None, threads: int = 1) -> dict:
    extra = {} if drop is None else {"accuracy": {"drop": drop, "metric": "AP"}}
    samples = [p50 * f for f in (0.9, 1.0, 1.1)]
    return {"name": name, "artifact": f"/nowhere/{name}", "runtime": runtime, "status": "ok", "threads": threads,
            "batch": 1, "metadata": {"precision": precision, "extra": extra},
            "latency_ms": {"end_to_end": {"p50": p50}}, "samples_ms": {"end_to_end": samples}}


def test_pick_names_the_fastest_within_the_drop_and_its_speedup_over_fp32_onnx() -> None:
    from deim_edge.bench.pick import format_picks, pick

    report = {"rows": [_row("official.onnx", "onnxruntime", "fp32", 12.0),
                       _row("a-int8.onnx", "onnxruntime", "int8", 8.0, drop=0.3),
                       _row("a-int8.xml", "openvino", "int8", 5.0, drop=0.8),  # faster, but loses too much
                       _row("a-fp16.xml", "openvino", "fp16", 4.0),  # fastest, accuracy never measured
                       _row("a.xml", "openvino", "fp32", 10.0)]}
    (chosen,) = pick(report, 0.5)
    assert (chosen["pick"], chosen["baseline"], chosen["speedup"]) == ("a-int8.onnx", "official.onnx", 1.5)
    assert any("a-int8.xml: drop 0.80 > 0.5" in r for r in chosen["left_out"])
    assert any("a-fp16.xml: no recorded accuracy" in r for r in chosen["left_out"])
    assert pick(report, 1.0)[0]["pick"] == "a-int8.xml"
    assert pick(report, 0.5, baseline="a.xml")[0]["speedup"] == 1.25
    text = format_picks(pick(report, 0.5), 0.5)
    assert "a-int8.onnx on onnxruntime" in text and "1.50x faster than official.onnx" in text
    (nothing,) = pick({"rows": [_row("a-int8.xml", "openvino", "int8", 5.0, drop=0.8)]}, 0.5)
    assert nothing["pick"] is None
    failed = {"rows": [{**_row("official.onnx", "onnxruntime", "fp32", 12.0), "status": "failed"},
                       _row("a-int8.onnx", "onnxruntime", "int8", 8.0, drop=0.3)]}
    (alone,) = pick(failed, 0.5, baseline="official.onnx")  # a baseline that did not run: no speed-up
    assert (alone["pick"], alone["baseline"], alone["speedup"]) == ("a-int8.onnx", None, None)
    with pytest.raises(ConfigError, match="not one of the benchmarked artifacts"):
        pick(report, 0.5, baseline="other.onnx")


def test_pick_reads_the_accuracy_report_beside_the_artifact(tmp_path) -> None:
    from deim_edge.bench.pick import recorded_accuracy

    row = _row("m-int8.onnx", "onnxruntime", "int8", 8.0)
    row["artifact"] = str(tmp_path / "m-int8.onnx")
    assert recorded_accuracy(row) is None
    (tmp_path / "m-int8.onnx.accuracy.json").write_text(json.dumps({"accuracy": {"drop": 0.25, "metric": "AP"}}))
    assert recorded_accuracy(row)["drop"] == 0.25


@pytest.mark.parametrize("args, message", [(["--max-drop", "nan"], "--max-drop must be a number"),
                                           (["--max-drop", "-1"], "--max-drop must be a number"),
                                           (["--baseline", "other.onnx"], "not one of the artifacts")])
def test_pick_settings_are_checked_before_any_timing(artifacts, capsys, args, message) -> None:
    from deim_edge.bench.__main__ import main

    assert main([str(artifacts["onnx"]), "--pick", *args]) == 2
    assert message in capsys.readouterr().err


def test_pick_on_the_command_line(artifacts, tmp_path) -> None:
    from deim_edge.bench.__main__ import main

    paths = [str(artifacts["onnx"])] + ([str(artifacts["openvino"])] if "openvino" in artifacts else [])
    assert main(paths + ["--pick", "--runs", "5", "--warmup", "1", "--threads", "1", "--no-plot", "--quiet",
                         "--out", str(tmp_path)]) == 0
    (chosen,) = json.loads((tmp_path / "bench.json").read_text())["picks"]
    assert chosen["pick"] in {Path(p).name for p in paths} and chosen["baseline"] == artifacts["onnx"].name
    assert chosen["speedup"] > 0 and chosen["accuracy"]["drop"] == 0.0  # FP32: checked against PyTorch at export


def test_precision_column_says_where_the_float_ops_ran_otherwise() -> None:
    from deim_edge.bench.report import precision_label

    assert precision_label({"metadata": {"precision": "fp16"}, "float_precision": "bf16"}) == "fp16 (bf16)"
    assert precision_label({"metadata": {"precision": "int8"}, "float_precision": "bf16"}) == "int8 (bf16)"
    assert precision_label({"metadata": {"precision": "int8"}, "float_precision": "f32"}) == "int8"
    assert precision_label({"metadata": {"precision": "fp32"}, "float_precision": None}) == "fp32"
