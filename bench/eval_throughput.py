"""Evaluation throughput: images/s of PGD-20 (plain and early exit) and AutoAttack `apgd`.

    python bench/eval_throughput.py                          # CPU: small n
    python bench/eval_throughput.py --device cuda --n 2000 --aa-n 500 --batch 1000

Rows:
  small_cnn / resnet18, CIFAR-shaped (3x32x32) random images, untrained prototype-head models
      (BatchNorm statistics from a few random batches). Labels are the model's own predictions,
      with a random 15% changed (--clean-acc 0.85), and eps is calibrated so that PGD-5 leaves
      about half the points correct (--target-robust 0.5): the clean / robust accuracy of a typical
      robust CIFAR ResNet; --eps fixes eps instead. How much early exit saves depends on how soon
      points break, so these rows show the mechanism; the digits row is a real robust model.
  small_cnn digits: Adv-DPNP trained 4 epochs on digits (~15 s), the threat model's eps (skip
      with --no-digits).

PGD-20: step eps/4, one random start, fp32 (or --precision); `early` is attacks.pgd(early_stop=True),
what evaluation uses; accuracy columns are on the same points and seed. AutoAttack is
dpnp_ray.evaluate.external.autoattack(version="apgd"): APGD-CE + APGD-T (9 targets, 100 iterations), fp32.
Plain and early-exit PGD run --repeats times alternately; throughput = points / median wall seconds
(points broken early included); on the CPU the speedup is also given in process CPU time, the
steadier measure on a shared machine. AutoAttack runs once.
"""

from __future__ import annotations

import argparse

from measure import machine, measure, median, setup, table, write_json

import torch

from dpnp_ray.attacks import eval_mode, pgd
from dpnp_ray.models import build_model
from dpnp_ray.devices import Precision


def accuracy(net, x, y, precision: Precision) -> float:
    with torch.no_grad(), precision.autocast():
        return float((net(x).argmax(1) == y).float().mean())


def run_pgd(net, x, y, eps, steps, precision, batch, early):
    out = []
    generator = torch.Generator(device=x.device).manual_seed(0)
    for lo in range(0, len(x), batch):
        with precision.autocast():
            out.append(pgd(net, x[lo:lo + batch], y[lo:lo + batch], eps=eps, step_size=eps / 4, steps=steps,
                           generator=generator, early_stop=early))
    return torch.cat(out)


def calibrate_eps(net, x, y, precision, batch, target: float) -> float:
    """Geometric bisection (6 rounds, 1e-4 .. 16/255) for the eps at which PGD-5 leaves `target` of
    the points correct."""
    lo, hi = 1e-4, 16 / 255
    for _ in range(6):
        mid = (lo * hi) ** 0.5
        robust = accuracy(net, run_pgd(net, x, y, mid, 5, precision, batch, early=True), y, precision)
        lo, hi = (mid, hi) if robust > target else (lo, mid)
    return (lo * hi) ** 0.5


def bench_model(name, net, x, y, eps, args, device, precision, aa_n, num_classes) -> dict:
    from dpnp_ray.evaluate.external import autoattack

    row = {"model": name, "n": len(x), "eps_255": eps * 255, "clean": accuracy(net, x, y, precision)}
    wall = {"plain": [], "early": []}
    cpu = {"plain": [], "early": []}
    with eval_mode(net):
        holder = {}
        for r in range(args.repeats):  # alternating, the order flipped every repeat
            for key in ("plain", "early") if r % 2 == 0 else ("early", "plain"):
                seconds, cpu_seconds, _ = measure(lambda: holder.__setitem__(
                    key, run_pgd(net, x, y, eps, args.steps, precision, args.batch, key == "early")), device)
                wall[key].append(seconds)
                cpu[key].append(cpu_seconds)
        for key in ("plain", "early"):
            row[f"{key}_img_s"] = len(x) / median(wall[key])
            row[f"{key}_acc"] = accuracy(net, holder[key], y, precision)
            print(f"  {name}: PGD-{args.steps} {key} {row[f'{key}_img_s']:.2f} img/s, accuracy "
                  f"{row[f'{key}_acc']:.3f}", flush=True)
        row["early_speedup"] = median(wall["plain"]) / median(wall["early"])
        if device.type == "cpu":
            row["early_speedup_cpu_time"] = median(cpu["plain"]) / median(cpu["early"])
        if aa_n > 0:
            xa, ya = x[:aa_n], y[:aa_n]
            result = {}
            seconds, _, _ = measure(lambda: result.__setitem__("aa", autoattack(
                net, xa, ya, eps=eps, version="apgd", seed=0, batch_size=args.batch, num_classes=num_classes)), device)
            row.update(aa_n=aa_n, aa_img_s=aa_n / seconds, aa_acc=float(result["aa"][1].float().mean()),
                       pgd_acc_aa_points=accuracy(net, holder["early"][:aa_n], ya, precision))
            print(f"  {name}: AutoAttack apgd {row['aa_img_s']:.2f} img/s on {aa_n} points, accuracy "
                  f"{row['aa_acc']:.3f}", flush=True)
    row["wall_seconds"], row["cpu_seconds"] = wall, cpu
    return row


def synthetic_row(model: str, args, device, precision) -> dict:
    torch.manual_seed(0)
    net = build_model(backbone=model, num_classes=10, in_channels=3, mean=(0.49, 0.48, 0.45),
                      std=(0.25, 0.24, 0.26), prototype_head=True).to(device)
    g = torch.Generator().manual_seed(1)
    n = args.n if model == "small_cnn" else args.n_resnet
    x = torch.rand(n, 3, 32, 32, generator=g).to(device)
    with torch.no_grad():
        # BatchNorm running statistics from a few batches of the same kind of input: with its initial
        # statistics an untrained ResNet maps every input to one class, which no attack changes.
        net.train()
        for _ in range(4):
            net(torch.rand(64, 3, 32, 32, generator=g).to(device))
        net.eval()
        y = net(x).argmax(1)
    # A share of wrong labels gives the clean accuracy of a robust model (broken before any step).
    wrong = torch.rand(n, generator=g) > args.clean_acc
    y = torch.where(wrong.to(device), (y + torch.randint(1, 10, (n,), generator=g).to(device)) % 10, y)
    m = min(n, 32)
    eps = args.eps / 255 if args.eps else calibrate_eps(net, x[:m], y[:m], precision, args.batch, args.target_robust)
    aa_n = min(n, args.aa_n if model == "small_cnn" else args.aa_n_resnet)
    return bench_model(f"{model} cifar-shaped", net, x, y, eps, args, device, precision, aa_n, 10)


def digits_row(args, device, precision) -> dict:
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.data import load_dataset, to_float
    from dpnp_ray.distributed import LocalEnvironment
    from dpnp_ray.training_loop import train

    data = load_dataset("digits")
    cfg = ExperimentConfig.from_dict(dict(dataset="digits", epochs=4, lr=0.05, batch_size=64, train_attack_steps=5,
                                          val_attack_steps=5, device=device.type))
    net = train(cfg, env=LocalEnvironment(device), data=data, log=None).net.eval()
    x, y = to_float(data.test.images.to(device)), data.test.labels.to(device)
    return bench_model("small_cnn digits (Adv-DPNP, 4 ep)", net, x, y, cfg.eval_eps, args, device, precision,
                       min(len(x), args.aa_n), data.info.num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=256, help="points for small_cnn")
    parser.add_argument("--n-resnet", type=int, default=16, help="points for resnet18")
    parser.add_argument("--aa-n", type=int, default=64, help="AutoAttack points for small_cnn and digits")
    parser.add_argument("--aa-n-resnet", type=int, default=4, help="AutoAttack points for resnet18")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eps", type=float, default=0.0, help="eps in /255 units for the synthetic rows")
    parser.add_argument("--target-robust", type=float, default=0.5, help="PGD accuracy the eps is calibrated to")
    parser.add_argument("--clean-acc", type=float, default=0.85, help="clean accuracy of the synthetic rows")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs of plain and early PGD")
    parser.add_argument("--models", default="small_cnn,resnet18")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device, precision = setup(args.threads, args.device, args.precision)
    rows = [synthetic_row(m, args, device, precision) for m in args.models.split(",") if m]
    if not args.no_digits:
        rows.append(digits_row(args, device, precision))
    where = machine(device)
    print(f"eval throughput: PGD-{args.steps} ({precision.name}) and AutoAttack apgd (fp32), on {where['device']} "
          f"({where.get('gpu', where['cpu_model'])}, {where['cpus_usable']} usable CPUs, {where['torch_threads']} "
          f"torch threads, load {where['load_average_1m']:.1f})")
    print(table(rows, [("model", "model", ""), ("n", "n", "d"), ("eps_255", "eps*255", ".2f"),
                       ("plain_img_s", "PGD img/s", ".1f"), ("early_img_s", "early img/s", ".1f"),
                       ("early_speedup", "speedup", ".2f"), ("early_speedup_cpu_time", "CPU-time speedup", ".2f"),
                       ("clean", "clean acc", ".3f"), ("plain_acc", "PGD acc", ".3f"),
                       ("early_acc", "early acc", ".3f"), ("aa_n", "AA n", "d"), ("aa_img_s", "AA img/s", ".2f"),
                       ("aa_acc", "AA acc", ".3f")]))
    out = write_json("eval_throughput", {"args": vars(args), "machine": where, "rows": rows}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
