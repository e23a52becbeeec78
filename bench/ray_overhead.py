"""What Ray Train costs: one trial through a 1-worker TorchTrainer against the bare loop.

    python bench/ray_overhead.py                      # resnet18 on digits, PGD-3: 35-40 s epochs on 1 core
    python bench/ray_overhead.py --repeats 2          # bare, ray, ray, bare (cancels drift)

Both sides run dpnp_ray.experiment.run_experiment (train() then the basic test suite on --eval-n
points) on the same config with one torch thread, each in a fresh process: the bare side in a
plain child process, the Ray side inside
dpnp_ray.ray_train.train_loop_per_worker (reports and a checkpoint every epoch, as in a study),
wrapped only to stamp the time it starts and ends; the TorchTrainer is built like
dpnp_ray.ray_train.make_trainer(in_tune=False).

epoch seconds   the loop's own epoch time (history "epoch_seconds"): the target is ray / bare <= 1.05
train seconds   train() wall time, with Ray's per-epoch report + checkpoint on the Ray side
start-up        TorchTrainer.fit() called -> the worker's loop starts (actor, process group, imports)
tear-down       the worker's loop returns -> fit() returns
cpu seconds     CPU time of the process that runs the trial (the Ray worker's own, with Ray's threads
                in it), from the loop's start to its end: on a shared machine the steadier measure,
                since time other processes take is not in it
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


def stamped_loop(loop_config: dict) -> None:
    """The trial's worker function, with its start and end times written where the driver reads them."""
    import time as _time
    from pathlib import Path as _Path

    from dpnp_ray.ray_train import train_loop_per_worker

    stamp = _Path(loop_config["stamp"])
    stamp.write_text(f"{_time.time()} {_time.process_time()}\n")
    train_loop_per_worker(loop_config)
    with stamp.open("a") as f:
        f.write(f"{_time.time()} {_time.process_time()}\n")


def run_ray(cfg, storage: str, threads: int, run: int) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    from dpnp_ray.ray_train import read_final_record

    stamp = Path(storage) / f"stamp_{run}.txt"
    trainer = TorchTrainer(
        stamped_loop,
        train_loop_config={"experiment": cfg.to_dict(), "threads": threads, "stamp": str(stamp)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": threads}),
        run_config=ray.train.RunConfig(name=f"ray_overhead_{run}", storage_path=storage,
                                       failure_config=ray.train.FailureConfig(max_failures=0),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    started = time.time()
    result = trainer.fit()
    ended = time.time()
    record = read_final_record(result)
    if record["status"] != "completed":
        raise RuntimeError(f"the Ray trial did not complete: {record['error']}")
    entered, cpu_entered, left, cpu_left = (float(v) for v in stamp.read_text().split())
    return {"side": "ray", "epoch_s": sum(r["epoch_seconds"] for r in record["history"]),
            "train_s": record["summary"]["train_seconds"], "eval_s": record["summary"]["eval_seconds"],
            "cpu_s": cpu_left - cpu_entered,
            "startup_s": entered - started, "teardown_s": ended - left, "total_s": ended - started,
            "clean_acc": record["summary"].get("clean_acc")}


def run_bare(threads: int) -> dict:
    """The bare loop in a fresh process of its own, as the Ray worker is (and with the same
    OMP_NUM_THREADS Ray gives its workers): no Ray driver threads share its process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--bare-child"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bare_child(cfg, threads: int) -> dict:
    from dpnp_ray.distributed import LocalEnvironment
    from dpnp_ray.experiment import run_experiment

    torch.set_num_threads(threads)
    started, cpu_started = time.time(), time.process_time()
    result = run_experiment(cfg, env=LocalEnvironment(torch.device("cpu")), log=None)
    return {"side": "bare", "epoch_s": sum(r["epoch_seconds"] for r in result.train.history),
            "train_s": result.summary["train_seconds"], "eval_s": result.summary["eval_seconds"],
            "cpu_s": time.process_time() - cpu_started,
            "startup_s": None, "teardown_s": None, "total_s": time.time() - started,
            "clean_acc": result.summary.get("clean_acc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--attack-steps", type=int, default=3, help="training PGD steps (sets the epoch length)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-n", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads = CPUs of the Ray worker")
    parser.add_argument("--repeats", type=int, default=1, help="1: bare, ray; 2: bare, ray, ray, bare; ...")
    parser.add_argument("--json", default=None)
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()

    from dpnp_ray.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict(dict(
        dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch, device="cpu",
        precision="fp32", train_attack_steps=args.attack_steps, val_attack_steps=args.attack_steps,
        eval_suite="basic", eval_n=args.eval_n, eval_attack_steps=2))
    if args.bare_child:
        print(json.dumps(bare_child(cfg, args.threads)))
        return

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        order = []
        for r in range(args.repeats):
            order += ["bare", "ray"] if r % 2 == 0 else ["ray", "bare"]
        for run, side in enumerate(order):
            row = run_bare(args.threads) if side == "bare" else run_ray(cfg, storage, args.threads, run)
            row["run"] = run
            rows.append(row)
            print(f"  run {run}: {side:4s} epoch {row['epoch_s']:.2f} s  train {row['train_s']:.2f} s  "
                  f"CPU {row['cpu_s']:.2f} s  total {row['total_s']:.2f} s", flush=True)
    ray.shutdown()

    def med(side, key):
        values = [r[key] for r in rows if r["side"] == side and r[key] is not None]
        return median(values) if values else None

    summary = {key: {"bare": med("bare", key), "ray": med("ray", key)} for key in
               ("epoch_s", "train_s", "eval_s", "cpu_s", "total_s", "startup_s", "teardown_s")}
    ratios = {key: summary[key]["ray"] / summary[key]["bare"] for key in ("epoch_s", "train_s", "eval_s", "cpu_s")}
    where = machine(torch.device("cpu"))
    print(f"ray overhead: {args.model} on {args.dataset}, PGD-{args.attack_steps} Adv-DPNP, {args.epochs} epoch(s), "
          f"batch {args.batch}, {args.threads} torch thread(s), {args.repeats} repeat(s), on {where['cpu_model']} "
          f"({where['cpus_usable']} usable CPUs, load {where['load_average_1m']:.1f})")
    print(table([{"what": k, "bare": v["bare"], "ray": v["ray"], "ratio": ratios.get(k)} for k, v in summary.items()],
                [("what", "seconds (median)", ""), ("bare", "bare", ".2f"), ("ray", "ray", ".2f"),
                 ("ratio", "ray / bare", ".3f")]))
    print(f"epoch-seconds ratio {ratios['epoch_s']:.3f}, CPU-seconds ratio {ratios['cpu_s']:.3f} "
          f"(target <= 1.05 at epochs of 30 s or more; "
          f"this epoch: {summary['epoch_s']['bare'] / args.epochs:.1f} s bare); "
          f"trial start-up {summary['startup_s']['ray']:.1f} s, tear-down {summary['teardown_s']['ray']:.1f} s")
    out = write_json("ray_overhead", {"args": vars(args), "config": cfg.to_dict(), "machine": where, "runs": rows,
                                      "summary": summary, "ratios": ratios}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
