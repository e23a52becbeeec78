"""Cost of one adversarial training step: ours (Adv-DPNP, PGD-AT) against a plain reference PGD-AT.

    python bench/step_cost.py                                  # small_cnn, CIFAR-shaped, CPU
    python bench/step_cost.py --shape digits --batch 128
    python bench/step_cost.py --model resnet18 --device cuda --batch 512 --precision bf16

reference   torchattacks.PGD (eps, alpha, k, random start; it puts the model in eval mode for the
            attack) + cross-entropy + SGD on the same backbone with a softmax linear head: PGD-AT
            "written the plain way".
pgd_at      dpnp_ray.steps.train_step, method=pgd_at (same model, same k).
adv_dpnp    dpnp_ray.steps.train_step, method=adv_dpnp (prototype head, clean + adversarial branch).

All three see the same batch, k and precision; they run alternately (the order rotates every
repeat), after one warm-up step each. The table gives medians of wall time and, on the CPU, of
the process's CPU time, the steadier measure on a shared machine (targets are judged on it there).
Cost model (docs/evaluation.md#cost-model): PGD-AT = 2k+3 forward-equivalents, Adv-DPNP = 2k+6, so
Adv-DPNP / PGD-AT >= (2k+6)/(2k+3) (1.13 at k=10). Targets: pgd_at / reference <= 1.0, adv_dpnp / reference <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from measure import machine, measure, median, setup, spread, table, write_json

import torch
import torch.nn.functional as F

from dpnp_ray.config import ExperimentConfig
from dpnp_ray.steps import DualBranchForward
from dpnp_ray.models import build_model
from dpnp_ray.devices import Precision
from dpnp_ray.steps import train_step

SHAPES = {"cifar": (3, 32, 32), "digits": (1, 8, 8)}
EPS, ALPHA = 8 / 255, 2 / 255


def make_net(model: str, shape, prototypes: bool, device, channels_last: bool):
    torch.manual_seed(0)
    net = build_model(backbone=model, num_classes=10, in_channels=shape[0], mean=(0.5,) * shape[0],
                      std=(0.25,) * shape[0], prototype_head=prototypes).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def optimizer_of(net):
    return torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def reference_step(args, shape, device, precision: Precision, channels_last: bool):
    import torchattacks

    net = make_net(args.model, shape, False, device, channels_last)
    attack = torchattacks.PGD(net, eps=EPS, alpha=ALPHA, steps=args.steps, random_start=True)
    opt = optimizer_of(net)

    def step(x, y):
        net.train()
        with precision.autocast():
            x_adv = attack(x, y)
            loss = F.cross_entropy(net(x_adv).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def our_step(method: str, args, shape, device, precision: Precision, channels_last: bool):
    cfg = ExperimentConfig.from_dict(dict(dataset="digits", method=method, eps=EPS, eval_eps=EPS,
                                          train_attack_steps=args.steps, train_attack_step_size=ALPHA))
    net = make_net(args.model, shape, cfg.uses_prototypes, device, channels_last)
    forward, opt = DualBranchForward(net), optimizer_of(net)
    generator = torch.Generator(device=device).manual_seed(0)
    scaler = precision.grad_scaler()

    def step(x, y):
        net.train()
        train_step(forward, net, x, y, cfg, eps=EPS, optimizer=opt, precision=precision, generator=generator,
                   scaler=scaler)

    return step


def cpu_step_memory(name: str) -> float:
    """Peak RSS growth of one step of `name`, measured in a process of its own that runs only that
    variant, with glibc returning every block of 128 KiB or more to the OS on free (a fixed
    MALLOC_MMAP_THRESHOLD_), so the resident set follows the live tensors instead of the cache."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory-probe", name], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--shape", choices=SHAPES, default="cifar")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps k")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and batches")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="output path (default bench/runs/step_cost.json)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one variant's memory
    args = parser.parse_args()
    device, precision = setup(args.threads, args.device, args.precision)
    shape = SHAPES[args.shape]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    makers = {
        "reference": lambda: reference_step(args, shape, device, precision, args.channels_last),
        "pgd_at": lambda: our_step("pgd_at", args, shape, device, precision, args.channels_last),
        "adv_dpnp": lambda: our_step("adv_dpnp", args, shape, device, precision, args.channels_last),
    }
    if args.memory_probe:
        fn = makers[args.memory_probe]()
        measure(lambda: fn(x, y), device)
        print(json.dumps({"peak_mib": measure(lambda: fn(x, y), device)[2]}))
        return
    steps = {name: make() for name, make in makers.items()}
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    memory = {name: [] for name in steps}
    for name, fn in steps.items():  # warm-up: allocator, kernel selection, cudnn.benchmark
        measure(lambda: fn(x, y), device)
    names = list(steps)
    for r in range(args.repeats):
        for name in names[r % 3:] + names[:r % 3]:
            seconds, cpu_seconds, mib = measure(lambda: steps[name](x, y), device)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
            memory[name].append(mib)

    k = args.steps
    forwards = {"reference": 2 * k + 3, "pgd_at": 2 * k + 3, "adv_dpnp": 2 * k + 6}
    on_cpu = device.type == "cpu"
    rows = []
    for name in names:
        med = median(wall[name])
        rows.append({"variant": name, "ms": 1000 * med, "spread": 100 * spread(wall[name]), "img_s": args.batch / med,
                     "ratio": med / median(wall["reference"]),
                     "cpu_ms": 1000 * median(cpu[name]) if on_cpu else None,
                     "cpu_ratio": median(cpu[name]) / median(cpu["reference"]) if on_cpu else None,
                     "model_ratio": forwards[name] / forwards["reference"], "fwd_equiv": forwards[name],
                     "peak_mib": cpu_step_memory(name) if on_cpu else max(memory[name]),
                     "memory_kind": "peak RSS growth (own process)" if on_cpu else "cuda max_memory_allocated growth"})
    targets = {"pgd_at": 1.0, "adv_dpnp": 1.2}
    for row in rows:
        row["target"] = targets.get(row["variant"])
        judged = row["cpu_ratio"] if on_cpu else row["ratio"]
        row["meets_target"] = None if row["target"] is None else judged <= row["target"]
    where = machine(device)
    print(f"step cost: {args.model}, {args.shape} {shape}, batch {args.batch}, PGD-{k}, {precision.name}"
          f"{', channels_last' if args.channels_last else ''}, {args.repeats} repeats, on {where['device']} "
          f"({where.get('gpu', where['cpu_model'])}, {where['cpus_usable']} usable CPUs, {where['torch_threads']} "
          f"torch threads, load {where['load_average_1m']:.1f})")
    print(table(rows, [("variant", "variant", ""), ("ms", "wall ms", ".1f"), ("spread", "+-%", ".0f"),
                       ("img_s", "img/s", ".1f"), ("ratio", "wall / ref", ".3f"), ("cpu_ms", "CPU ms", ".1f"),
                       ("cpu_ratio", "CPU / ref", ".3f"), ("model_ratio", "cost model", ".3f"),
                       ("target", "target", ".2f"), ("peak_mib", "peak MiB", ".1f")]))
    basis = cpu if on_cpu else wall
    print(f"Adv-DPNP / our PGD-AT: {median(basis['adv_dpnp']) / median(basis['pgd_at']):.3f} "
          f"({'CPU' if on_cpu else 'wall'} time; algorithmic floor (2k+6)/(2k+3) = {(2 * k + 6) / (2 * k + 3):.3f}). "
          f"Medians over {args.repeats} alternating repeats; peak MiB = {rows[0]['memory_kind']} during a step.")
    out = write_json("step_cost", {"args": vars(args), "machine": where, "precision": precision.name,
                                   "rows": rows, "wall_seconds": wall, "cpu_seconds": cpu}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
