"""GPU utilisation and memory in use, sampled in a background thread: pynvml when importable,
else ``nvidia-smi`` on PATH, else nothing (the report then says "n/a").

Utilisation is NVML's "percent of the last sample period in which a kernel ran" (its period is
1/6 s to 1 s depending on the GPU), so a window shorter than that reads coarsely.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

INTERVAL_S = 0.2


def _physical_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


class UtilSampler:
    """``start()``, ``stop()``, then ``window(t0, t1)``: utilisation mean / max and memory-in-use max."""

    def __init__(self, enabled: bool = True):
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), util %, memory used MiB)
        self.source = "n/a"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        if enabled:
            self._pick_source()

    def _pick_source(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index())
            self.source = "pynvml"
            return
        except Exception:  # noqa: BLE001 - not installed, no driver, no device: try nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"

    def start(self) -> "UtilSampler":
        target = {"pynvml": self._poll_nvml, "nvidia-smi": self._read_smi}.get(self.source)
        if target is not None:
            self._thread = threading.Thread(target=target, name="gpu-util-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll_nvml(self) -> None:
        import pynvml

        while not self._stop.is_set():
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
                self.samples.append((time.time(), float(util), float(used)))
            except Exception:  # noqa: BLE001 - a failed read is a missing sample
                pass
            self._stop.wait(INTERVAL_S)

    def _read_smi(self) -> None:
        command = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                   f"--id={_physical_index()}", f"--loop-ms={int(INTERVAL_S * 1000)}"]
        try:
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        for line in self._process.stdout:
            if self._stop.is_set():
                break
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.time(), float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue

    def window(self, t0: float, t1: float) -> dict | None:
        """Samples inside [t0, t1] (widened by one interval when none falls inside)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if not inside:
            inside = [s for s in self.samples if t0 - INTERVAL_S <= s[0] <= t1 + INTERVAL_S]
        if not inside:
            return None
        utils = [s[1] for s in inside]
        return {"gpu_util_mean": sum(utils) / len(utils), "gpu_util_max": max(utils),
                "gpu_mem_max_mib": max(s[2] for s in inside), "samples": len(inside)}
