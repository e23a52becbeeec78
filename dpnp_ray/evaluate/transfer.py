"""The transfer matrix of a study: each exported model's adversarial examples against every other model.

    python -m dpnp_ray.evaluate.transfer <study dir>             # every model in <study>/models/
    python -m dpnp_ray.evaluate.transfer <study dir> --n 500 --steps 20 --device cuda

Each source model's PGD examples (CE loss, at the study's eval_eps with its eval step, no early exit: the
last iterate, as a transfer attack hands them over) on one fixed test subset (`accuracy.subsample`, seed 0)
are classified by every model of the study. Row (source, target) is the target's accuracy on the source's
examples; the diagonal is the white-box accuracy of that same PGD. Written to <study>/transfer.parquet
(results.py: one row per source_trial, target_trial, attack, eps, steps), each row with the models'
identities and the provenance of this run. Every model must share the dataset and threat model.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch import nn

from .. import results, storage
from ..attacks import eval_mode
from ..devices import Precision
from ..provenance import provenance, redact
from .accuracy import Attack, attack_generator, pgd_attack, subsample

TABLE = "transfer"


def adversarial_examples(net: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, *, batch_size: int,
                         seed: int = 0) -> torch.Tensor:
    """`attack` against `net` on float images x (on the model's device), batch by batch, with the random starts
    the suite's per-point evaluation draws (accuracy.attack_generator, rank 0): the matrix's diagonal is what
    `correct_per_point` counts for the same attack, points and batch size."""
    generator = attack_generator(x.device, seed)
    with eval_mode(net):
        return torch.cat([attack(net, x[lo:lo + batch_size], y[lo:lo + batch_size], generator).detach()
                          for lo in range(0, len(x), batch_size)]) if len(x) else x.clone()


def accuracy_on(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Plain accuracy of `net` on x (fp32, eval mode)."""
    right = 0
    with eval_mode(net), torch.no_grad():
        for lo in range(0, len(x), batch_size):
            right += int((net(x[lo:lo + batch_size]).argmax(1) == y[lo:lo + batch_size]).sum())
    return right / max(len(x), 1)


def transfer_matrix(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, attack: Attack, *,
                    batch_size: int, seed: int = 0) -> dict[tuple[str, str], float]:
    """(source, target) -> the target's accuracy on the source's adversarial examples of (x, y)."""
    matrix = {}
    for source, net in models.items():
        x_adv = adversarial_examples(net, x, y, attack, batch_size=batch_size, seed=seed)
        for target, other in models.items():
            matrix[source, target] = accuracy_on(other, x_adv, y, batch_size)
    return matrix


def study_models(study_dir: str) -> dict[str, str]:
    """trial_id -> model directory for every exported model of a study (<study>/models/<trial_id>/)."""
    from ..model_export import METADATA_FILE

    folder = storage.join(study_dir, "models")
    names = [n for n in storage.list_names(folder, "") if storage.exists(storage.join(folder, n, METADATA_FILE))]
    return {name: storage.join(folder, name) for name in names}


def run_transfer(study_dir: str, *, n: int = 1000, steps: int | None = None, device: str = "auto",
                 batch_size: int = 500, log=print) -> str:
    """The transfer matrix of every model in <study>/models/ on n test points; writes transfer.parquet, returns it.
    ValueError (naming the models) when fewer than two models are there or they differ in dataset or eval_eps."""
    from ..config import ExperimentConfig
    from ..data import to_float
    from ..devices import resolve_device
    from ..model_export import load_model, read_model_metadata
    from ..factory import load_data

    if n < 0 or (steps is not None and steps < 1):
        raise ValueError(f"--n {n} --steps {steps}: n >= 0 (0: the whole test set), steps >= 1")
    directories = study_models(study_dir)
    if len(directories) < 2:
        raise ValueError(f"{redact(study_dir)}/models/: {len(directories)} exported model(s); a transfer matrix "
                         "needs at least two (a study exports each completed trial's model there)")
    metadata = {trial: read_model_metadata(path) for trial, path in directories.items()}
    configs = {trial: ExperimentConfig.from_dict(m["config"]) for trial, m in metadata.items()}
    threat = {trial: (c.dataset, c.eval_eps) for trial, c in configs.items()}
    if len(set(threat.values())) > 1:
        raise ValueError("the models differ in dataset or eval_eps, so no one attack fits them all: "
                         + ", ".join(f"{t} {d} eps {e:g}" for t, (d, e) in threat.items()))
    cfg = next(iter(configs.values()))
    env_device = resolve_device(device)
    test = subsample(load_data(cfg).test, n)
    x, y = to_float(test.images).to(env_device), test.labels.to(env_device)
    k = steps if steps is not None else cfg.eval_attack_steps
    attack = pgd_attack(cfg.eval_eps, cfg.eval_step, k, Precision.choose("fp32", env_device), early_stop=False)
    models = {trial: load_model(path, device=env_device) for trial, path in directories.items()}
    matrix = transfer_matrix(models, x, y, attack, batch_size=batch_size, seed=cfg.seed)
    common = {"attack": "pgd", "loss": "ce", "eps": float(cfg.eval_eps), "steps": k, "step_size": float(cfg.eval_step),
              "n": len(test), "dataset": cfg.dataset, **provenance(str(env_device))}
    rows = []
    for (source, target), value in matrix.items():
        rows.append({"study": _trial(metadata[source]).get("study"), "source_trial": source, "target_trial": target,
                     **_identity("source", metadata[source]), **_identity("target", metadata[target]),
                     **common, "accuracy": value})
    location = results.write_table(study_dir, TABLE, rows)
    if log is not None:
        names = list(models)
        width = max(len(t) for t in names)
        log(f"target accuracy on each source's PGD-{k} examples at eps {cfg.eval_eps:g} (n={len(test)}); "
            "rows: source, columns: target")
        log(" " * width + "  " + "  ".join(f"{t:>{width}}" for t in names))
        for source in names:
            log(f"{source:<{width}}  " + "  ".join(f"{matrix[source, t]:>{width}.3f}" for t in names))
    return location


def _trial(metadata: dict[str, Any]) -> dict[str, Any]:
    return metadata.get("trial") or {}


def _identity(role: str, metadata: dict[str, Any]) -> dict[str, Any]:
    trial = _trial(metadata)
    return {f"{role}_variant": trial.get("variant"), f"{role}_seed": trial.get("seed"),
            f"{role}_method": metadata["config"].get("method"),
            f"{role}_code_version": (metadata.get("provenance") or {}).get("code_version")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpnp_ray.evaluate.transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="a study directory (its models/ holds the exported models)")
    parser.add_argument("--n", type=int, default=1000, help="test points (0: all); default %(default)s")
    parser.add_argument("--steps", type=int, default=None, help="PGD steps (default: the models' eval_attack_steps)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=500, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        location = run_transfer(args.study, n=args.n, steps=args.steps, device=args.device, batch_size=args.batch_size)
    except (ValueError, RuntimeError) as exc:  # ModelFileError, ConfigError, DataError, no CUDA: a message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"  transfer     {location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
