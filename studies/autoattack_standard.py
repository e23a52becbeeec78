"""AutoAttack `standard` on the whole test split for chosen trials of a finished ablation (no Ray, no retraining).

    python studies/autoattack_standard.py results/ablation_digits --variants full pgd_at trades --seeds 0 1 2 3 4

Each trial's selected model (the best-validation weights its last epoch checkpoint holds) is rebuilt from
<study>/ray/train/<study>-<variant>-s<seed>/, its clean accuracy recomputed and checked against the trial's
record (so the model is the one the study evaluated), then attacked with the original AutoAttack, version
`standard`, at the trial's eval_eps in fp32. Rows go to <study>/autoattack_standard.csv (one per trial);
`python -m analysis.markdown` shows them next to the study's own AutoAttack (`apgd` in the quick suite).
With --wait it runs beside a study still in progress, taking each trial when its record appears.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import pandas as pd
import torch

from dpnp_ray.config import ExperimentConfig
from dpnp_ray.data import to_float
from dpnp_ray.evaluate.external import autoattack, autoattack_code_version
from dpnp_ray.ray_train import STATE_FILE
from dpnp_ray.study.records import read_record, record_path, train_run_name
from dpnp_ray.study.settings import ray_path
from dpnp_ray.factory import load_data, model_from_config

OUTPUT = "autoattack_standard.csv"


def selected_weights(study_dir: Path, study: str, trial_id: str) -> tuple[dict, dict]:
    """(config, best-validation state_dict) from the trial's last epoch checkpoint."""
    run = Path(ray_path(str(study_dir), "train", train_run_name(study, trial_id)))
    epochs = sorted(run.glob("epoch_*/" + STATE_FILE))
    if not epochs:
        raise FileNotFoundError(f"{run}: no epoch_*/{STATE_FILE} checkpoint (was the study run with this storage?)")
    state = torch.load(epochs[-1], map_location="cpu", weights_only=True)
    best = state["best"]["state"] if state["best"].get("state") is not None else state["model"]
    return state["config"], best


@torch.no_grad()
def _accuracy(net, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    return sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch)) / len(y)


def evaluate_trial(study_dir: Path, row: dict, threads: int) -> dict:
    """row: the trial's record (study, trial_id, variant, seed, summary)."""
    torch.set_num_threads(threads)
    config, weights = selected_weights(study_dir, str(row["study"]), str(row["trial_id"]))
    cfg = ExperimentConfig.from_dict(config)
    data = load_data(cfg)
    net = model_from_config(cfg, data.info)
    net.load_state_dict(weights)
    net.eval()
    x, y = to_float(data.test.images), data.test.labels
    clean = _accuracy(net, x, y, cfg.eval_batch_size)
    recorded = float(row["summary"]["clean_acc"])
    if abs(clean - recorded) > 0.5 / len(y):
        raise RuntimeError(f"{row['trial_id']}: recomputed clean accuracy {clean:.4f} differs from the study's "
                           f"{recorded:.4f}: not the model the study evaluated")
    started = time.perf_counter()
    _, robust, warnings = autoattack(net, x, y, eps=float(cfg.eval_eps), version="standard", seed=cfg.seed,
                                     batch_size=cfg.eval_batch_size, num_classes=data.info.num_classes)
    return {"study": row["study"], "trial_id": row["trial_id"], "variant": row["variant"], "seed": int(row["seed"]),
            "n": len(y), "eps": float(cfg.eval_eps), "clean_acc": clean, "aa_standard_acc": float(robust.float().mean()),
            "aa_version": autoattack_code_version(), "seconds": time.perf_counter() - started,
            "warnings": " | ".join(warnings)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for a trial's record to appear")
    args = parser.parse_args()
    out = args.study_dir / OUTPUT
    rows = pd.read_csv(out).to_dict("records") if out.exists() else []
    for variant in args.variants:
        for seed in args.seeds:
            trial_id = f"{variant}-s{seed}"
            if trial_id in {r["trial_id"] for r in rows}:
                continue
            deadline = time.time() + args.wait
            record = read_record(record_path(str(args.study_dir), trial_id))
            while record is None and time.time() < deadline:
                time.sleep(15)
                record = read_record(record_path(str(args.study_dir), trial_id))
            if record is None or record.get("status") != "completed":
                print(f"{trial_id}: no completed record in {args.study_dir}; skipped", file=sys.stderr)
                continue
            result = evaluate_trial(args.study_dir, record, args.threads)
            print(f"{trial_id}: clean {result['clean_acc']:.4f}  AutoAttack standard "
                  f"{result['aa_standard_acc']:.4f}  ({result['seconds']:.0f}s)", flush=True)
            rows.append(result)
            pd.DataFrame(rows).to_csv(out, index=False)  # after every trial: an interrupted run keeps what it has
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
