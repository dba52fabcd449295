"""Clocks, temperature, power and throttling while a benchmark runs, sampled between rounds.

Each source is read where the platform offers it: CPU frequency and thermal-throttle counters and
thermal cooling devices (Linux sysfs), an NVIDIA GPU's clocks, power and throttle reasons (NVML, else
nvidia-smi), a Jetson's GPU frequency (devfreq) and power rails (INA3221). A run is flagged as
throttled when a counter, a throttle reason, a cooling device or a lowered frequency cap says so.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

# NVML clock-event (throttle) reasons that mean the device slowed itself down
NVML_THROTTLE = {0x4: "GPU power cap", 0x8: "GPU hardware slowdown", 0x20: "GPU software thermal slowdown",
                 0x40: "GPU hardware thermal slowdown", 0x80: "GPU power brake"}
JETSON_GPUS = ("gpu", "gv11b", "ga10b", "gp10b", "gm20b")  # devfreq device names of Jetson GPUs
CAP_DROP = 0.95  # a frequency cap below this fraction of its first value: throttled
SMI_QUERY = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


class ClockMonitor:
    """`sample()` between rounds (it reads at most once per `interval` seconds); `summary()` at the end.

    root: the sysfs root (a fake tree in tests); gpu: also read NVML / nvidia-smi.
    """

    def __init__(self, interval: float = 1.0, root: str | Path = "/sys", gpu: bool = True) -> None:
        self.interval, self.root = interval, Path(root)
        self.samples: list[dict[str, Any]] = []
        self._last = -float("inf")
        self._nvml = _nvml_handle() if gpu else None
        self._smi = gpu and self._nvml is None and shutil.which("nvidia-smi") is not None

    def sample(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        reading: dict[str, Any] = {"t": now, **self._cpu(), **self._thermal(), **self._jetson()}
        if self._nvml is not None:
            reading.update(_nvml_reading(*self._nvml))
        elif self._smi:
            reading.update(_smi_reading())
        self.samples.append({k: v for k, v in reading.items() if v is not None})

    def summary(self) -> dict[str, Any]:
        """{"samples", "<quantity>": {"min", "median", "max"} per quantity read, "throttled", "reasons"}."""
        out: dict[str, Any] = {"samples": len(self.samples)}
        for key in ("cpu_mhz", "gpu_mhz", "power_w", "temp_c"):
            values = [s[key] for s in self.samples if key in s]
            if values:
                out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
        reasons = self._reasons()
        out["throttled"] = bool(reasons)
        out["reasons"] = reasons
        return out

    def _reasons(self) -> list[str]:
        reasons: list[str] = []
        counts = [s["cpu_throttle_events"] for s in self.samples if "cpu_throttle_events" in s]
        if counts and counts[-1] > counts[0]:
            reasons.append(f"CPU thermal throttling ({counts[-1] - counts[0]:.0f} throttle events)")
        for cap, what in (("cpu_cap_mhz", "CPU"), ("gpu_cap_mhz", "GPU")):
            caps = [s[cap] for s in self.samples if cap in s]
            if caps and min(caps) < CAP_DROP * caps[0]:
                reasons.append(f"{what} frequency cap lowered from {caps[0]:.0f} to {min(caps):.0f} MHz")
        seen = set()
        for s in self.samples:
            for reason in s.get("gpu_throttle", []) + s.get("cooling", []):
                if reason not in seen:
                    seen.add(reason)
                    reasons.append(reason)
        return reasons

    def _cpu(self) -> dict[str, Any]:
        cpus = sorted((self.root / "devices/system/cpu").glob("cpu[0-9]*"))
        cur = [_number(c / "cpufreq/scaling_cur_freq") for c in cpus]
        caps = [_number(c / "cpufreq/scaling_max_freq") for c in cpus]
        events = [_number(c / "thermal_throttle" / f) for c in cpus
                  for f in ("core_throttle_count", "package_throttle_count")]
        cur, caps, events = ([v for v in vs if v is not None] for vs in (cur, caps, events))
        return {"cpu_mhz": statistics.median(cur) / 1000 if cur else None,
                "cpu_cap_mhz": min(caps) / 1000 if caps else None,
                "cpu_throttle_events": sum(events) if events else None}

    def _thermal(self) -> dict[str, Any]:
        temps = [_number(z / "temp") for z in (self.root / "class/thermal").glob("thermal_zone*")]
        temps = [t / 1000 for t in temps if t is not None and t > 0]
        cooling = []
        for device in sorted((self.root / "class/thermal").glob("cooling_device*")):
            kind = _text(device / "type") or device.name
            state = _number(device / "cur_state")
            if state and "fan" not in kind.lower() and "tcc" not in kind.lower():
                cooling.append(f"cooling device {kind} active (state {state:.0f})")
        return {"temp_c": max(temps) if temps else None, "cooling": cooling or None}

    def _jetson(self) -> dict[str, Any]:
        reading: dict[str, Any] = {}
        for device in (self.root / "class/devfreq").glob("*"):
            if any(name in device.name.lower() for name in JETSON_GPUS):
                cur, cap = _number(device / "cur_freq"), _number(device / "max_freq")
                reading["gpu_mhz"] = cur / 1e6 if cur is not None else None
                reading["gpu_cap_mhz"] = cap / 1e6 if cap is not None else None
                break
        reading["power_w"] = _ina3221_watts(self.root)
        return reading


def _ina3221_watts(root: Path) -> float | None:
    """Board power from a Jetson's INA3221 monitors: the input rail (VDD_IN) when labelled, else the sum."""
    rails: dict[str, float] = {}
    for hwmon in (root / "class/hwmon").glob("hwmon*"):  # JetPack 5 and 6
        if (_text(hwmon / "name") or "") != "ina3221":
            continue
        for volt in hwmon.glob("in[0-9]*_input"):
            n = volt.name[2:-6]
            mv, ma = _number(volt), _number(hwmon / f"curr{n}_input")
            if mv is not None and ma is not None:
                rails[_text(hwmon / f"in{n}_label") or f"{hwmon.name}.{n}"] = mv * ma / 1e6
    for power in (root / "bus/i2c/drivers").glob("ina3221*/*/iio:device*/in_power[0-9]*_input"):  # JetPack 4
        mw = _number(power)
        if mw is not None:
            n = power.name[len("in_power"):-len("_input")]
            rails[_text(power.parent / f"rail_name_{n}") or str(power)] = mw / 1000
    if not rails:
        return None
    inputs = [w for name, w in rails.items() if "IN" in name.upper() and "VDD" in name.upper()]
    return round(inputs[0] if inputs else sum(rails.values()), 2)


def _nvml_handle():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 -- no driver or no device
        return None


def _nvml_reading(nvml, handle) -> dict[str, Any]:
    reading: dict[str, Any] = {}
    for key, read in (("gpu_mhz", lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
                      ("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000),
                      ("temp_c", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                      ("gpu_reasons", lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))):
        try:
            reading[key] = read()
        except Exception:  # noqa: BLE001 -- a query this GPU or driver does not support
            continue
    reading["gpu_throttle"] = _throttle_names(reading.pop("gpu_reasons", 0))
    return reading


def _smi_reading() -> dict[str, Any]:
    try:
        result = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = (result.stdout.splitlines() or [""])[0].split(", ")
    if result.returncode != 0 or len(fields) != 5:
        return {}
    sm, _, power, temp, reasons = fields
    return {"gpu_mhz": _parse(sm), "power_w": _parse(power), "temp_c": _parse(temp),
            "gpu_throttle": _throttle_names(int(reasons, 16) if reasons.startswith("0x") else 0)}


def _throttle_names(bits: int) -> list[str]:
    return [name for bit, name in NVML_THROTTLE.items() if bits & bit]


def _number(path: Path) -> float | None:
    text = _text(path)
    return _parse(text) if text is not None else None


def _parse(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
