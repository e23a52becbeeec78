"""The training loop: a plain function of a config, with no Ray in it.

`train(cfg)` runs in one process; ray_train.py runs the same function in every Ray Train
worker with a DistributedEnvironment, an `on_epoch` callback that reports and checkpoints,
and `resume` set from the latest checkpoint.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .config import ExperimentConfig
from .data import DatasetInfo, DatasetSplits, Split, augment, to_float
from .devices import DeviceLoader, Precision, configure_backend, fits_on_device, resolve_device
from .distributed import LocalEnvironment
from .steps import DualBranchForward, train_step
from .evaluate import correct_counts, pgd_attack
from .factory import load_data, make_optimizer, model_from_config
from .models import Classifier
from .schedules import make_eps_schedule, make_lr_scheduler

CHECKPOINT_VERSION = 1
EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
"""on_epoch(metrics, make_checkpoint_state): called on every rank after each epoch."""


PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines inside an epoch when the log goes to a terminal."""


class ConsoleLog:
    """A `log` for `train`: whole lines through `write`, and progress lines inside epochs at
    most every `progress_every_s` seconds (0: none). A plain function as `log` (e.g. print)
    gets progress lines only when stdout is a terminal."""

    def __init__(self, write: Callable[[str], None] = print, progress_every_s: float = 0.0):
        self.write = write
        self.progress_every_s = progress_every_s

    def __call__(self, line: str) -> None:
        self.write(line)


def progress_interval(log: Callable[[str], None] | None) -> float:
    """Seconds between progress lines inside an epoch for this log; 0 turns them off."""
    if log is None:
        return 0.0
    if isinstance(log, ConsoleLog):
        return log.progress_every_s
    return PROGRESS_EVERY_S if sys.stdout.isatty() else 0.0


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


@dataclass
class TrainResult:
    net: Classifier
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    info: DatasetInfo
    precision: str


def train_loader(split: Split, cfg: ExperimentConfig, env: LocalEnvironment) -> DataLoader | DeviceLoader:
    """Shuffled batches of this rank's shard; the order of epoch e depends on (seed, e) only,
    so a resumed run sees the same batches as an undisturbed one.

    On a GPU a split that fits (CIFAR-sized) stays on the device and batches are gathered there
    (DeviceLoader: the same batches in the same order); otherwise batches come from pinned host
    memory and the loop copies them with non_blocking=True.
    """
    dataset = TensorDataset(split.images, split.labels)
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    per_rank = max(1, len(sampler))
    batch_size, drop_last = min(cfg.batch_size, per_rank), per_rank > cfg.batch_size
    if fits_on_device(split.images.nbytes + split.labels.nbytes, env.device):
        return DeviceLoader(split.images, split.labels, sampler=sampler, batch_size=batch_size,
                            drop_last=drop_last, device=env.device)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      pin_memory=env.device.type == "cuda")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def train(cfg: ExperimentConfig, *, env: LocalEnvironment | None = None, data: DatasetSplits | None = None,
          resume: dict[str, Any] | None = None, on_epoch: EpochCallback | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train cfg.method for cfg.epochs, select a model on the validation split, return it.

    Each epoch records every loss term, train clean/adversarial accuracy, validation clean
    and PGD accuracy, the eps and LR in force, images/s and seconds. `resume` is a state
    from `on_epoch`'s make_checkpoint_state(); training continues after its epoch.
    """
    cfg = cfg.resolved()
    env = env or LocalEnvironment(resolve_device(cfg.device))
    data = data or load_data(cfg)
    device = env.device
    configure_backend(device)
    torch.manual_seed(cfg.seed)
    net = model_from_config(cfg, data.info).to(device)
    if cfg.channels_last and device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if cfg.compile:
        net.backbone = torch.compile(net.backbone)
    forward = env.wrap_model(DualBranchForward(net))
    precision = Precision.choose(cfg.precision, device)
    scaler = precision.grad_scaler()
    optimizer = make_optimizer(cfg, net)
    scheduler = make_lr_scheduler(optimizer, cfg.lr_schedule, cfg.epochs, cfg.lr_milestones, cfg.lr_gamma)
    loader = train_loader(data.train, cfg, env)
    eps_at = make_eps_schedule(cfg.eps_schedule, cfg.eps, warmup_epochs=cfg.eps_warmup_epochs,
                               steps_per_epoch=len(loader), start=cfg.eps_start)
    attack_gen = _generator(device, 1_000_003 * cfg.seed + 2 * env.rank + 1)
    augment_gen = _generator(device, 1_000_003 * cfg.seed + 2 * env.rank + 2)
    # Validation is an evaluation: it runs at cfg.eval_precision (fp32 by default), not the training precision.
    val_precision = Precision.choose(cfg.eval_precision, device)
    val_attack = pgd_attack(cfg.eval_eps, cfg.eval_step, cfg.val_attack_steps, val_precision)

    history: list[dict[str, Any]] = []
    best = {"metric": float("-inf"), "epoch": -1, "state": None, "bad_epochs": 0}
    start_epoch = 0
    if resume is not None:
        if resume.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {resume.get('version')!r}: this code reads {CHECKPOINT_VERSION}")
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        attack_gen.set_state(resume["attack_rng"][env.rank].to("cpu"))
        augment_gen.set_state(resume["augment_rng"][env.rank].to("cpu"))
        history = list(resume["history"])
        best = dict(resume["best"])
        start_epoch = int(resume["epoch"]) + 1

    stopped_early = False
    progress_every = progress_interval(log) if env.is_main else 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stop_patience and best["bad_epochs"] >= cfg.early_stop_patience:
            stopped_early = True
            break
        loader.sampler.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        seen = torch.zeros((), device=device)
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        eps = cfg.eps
        next_progress, images_done = started + progress_every, 0
        for step, (xb, yb) in enumerate(loader):
            x = augment(to_float(xb.to(device, non_blocking=True)), data.info.augmentation, augment_gen)
            y = yb.to(device, non_blocking=True)
            if cfg.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            eps = eps_at(epoch, step)
            stats = train_step(forward, net, x, y, cfg, eps=eps, optimizer=optimizer, precision=precision,
                               generator=attack_gen, scaler=scaler)
            # Track the first bad step on the device: no host sync inside the loop.
            bad = ~torch.isfinite(stats["loss_total"]) & (first_bad < 0)
            first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
            for key, value in stats.items():
                weight = 1 if key.startswith("correct") else len(y)
                sums[key] = sums.get(key, 0) + value.float() * weight
            seen += len(y)
            images_done += len(y) * env.world_size  # host-side count (equal shards): no device sync
            if progress_every and (now := time.perf_counter()) >= next_progress:
                log(format_progress(epoch, step + 1, len(loader), images_done, now - started))
                next_progress = now + progress_every
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        bad_step = int(first_bad)
        if bad_step >= 0:
            raise NonFiniteLossError(f"training loss became non-finite at epoch {epoch}, step {bad_step} "
                                     f"(method={cfg.method}, lr={lr}, eps={eps_at(epoch, bad_step):.5f})")
        keys = sorted(sums)
        reduced = env.all_reduce_sum(torch.stack([sums[k] for k in keys] + [seen]))
        total_seen = float(reduced[-1])
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch}
        for key, value in zip(keys, reduced[:-1].tolist()):
            name = key.replace("correct_", "train_") + "_acc" if key.startswith("correct") else key
            record[name] = value / total_seen
        clean_correct, n_val = correct_counts(net, data.val, None, env=env, batch_size=cfg.eval_batch_size,
                                              precision=val_precision)
        robust_correct, _ = correct_counts(net, data.val, val_attack, env=env, batch_size=cfg.eval_batch_size,
                                           precision=val_precision, seed=cfg.seed)
        record.update(
            val_clean_acc=clean_correct / n_val, val_robust_acc=robust_correct / n_val, eps=eps, lr=lr,
            images_per_s=total_seen / seconds, epoch_seconds=seconds,
            eval_seconds=time.perf_counter() - started - seconds,
        )
        metric = {"val_robust": record["val_robust_acc"], "val_clean": record["val_clean_acc"],
                  "last": float(epoch)}[cfg.select_metric]
        if metric > best["metric"]:
            best = {"metric": metric, "epoch": epoch, "bad_epochs": 0,
                    "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
        else:
            best["bad_epochs"] += 1
        record["best_epoch"] = best["epoch"]
        history.append(record)
        if log is not None and env.is_main:
            log(format_epoch(record))
        if on_epoch is not None:
            def make_state(epoch=epoch) -> dict[str, Any]:
                return {
                    "version": CHECKPOINT_VERSION, "epoch": epoch, "config": cfg.to_dict(),
                    "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                    "attack_rng": _gather_rng(attack_gen, env), "augment_rng": _gather_rng(augment_gen, env),
                    "history": copy.deepcopy(history), "best": best,
                }

            on_epoch(record, make_state)

    if best["state"] is not None:
        net.load_state_dict(best["state"])
    return TrainResult(net, history, best["epoch"], stopped_early, data.info, precision.name)


def _gather_rng(generator: torch.Generator, env: LocalEnvironment) -> list[torch.Tensor]:
    """Every rank's generator state, so each worker resumes its own random stream."""
    state = generator.get_state()
    if env.world_size == 1:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * env.world_size
    dist.all_gather_object(states, state)
    return states


def format_progress(epoch: int, batches_done: int, batches: int, images: int, seconds: float) -> str:
    """'epoch   3: 120/390 batches, 850 img/s, ETA 0:45'. On a GPU the rate is that of queued work
    (the loop never waits for the device), so it settles after the first few batches."""
    rate = images / seconds if seconds > 0 else 0.0
    remaining = seconds / batches_done * (batches - batches_done) if batches_done else 0.0
    minutes, secs = divmod(int(round(remaining)), 60)
    return f"epoch {epoch:3d}: {batches_done}/{batches} batches, {rate:.0f} img/s, ETA {minutes}:{secs:02d}"


def format_epoch(record: dict[str, Any]) -> str:
    """One console line per epoch; a training accuracy the method does not measure (PGD-AT trains on
    adversarial examples only: no clean accuracy) is left out rather than shown as nan."""
    train = " ".join(f"{label} {record[key]:.3f}" for label, key in (("clean", "train_clean_acc"),
                                                                     ("adv", "train_adv_acc"))
                     if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]))
    return (f"epoch {record['epoch']:3d}  loss {record.get('loss_total', float('nan')):.4f}  "
            + (f"train {train}  " if train else "")
            + f"val clean {record['val_clean_acc']:.3f} robust {record['val_robust_acc']:.3f}  "
            f"eps {record['eps']:.4f} lr {record['lr']:.4g}  {record['images_per_s']:.0f} img/s {record['epoch_seconds']:.1f}s")
