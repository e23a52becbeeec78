"""Evaluation precision on a GPU: the same trained model evaluated at eval_precision fp32 vs bf16.

    python bench/eval_precision.py                  # digits, small_cnn trained in bf16 on CUDA
    python bench/eval_precision.py --suite quick --epochs 8

Trains one model with `precision=bf16` (the CUDA default), then runs the evaluation suite on it twice, on
the same points with the same seeds: once at `eval_precision=fp32` (the default) and once at `bf16`. For
each it records the accuracies, the suite's seconds, and whether autocast was on at the prototype head
during the suite (a forward hook), which must be False for fp32 whatever training used.
Without a CUDA device it says so and exits 0 (on a CPU both runs would be fp32-vs-CPU-bf16, not the question).
"""

from __future__ import annotations

import argparse
import time

from measure import machine, table, write_json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--suite", default="basic", help="evaluation suite level (basic, quick, full)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: nothing measured (this bench compares GPU evaluation precisions).")
        return

    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.devices import Precision
    from dpnp_ray.distributed import LocalEnvironment
    from dpnp_ray.evaluate import run_suite
    from dpnp_ray.factory import load_data
    from dpnp_ray.training_loop import train

    device = torch.device("cuda")
    base = dict(dataset="digits", model="small_cnn", epochs=args.epochs, lr=0.05, batch_size=64, device="cuda",
                precision="bf16", eval_suite=args.suite, seed=0)
    cfg = ExperimentConfig.from_dict(base).resolved()
    data = load_data(cfg)
    env = LocalEnvironment(device)
    started = time.perf_counter()
    net = train(cfg, env=env, data=data, log=None).net
    train_s = time.perf_counter() - started
    autocast_seen: set[bool] = set()
    net.head.register_forward_hook(lambda *_: autocast_seen.add(torch.is_autocast_enabled("cuda")))
    rows = []
    for eval_precision in ("fp32", "bf16", "fp32"):  # fp32 twice: the run-to-run spread of the same setting
        autocast_seen.clear()
        run_cfg = ExperimentConfig.from_dict({**base, "eval_precision": eval_precision}).resolved()
        torch.cuda.synchronize()
        started = time.perf_counter()
        suite = run_suite(net, data, run_cfg, env, Precision.choose(eval_precision, device))
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        acc = {e["attack"]: e["accuracy"] for e in suite.evals if e.get("split", "test") == "test"}
        rows.append({"eval_precision": eval_precision, "autocast_at_head": sorted(autocast_seen),
                     "clean": acc.get("clean"), "fgsm": acc.get("fgsm"), "pgd": acc.get("pgd"),
                     "cw_inf": acc.get("cw_inf"), "worst_case": suite.summary.get("worst_case_acc"),
                     "n": suite.summary.get("eval_n"), "seconds": seconds})
    print(f"digits small_cnn trained {args.epochs} epochs in bf16 on {machine(device).get('gpu')} "
          f"({train_s:.1f} s); suite {args.suite}, same points and seeds for every row")
    print(table(rows, [("eval_precision", "eval precision", ""), ("autocast_at_head", "autocast at head", ""),
                       ("clean", "clean", ".4f"), ("fgsm", "FGSM", ".4f"), ("pgd", "PGD", ".4f"),
                       ("cw_inf", "CW-inf", ".4f"), ("worst_case", "worst case", ".4f"), ("n", "n", ""),
                       ("seconds", "suite s", ".1f")]))
    out = write_json("eval_precision", {"args": vars(args), "machine": machine(device), "rows": rows}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
