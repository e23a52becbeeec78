"""Whole studies as a user runs them: the `--smoke` ablation's and a small search's wall time with an
older checkout ("before") and this one ("after"), and how close `--dry-run`'s estimate comes to the
measured wall time of both.

    python bench/study_wall.py --before-code DIR          # DIR: `git archive <commit> | tar -x -C DIR`
    python bench/study_wall.py --repeats 2 --search-trials 6

Each study is the study script run in a child process (`python studies/ablation.py --smoke ...`), timed
from its start to its exit (interpreter start, imports, the local Ray instance and its shutdown
included), with results in a temporary directory. Order: dry runs, then before, after (ablation),
before, after (search); with --repeats 2 the second round runs in reverse (cancels slow drift). The estimate is the
`estimate: wall ...` line of the same command with `--dry-run`, made just before the runs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine, machine_cpu_seconds, median, table, write_json

import torch

ROOT = Path(__file__).resolve().parent.parent


def study_script(code: Path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    """`python studies/<script>.py ARGS` in a child process importing dpnp_ray from `code`; raises if it fails."""
    command = [sys.executable, f"studies/{script}.py", *args]
    proc = subprocess.run(command, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} (in {code}) exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc


def run_study(code: Path, script: str, args: list[str], storage: str, name: str) -> dict:
    """One study with the code in `code`: its wall time and the machine's CPU time over it."""
    started, cpu_started = time.time(), machine_cpu_seconds()
    proc = study_script(code, script, [*args, "--storage", storage, "--name", name])
    wall, cpu = time.time() - started, machine_cpu_seconds() - cpu_started
    return {"wall_s": wall, "machine_cpu_s": cpu, "load_average_1m": os.getloadavg()[0],
            "stdout_tail": proc.stdout[-1500:]}


def estimate(script: str, args: list[str], storage: str) -> dict:
    """The --dry-run estimate of this checkout for the same command: wall seconds, the CPU the plan
    reserves (its CPU-hours), the plan's text."""
    proc = study_script(ROOT, script, [*args, "--storage", storage, "--dry-run"])
    found = re.search(r"estimate: wall ([\d.]+) (s|min|h)\b", proc.stdout)
    if not found:
        raise RuntimeError(f"no 'estimate: wall' line in the dry run's output:\n{proc.stdout}")
    seconds = float(found.group(1)) * {"s": 1, "min": 60, "h": 3600}[found.group(2)]
    cpu_hours = re.search(r"([\d.e+-]+) CPU-hours", proc.stdout)
    return {"estimate_s": seconds, "reserved_cpu_s": float(cpu_hours.group(1)) * 3600 if cpu_hours else None,
            "plan": proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before-code", type=Path, default=None,
                        help="a checkout of the code before the change (its smoke ablation is the 'before' run)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--search-trials", type=int, default=4, help="trials of the small search (--smoke, 2 epochs)")
    parser.add_argument("--local-cpus", type=int, default=None, help="--local-cpus of the studies (default: all cores)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    cpus = ["--local-cpus", str(args.local_cpus)] if args.local_cpus else []
    ablation_args = ["--smoke", *cpus]
    search_args = ["--smoke", "--trials", str(args.search_trials), *cpus]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as storage:
        planned = {"ablation": estimate("ablation", ablation_args, storage),
                   "search": estimate("search", search_args, storage)}
        order = [("before", "ablation"), ("after", "ablation"), ("before", "search"), ("after", "search")]
        if args.before_code is None:
            order = [o for o in order if o[0] == "after"]
        for r in range(args.repeats):
            for side, script in (order if r % 2 == 0 else order[::-1]):
                code = args.before_code.resolve() if side == "before" else ROOT
                row = run_study(code, script, ablation_args if script == "ablation" else search_args, storage,
                                f"{script}-{side}-{r}")
                row.update(side=side, study=script, repeat=r)
                runs.append(row)
                print(f"  {script:8s} {side:6s} repeat {r}: {row['wall_s']:.1f} s, "
                      f"machine CPU {row['machine_cpu_s']:.0f} s  load {row['load_average_1m']:.1f}", flush=True)

    rows = []
    for side, script in order:
        mine = [r for r in runs if r["side"] == side and r["study"] == script]
        row = {"study": f"--smoke {script}" + (f" ({args.search_trials} trials)" if script == "search" else ""),
               "side": side, "wall": median([r["wall_s"] for r in mine]),
               "cpu": median([r["machine_cpu_s"] for r in mine]), "runs": len(mine)}
        if side == "after":
            row["estimate"] = planned[script]["estimate_s"]
            row["ratio"] = row["estimate"] / row["wall"]
            row["reserved_cpu"] = planned[script]["reserved_cpu_s"]
        rows.append(row)
    where = machine(torch.device("cpu"))
    loads = [r["load_average_1m"] for r in runs]
    print(f"\nstudy wall times on {where['cpu_model']} ({where['cpus_usable']} usable CPUs, load {min(loads):.1f}-"
          f"{max(loads):.1f}), median of {args.repeats} run(s)")
    print(table(rows, [("study", "study", ""), ("side", "code", ""), ("wall", "measured wall s", ".1f"),
                       ("estimate", "--dry-run estimate s", ".1f"), ("ratio", "estimate / measured", ".2f"),
                       ("cpu", "machine CPU s", ".0f"), ("reserved_cpu", "CPU s the plan reserves", ".0f")]))
    for script in ("ablation", "search"):
        walls = {r["side"]: r["wall"] for r in rows if r["study"].startswith(f"--smoke {script}")}
        if "before" in walls:
            print(f"smoke {script}: before {walls['before']:.1f} s, after {walls['after']:.1f} s "
                  f"(after / before {walls['after'] / walls['before']:.2f})")
    out = write_json("study_wall", {"args": {k: str(v) for k, v in vars(args).items()}, "machine": where,
                                    "runs": runs, "summary": rows,
                                    "plans": {k: v["plan"] for k, v in planned.items()}}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
