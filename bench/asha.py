"""Does ASHA early stopping pay? The same Optuna search (space, sampler, seed) on digits with ASHA and
without, over several sampler seeds, through dpnp_ray.study.optuna_search.run_search on one local
Ray instance.

    python bench/asha.py                                  # 3 seeds x (asha, none), 10 trials of 8 epochs
    python bench/asha.py --grace-period 1 --reduction-factor 3   # try other scheduler settings
    python bench/asha.py --reduction-factor 4 --baseline bench/runs/asha.json  # reuse the runs without ASHA

For each search: trials run and stopped, trial-epochs (rows of epochs.parquet: every epoch any trial
trained, stopped ones included), wall time, and the best validation robust accuracy of a completed
trial (what the search delivers: a stopped trial never reaches its test evaluation). The objective
is validation robust accuracy alone, so that ASHA and the sampler rank on the same number. The two
arms of a seed run back to back, in alternating order. Target: ASHA's best within noise of the
full search's with at most 50% of its trial-epochs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from measure import machine, table, write_json

import torch


def search_once(scheduler: str, seed: int, args, root: str) -> dict:
    from dpnp_ray import results, storage
    from dpnp_ray.study import SearchSpec, StudySettings, run_search

    base = dict(dataset="digits", model="small_cnn", epochs=args.epochs, lr=0.05, batch_size=64,
                train_attack_steps=args.attack_steps, val_attack_steps=args.attack_steps, eval_suite="basic",
                eval_attack_steps=10, seed=0)
    settings = StudySettings(f"{scheduler}-s{seed}", storage=root, local_cpus=args.cpus)
    started = time.time()
    written = run_search(SearchSpec(base, args.trials, sampler="tpe", objective="robust", scheduler=scheduler,
                                    seed=seed), settings)
    wall = time.time() - started
    directory = storage.parent(written["trials"])
    trials = results.read_table(directory, "trials")
    epochs = results.read_table(directory, "epochs").drop_duplicates(["trial_id", "epoch"])
    done = trials[trials["status"] == "completed"]
    return {"scheduler": scheduler, "seed": seed, "trials": len(trials), "completed": len(done),
            "stopped": int((trials["status"] == "stopped").sum()), "trial_epochs": len(epochs),
            "wall_s": wall, "best_val_robust": float(done["val_robust_acc"].max()) if len(done) else float("nan"),
            "best_trial_epochs": int(epochs[epochs["trial_id"] == done.loc[done["val_robust_acc"].idxmax(),
                                                                            "trial_id"]].shape[0]) if len(done) else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--attack-steps", type=int, default=3, help="training and validation PGD steps")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--grace-period", type=int, default=None, help="override the library's ASHA grace period")
    parser.add_argument("--reduction-factor", type=float, default=None, help="override its reduction factor")
    parser.add_argument("--baseline", default=None,
                        help="a JSON this bench wrote: take its runs without ASHA (same seeds, trials, epochs, "
                             "attack steps) instead of running them again, e.g. when only the ASHA settings change")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    reused = []
    if args.baseline:
        import json

        previous = json.loads(Path(args.baseline).read_text())
        same = ("trials", "epochs", "attack_steps", "cpus")
        if any(previous["args"][k] != getattr(args, k) for k in same):
            parser.error(f"--baseline {args.baseline}: its {', '.join(same)} differ from this run's")
        reused = [r for r in previous["rows"] if r["scheduler"] == "none" and r["seed"] in args.seeds]
        if {r["seed"] for r in reused} != set(args.seeds):
            parser.error(f"--baseline {args.baseline}: has no run without ASHA for every seed of {args.seeds}")

    import ray

    from dpnp_ray.study import optuna_search

    rule = optuna_search.asha_settings(args.epochs)
    if rule is None:
        parser.error(f"--epochs {args.epochs}: ASHA has no rung under 3 epochs (a stop must leave an epoch)")
    if args.grace_period is not None or args.reduction_factor is not None:
        import dataclasses

        rule = dataclasses.replace(rule, **{k: v for k, v in (("grace_period", args.grace_period),
                                                              ("reduction_factor", args.reduction_factor))
                                            if v is not None})
        optuna_search.asha_settings = lambda epochs: rule  # run_search builds its scheduler in this process
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        rows += [{**r, "reused": True} for r in reused]
        for i, seed in enumerate(args.seeds):
            for scheduler in (("asha", "none") if i % 2 == 0 else ("none", "asha")):
                if reused and scheduler == "none":
                    continue
                row = search_once(scheduler, seed, args, storage)
                row["load_average_1m"] = os.getloadavg()[0]
                rows.append(row)
                print(f"  seed {seed} {scheduler:4s}: {row['trial_epochs']} trial-epochs, {row['stopped']} stopped, "
                      f"{row['wall_s']:.0f} s, best val robust {row['best_val_robust']:.3f}, "
                      f"load {row['load_average_1m']:.1f}", flush=True)
    ray.shutdown()

    def mean_sd(scheduler: str, key: str) -> tuple[float, float]:
        values = [r[key] for r in rows if r["scheduler"] == scheduler]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")

    summary = {s: {k: mean_sd(s, k) for k in ("trial_epochs", "wall_s", "best_val_robust", "stopped")}
               for s in ("asha", "none")}
    paired = [a["best_val_robust"] - n["best_val_robust"] for a in rows if a["scheduler"] == "asha"
              for n in rows if n["scheduler"] == "none" and n["seed"] == a["seed"]]
    epochs_ratio = summary["asha"]["trial_epochs"][0] / summary["none"]["trial_epochs"][0]
    wall_ratio = summary["asha"]["wall_s"][0] / summary["none"]["wall_s"][0]
    where = machine(torch.device("cpu"))
    loads = [r["load_average_1m"] for r in rows]
    print(f"\nASHA vs none: digits small_cnn, {args.trials} trials x {args.epochs} epochs, PGD-{args.attack_steps}, "
          f"TPE, objective val robust accuracy, sampler seeds {args.seeds}; ASHA grace {rule.grace_period}, "
          f"reduction factor {rule.reduction_factor:g}, max_t {rule.max_t}, on {where['cpu_model']} "
          f"({where['cpus_usable']} usable CPUs, load {min(loads):.1f}-{max(loads):.1f})")
    print(table(rows, [("seed", "seed", "d"), ("scheduler", "scheduler", ""), ("trials", "trials", "d"),
                       ("stopped", "stopped", "d"), ("trial_epochs", "trial-epochs", "d"), ("wall_s", "wall s", ".0f"),
                       ("best_val_robust", "best val robust", ".3f"), ("best_trial_epochs", "epochs of best", "d")]))
    print(f"mean over {len(args.seeds)} seeds: trial-epochs ASHA / none = {epochs_ratio:.2f} (target <= 0.5), "
          f"wall ASHA / none = {wall_ratio:.2f}; best val robust ASHA {summary['asha']['best_val_robust'][0]:.3f} "
          f"± {summary['asha']['best_val_robust'][1]:.3f}, none {summary['none']['best_val_robust'][0]:.3f} "
          f"± {summary['none']['best_val_robust'][1]:.3f} (sd over seeds); paired difference "
          f"{statistics.mean(paired):+.3f}")
    out = write_json("asha", {"args": vars(args), "asha": vars(rule), "machine": where, "rows": rows,
                              "summary": summary, "epochs_ratio": epochs_ratio, "wall_ratio": wall_ratio,
                              "paired_best_difference": paired}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
