"""What every benchmark here needs: the machine it ran on, step timing, peak memory, JSON output.

Timing is wall-clock around one call, with the device synchronised before and after (on CUDA,
kernels are asynchronous), and the process's CPU time (time.process_time) for CPU runs.
Peak memory per call: on CUDA torch.cuda.max_memory_allocated after reset_peak_memory_stats; on
the CPU the process's peak resident set (VmHWM), reset before the call by writing 5 to
/proc/self/clear_refs (Linux), minus the resident set before it. Where the reset is not allowed,
the ru_maxrss delta is used instead, which only sees growth past the earlier peak.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere imports this checkout's dpnp_ray
    sys.path.insert(0, str(ROOT))
RUNS = Path(__file__).resolve().parent / "runs"


def machine(device: torch.device) -> dict[str, Any]:
    """Where the numbers came from. CPU count is what this process may use (affinity), not the host's."""
    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu_model": _cpu_model(), "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "load_average_1m": os.getloadavg()[0],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"model name\s*:\s*(.+)", text)
    return match.group(1).strip() if match else platform.processor()


def machine_cpu_seconds() -> float:
    """CPU-seconds every process of the machine has spent busy since boot (/proc/stat: user, nice,
    system, irq, softirq, steal); the difference over a run is the run's whole CPU bill, Ray's
    processes included (and anything else running then)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, peak extra memory in MiB) of one call of fn.

    On a shared CPU the process's CPU time is the steadier measure of the work done: time other
    processes take from this one is not counted (their cache and frequency effects still are).
    """
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        resettable = _reset_peak_rss()
        before = _status_kib("VmRSS") * 1024 if resettable else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started, cpu_started = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status_kib("VmHWM") * 1024 if resettable else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return seconds, cpu_seconds, max(0, peak - before) / 2**20


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> float:
    """Half the range between the 25th and 75th percentiles, relative to the median."""
    if len(values) < 4:
        return (max(values) - min(values)) / 2 / median(values) if values else float("nan")
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / 2 / median(values)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else format(row[key], spec)) for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], path: str | None = None) -> Path:
    out = Path(path) if path else RUNS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload},
                              indent=2, default=str))
    return out


def setup(threads: int, device_name: str, precision_name: str):
    """The process set-up every CPU/GPU benchmark shares: threads, device, kernel settings, precision."""
    from dpnp_ray.devices import Precision, configure_backend, resolve_device

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    configure_backend(device)
    return device, Precision.choose(precision_name, device)
