"""What Ray costs a trial, per runner: trials through Ray Tune as a study runs them, with the loop in a
1-worker TorchTrainer (`--runner train`) and in the Tune trial itself (`--runner tune`), against the
bare loop; and the fixed cost of a trial (start-up + tear-down) of each runner, side by side in one run.

    python bench/ray_overhead.py                               # small_cnn on digits: the fixed cost, ~4 min on 2 cores
    python bench/ray_overhead.py --model resnet18 --trials 2   # epochs of 30-60 s on 1 core: the epoch ratio
    python bench/ray_overhead.py --repeats 2                   # bare, train, tune, tune, train, bare

Every side runs dpnp_ray.experiment.run_experiment (train() then the basic test suite on --eval-n
points) on the same config with one torch thread, each in a fresh process: the bare side in a plain
child process, the Ray sides inside dpnp_ray.ray_train.run_loop (reports and a checkpoint every
epoch, as in a study), stamped where the loop starts and ends. Each Ray side starts its own local
instance the way a study does (dpnp_ray.study.cluster.connect; not timed) and runs --trials trials one
after another through a Tuner whose trial function mirrors dpnp_ray.study.tuner.run_trial, with
build_tuner's resources and Tune settings:

  train    the trial's Tune actor is a driver (the driver resource) that runs a TorchTrainer
           (dpnp_ray.ray_train.make_trainer) and reads its final record
  tune     the trial's Tune actor holds the worker's CPUs and runs the loop itself (study.tuner.TuneIO)

epoch seconds   the loop's own epoch time (history "epoch_seconds"): the target is ray / bare <= 1.05
start-up        the trial's slot comes free (the Tuner starts, or the previous trial's function returned)
                -> the loop starts: Tune trial actor (reused after the first), then for `train` the
                driver's imports, Train controller, placement group, worker actor, process group
tear-down       the loop returns -> the trial function has the final record (for `train`: fit() returns)
fixed cost      start-up + tear-down, per trial (median over trials); the target is <= 5 s for `tune`,
                and at most a third of `train`'s
actors          for the `train` side: when each actor of a trial was requested, had a process running it,
                and finished its __init__ (Ray's state API), as seconds from the trial driver's start
cpu seconds     CPU time of the process that runs the trial loop, from its start to its end
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import machine, median, table, write_json

import torch


def _stamp(path: str, event: str) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), "cpu": time.process_time(), "pid": os.getpid()}) + "\n")


def stamped_loop(loop_config: dict) -> None:
    """The study's worker function, stamped on entry and exit."""
    from dpnp_ray.ray_train import train_loop_per_worker

    _stamp(loop_config["stamp"], "loop_entered")
    train_loop_per_worker(loop_config)
    _stamp(loop_config["stamp"], "loop_left")


def stamped_trial(params: dict, *, experiment: dict, scaling: dict, storage: str, stamps: str) -> None:
    """A Tune trial like dpnp_ray.study.tuner.run_trial: the loop in the trial's runner (a TorchTrainer for
    `train`, this Tune actor for `tune`: TuneIO), its final record read."""
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.ray_train import Scaling, make_trainer, read_final_record, run_loop, trial_loop_config
    from dpnp_ray.study.tuner import TuneIO

    stamp = str(Path(stamps) / f"trial_{params['trial']}.jsonl")
    _stamp(stamp, "driver_entered")
    cfg, scaling, run_name = ExperimentConfig.from_dict(experiment), Scaling(**scaling), \
        f"trial-{params['trial']}-{time.time_ns()}"
    if scaling.runner == "tune":
        io = TuneIO(storage, run_name)
        loop_config = trial_loop_config(cfg, scaling, run_name=run_name)
        loop_config["stamp"] = stamp
        _stamp(stamp, "loop_entered")
        run_loop(loop_config, io)
        _stamp(stamp, "loop_left")
        record = io.final
    else:
        trainer = make_trainer(cfg, scaling, run_name=run_name, storage_path=storage)
        trainer.train_loop_per_worker = stamped_loop  # the same TorchTrainer, its loop stamped
        trainer.train_loop_config["stamp"] = stamp
        record = read_final_record(trainer.fit())
    _stamp(stamp, "fit_returned")
    Path(stamp).with_suffix(".record.json").write_text(json.dumps(
        {k: record[k] for k in ("status", "error", "summary", "history")}, default=str))


def start_ray(cpus: int) -> None:
    from dpnp_ray.study.cluster import connect
    from dpnp_ray.study.settings import StudySettings

    connect(StudySettings("ray_overhead", local_cpus=cpus))


def events_of(stamps: Path, trial: int) -> dict:
    return {e["event"]: e for e in map(json.loads, (stamps / f"trial_{trial}.jsonl").read_text().splitlines())}


def actor_starts(driver_entered: list[float]) -> list[dict]:
    """Every actor Ray started during the trials (state API: its creation task's events): seconds from
    its trial's driver start to the request, to a process running it (process start + `import ray`),
    and to the end of its __init__ (imports of its class's modules, then __init__). Needs the dashboard."""
    from ray.util.state import list_tasks

    try:
        tasks = list_tasks(filters=[("type", "=", "ACTOR_CREATION_TASK")], detail=True, limit=10_000)
    except Exception as exc:  # no dashboard / state API: the rest of the bench stands without it
        print(f"actor timeline unavailable: {exc}", file=sys.stderr)
        return []
    rows = []
    for task in tasks:
        times = {e["state"]: e["created_ms"] / 1000 for e in (task.events or [])}
        asked = times.get("PENDING_ARGS_AVAIL", times.get("PENDING_NODE_ASSIGNMENT"))
        if asked is None or "RUNNING" not in times or "FINISHED" not in times:
            continue
        trial = max((i for i, t in enumerate(driver_entered) if t <= asked + 0.5), default=None)
        if trial is None:
            continue  # the Tune trial actors themselves, started before any trial's driver
        rows.append({"trial": trial, "actor": task.func_or_class_name.split(".")[0],
                     "asked_s": asked - driver_entered[trial], "running_s": times["RUNNING"] - driver_entered[trial],
                     "ready_s": times["FINISHED"] - driver_entered[trial]})
    return sorted(rows, key=lambda r: (r["trial"], r["asked_s"]))


def run_ray(runner: str, cfg, threads: int, trials: int, cpus: int) -> dict:
    import ray
    from ray import tune

    from dpnp_ray.ray_train import Scaling
    from dpnp_ray.study.cluster import alive_nodes, trial_request
    from dpnp_ray.study.tuner import tune_settings

    start_ray(cpus)
    with tempfile.TemporaryDirectory() as storage:
        stamps = Path(storage, "stamps")
        stamps.mkdir()
        scaling = Scaling(cpus_per_worker=float(threads), runner=runner)
        trainable = tune.with_parameters(stamped_trial, experiment=cfg.to_dict(), scaling=vars(scaling),
                                         storage=storage, stamps=str(stamps))
        trainable = tune.with_resources(trainable, trial_request(scaling, alive_nodes()))
        tune_config = tune_settings(tune.TuneConfig())
        tune_config.max_concurrent_trials = 1
        tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search(list(range(trials)))},
                           tune_config=tune_config,
                           run_config=tune.RunConfig(name="ray_overhead", storage_path=storage, verbose=0))
        started = time.time()
        grid = tuner.fit()
        ended = time.time()
        if grid.errors:
            raise RuntimeError(f"{runner}: a trial failed: {grid.errors[0]}")
        rows, free_since, driver_started = [], started, []
        for i in range(trials):
            events = events_of(stamps, i)
            driver_started.append(events["driver_entered"]["t"])
            record = json.loads((stamps / f"trial_{i}.record.json").read_text())
            if record["status"] != "completed":
                raise RuntimeError(f"{runner}: trial {i} did not complete: {record['error']}")
            entered, left, returned = (events[k]["t"] for k in ("loop_entered", "loop_left", "fit_returned"))
            rows.append({"startup_s": entered - free_since, "driver_to_loop_s": entered - driver_started[-1],
                         "teardown_s": returned - left, "loop_s": left - entered,
                         "cpu_s": events["loop_left"]["cpu"] - events["loop_entered"]["cpu"],
                         "epoch_s": sum(r["epoch_seconds"] for r in record["history"]),
                         "train_s": record["summary"]["train_seconds"], "eval_s": record["summary"]["eval_seconds"],
                         "clean_acc": record["summary"].get("clean_acc"),
                         "driver_pid": events["driver_entered"]["pid"]})
            free_since = returned
        actors = actor_starts(driver_started) if runner == "train" else []
    ray.shutdown()
    for row in rows:
        row["fixed_s"] = row["startup_s"] + row["teardown_s"]
    return {"side": runner, "trials": rows, "actors": actors, "tune_finish_s": ended - free_since,
            "total_s": ended - started,
            "load_average_1m": os.getloadavg()[0],
            **{key: median([r[key] for r in rows]) for key in
               ("epoch_s", "train_s", "eval_s", "cpu_s", "startup_s", "teardown_s", "fixed_s")}}


def run_child(side: str, threads: int) -> dict:
    """One side in a fresh process. The bare loop gets the OMP_NUM_THREADS Ray gives its workers."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if side == "bare" else dict(os.environ)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--child", side], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bare_child(cfg, threads: int) -> dict:
    from dpnp_ray.distributed import LocalEnvironment
    from dpnp_ray.experiment import run_experiment

    torch.set_num_threads(threads)
    started, cpu_started = time.time(), time.process_time()
    result = run_experiment(cfg, env=LocalEnvironment(torch.device("cpu")), log=None)
    return {"side": "bare", "epoch_s": sum(r["epoch_seconds"] for r in result.train.history),
            "train_s": result.summary["train_seconds"], "eval_s": result.summary["eval_seconds"],
            "cpu_s": time.process_time() - cpu_started, "total_s": time.time() - started,
            "load_average_1m": os.getloadavg()[0], "clean_acc": result.summary.get("clean_acc")}


SIDES = ("bare", "train", "tune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--attack-steps", type=int, default=3, help="training PGD steps (sets the epoch length)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-n", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads = CPUs of the Ray worker")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each local Ray instance")
    parser.add_argument("--trials", type=int, default=3, help="trials one after another in each Ray run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="1: bare, train, tune; 2: then tune, train, bare (cancels drift); ...")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one side, print JSON
    args = parser.parse_args()

    from dpnp_ray.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict(dict(
        dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch, device="cpu",
        precision="fp32", train_attack_steps=args.attack_steps, val_attack_steps=args.attack_steps,
        eval_suite="basic", eval_n=args.eval_n, eval_attack_steps=2))
    if args.child:
        row = bare_child(cfg, args.threads) if args.child == "bare" else \
            run_ray(args.child, cfg, args.threads, args.trials, args.cpus)
        print(json.dumps(row, default=str))
        return

    order: list[str] = []
    for r in range(args.repeats):
        order += list(SIDES) if r % 2 == 0 else list(reversed(SIDES))
    runs = []
    for run, side in enumerate(order):
        row = run_child(side, args.threads)
        row["run"] = run
        runs.append(row)
        per_trial = " ".join(f"{t['fixed_s']:.1f}" for t in row.get("trials", []))
        fixed = "" if side == "bare" else (
            f"  start-up {row['startup_s']:.1f} s  tear-down {row['teardown_s']:.1f} s  fixed {row['fixed_s']:.1f} s"
            f" (per trial: {per_trial})")
        print(f"  run {run}: {side:6s} epoch {row['epoch_s']:.2f} s  CPU {row['cpu_s']:.2f} s{fixed}  "
              f"load {row['load_average_1m']:.1f}", flush=True)

    def med(side, key):
        values = [r[key] for r in runs if r["side"] == side and r.get(key) is not None]
        return median(values) if values else None

    keys = ("epoch_s", "train_s", "eval_s", "cpu_s", "startup_s", "teardown_s", "fixed_s")
    summary = {key: {side: med(side, key) for side in SIDES} for key in keys}
    ratios = {key: {side: summary[key][side] / summary[key]["bare"] for side in ("train", "tune")}
              for key in ("epoch_s", "train_s", "eval_s", "cpu_s")}
    ratios["fixed_s"] = {"tune / train": summary["fixed_s"]["tune"] / summary["fixed_s"]["train"]}
    where = machine(torch.device("cpu"))
    loads = [r["load_average_1m"] for r in runs]
    print(f"ray overhead: {args.model} on {args.dataset}, PGD-{args.attack_steps} Adv-DPNP, {args.epochs} epoch(s), "
          f"batch {args.batch}, {args.threads} torch thread(s), {args.trials} trials per Ray run, {args.repeats} "
          f"repeat(s), on {where['cpu_model']} ({where['cpus_usable']} usable CPUs, load {min(loads):.1f}-"
          f"{max(loads):.1f})")
    print(table([{"what": k, **v, "rtr": ratios.get(k, {}).get("train"), "rtu": ratios.get(k, {}).get("tune")}
                 for k, v in summary.items()],
                [("what", "seconds (median)", ""), ("bare", "bare", ".2f"), ("train", "runner train", ".2f"),
                 ("tune", "runner tune", ".2f"), ("rtr", "train / bare", ".3f"), ("rtu", "tune / bare", ".3f")]))
    fixed = summary["fixed_s"]
    print(f"fixed cost per trial (start-up + tear-down): train {fixed['train']:.1f} s "
          f"({summary['startup_s']['train']:.1f} + {summary['teardown_s']['train']:.1f}), "
          f"tune {fixed['tune']:.1f} s ({summary['startup_s']['tune']:.1f} + {summary['teardown_s']['tune']:.1f}); "
          f"tune / train {ratios['fixed_s']['tune / train']:.3f} (targets: tune <= 5 s and <= 1/3 of train)")
    print(f"epoch-seconds ratio tune / bare {ratios['epoch_s']['tune']:.3f}, train / bare "
          f"{ratios['epoch_s']['train']:.3f} (target <= 1.05 at epochs of 30 s or more; this epoch: "
          f"{summary['epoch_s']['bare'] / args.epochs:.1f} s bare)")
    chain = [a for r in runs if r["side"] == "train" for a in r.get("actors", []) if a["trial"] > 0]
    if chain:
        print("\nwhere a `train` trial's start-up goes (trials after the first; medians; seconds from the trial "
              "driver's start): each actor is a new process")
        names = list(dict.fromkeys(a["actor"] for a in chain))
        print(table([{"actor": n, **{k: median([a[k] for a in chain if a["actor"] == n])
                                     for k in ("asked_s", "running_s", "ready_s")}} for n in names],
                    [("actor", "actor", ""), ("asked_s", "requested", ".2f"), ("running_s", "process running", ".2f"),
                     ("ready_s", "__init__ done", ".2f")]))
        entered = median([t["driver_to_loop_s"] for r in runs if r["side"] == "train" for t in r["trials"][1:]])
        print(f"the training loop starts at {entered:.2f} s")
    out = write_json("ray_overhead", {"args": vars(args), "config": cfg.to_dict(), "machine": where, "runs": runs,
                                      "summary": summary, "ratios": ratios}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
