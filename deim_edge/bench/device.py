"""Facts about the machine a benchmark ran on: CPU, GPU, Jetson board, runtime versions. Each fact is
read where the platform offers it (files under /proc and /sys, NVML, nvidia-smi, nvpmodel) and left
out where it does not; nothing here raises."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

# distribution names whose versions a report records when they are installed (runtimes first)
PACKAGES = ("deim-edge", "numpy", "opencv-python", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu",
            "openvino", "ai-edge-litert", "tflite-runtime", "tensorflow", "coremltools", "tensorrt", "cuda-python")
# what decides low-precision speed: int8 dot products (VNNI, AVX-VNNI, AMX-INT8, NEON dotprod, i8mm) and
# half-precision arithmetic (AVX512-BF16, AVX512-FP16, AMX-BF16/FP16, NEON fp16 "asimdhp", SVE, bf16)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
             "amx_bf16", "amx_fp16", "asimd", "asimdhp", "asimddp", "sve", "i8mm", "bf16")
COMMAND_TIMEOUT_S = 5.0


def device_facts() -> dict[str, Any]:
    """Everything known about this machine: {"os", "python", "cpu", "memory_gb", "gpu", "jetson", "versions"};
    gpu and jetson are None where there is none."""
    return {
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "cpu": cpu_facts(),
        "memory_gb": _memory_gb(),
        "gpu": gpu_facts(),
        "jetson": jetson_facts(),
        "versions": package_versions(),
    }


def device_label(facts: dict[str, Any]) -> str:
    """A short name for the machine in tables and plots: the Jetson model, else the GPU, else the CPU."""
    jetson, gpu, cpu = facts.get("jetson"), facts.get("gpu"), facts.get("cpu") or {}
    if jetson and jetson.get("model"):
        mode = f", {jetson['power_mode']}" if jetson.get("power_mode") else ""
        return f"{jetson['model']}{mode}"
    if gpu and gpu.get("name"):
        return str(gpu["name"])
    cores = cpu.get("usable_cores") or cpu.get("logical_cores")
    return f"{cpu.get('model') or platform.machine()} ({cores} cores)"


def cpu_facts() -> dict[str, Any]:
    """Model name, logical/physical/usable core counts, the vector extensions that matter for inference,
    and the load average when the benchmark started."""
    info = _read("/proc/cpuinfo") or ""
    model = _first(info, r"^model name\s*:\s*(.+)$") or _first(info, r"^Model\s*:\s*(.+)$") or _command(
        ["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.processor() or None
    flags = set((_first(info, r"^(?:flags|Features)\s*:\s*(.+)$") or "").split())
    blocks = [block for block in info.split("\n\n") if "core id" in block]
    cores = {(_first(b, r"^physical id\s*:\s*(\d+)"), _first(b, r"^core id\s*:\s*(\d+)")) for b in blocks}
    facts: dict[str, Any] = {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": len(cores) or None,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "max_mhz": _max_cpu_mhz(),
    }
    if hasattr(os, "getloadavg"):
        facts["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return facts


def gpu_facts() -> dict[str, Any] | None:
    """The first NVIDIA GPU: name, driver, CUDA driver version, memory (NVML, else nvidia-smi); None without one."""
    nvml = _nvml()
    if nvml is not None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            name = nvml.nvmlDeviceGetName(handle)
            cuda = nvml.nvmlSystemGetCudaDriverVersion()
            return {"name": name.decode() if isinstance(name, bytes) else name,
                    "driver": _text(nvml.nvmlSystemGetDriverVersion()),
                    "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
                    "memory_gb": round(nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1),
                    "count": nvml.nvmlDeviceGetCount()}
        except Exception:  # noqa: BLE001 -- NVML raises its own errors on machines without a usable GPU
            pass
    line = _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"])
    if line:
        rows = [r.split(", ") for r in line.splitlines()]
        name, driver, memory = (rows[0] + ["", "", ""])[:3]
        return {"name": name, "driver": driver, "memory_gb": _float(memory, 1 / 1024), "count": len(rows)}
    return None


def jetson_facts() -> dict[str, Any] | None:
    """Jetson board: model, L4T release, JetPack version, power mode; None elsewhere."""
    release = _read("/etc/nv_tegra_release")
    model = (_read("/proc/device-tree/model") or "").strip("\x00 \n") or None
    if release is None and not (model and ("jetson" in model.lower() or "nvidia" in model.lower())):
        return None
    l4t = None
    if release:
        major, revision = _first(release, r"R(\d+)"), _first(release, r"REVISION:\s*([\d.]+)")
        l4t = f"{major}.{revision}" if major and revision else release.splitlines()[0].strip("# ")
    jetpack = _command(["dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack"])
    mode = _command(["nvpmodel", "-q"])
    return {"model": model, "l4t": l4t, "jetpack": jetpack or None,
            "power_mode": _first(mode or "", r"NV Power Mode:\s*(.+)$")}


def package_versions() -> dict[str, str]:
    """{distribution: version} of the runtime packages installed here (read without importing them)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _nvml():
    """pynvml (nvidia-ml-py), initialised, or None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- no driver
        return None
    return pynvml


def _max_cpu_mhz() -> float | None:
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    return round(int(khz) / 1000) if khz and khz.strip().isdigit() else None


def _memory_gb() -> float | None:
    kb = _first(_read("/proc/meminfo") or "", r"^MemTotal:\s*(\d+)")
    if kb:
        return round(int(kb) / 2**20, 1)
    size = _command(["sysctl", "-n", "hw.memsize"])
    return round(int(size) / 2**30, 1) if size and size.isdigit() else None


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _command(argv: list[str]) -> str | None:
    """A command's stripped stdout, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _first(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _float(text: str, scale: float = 1.0) -> float | None:
    try:
        return round(float(text) * scale, 1)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
