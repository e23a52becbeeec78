"""Adv-DPNP training throughput on a GPU: fp32 vs bf16 vs bf16 + channels_last vs + torch.compile.

    python bench/gpu.py                              # ResNet-18, CIFAR-10-shaped, batch 512, PGD-10
    python bench/gpu.py --peak-tflops 989 --iters 30
    python bench/gpu.py --dry-run-cpu                # exercise the code on the CPU (tiny); NOT GPU numbers

Each variant builds a fresh ResNet-18 Adv-DPNP model and runs what train() runs per step: a batch
gathered from a device-resident uint8 split (DeviceLoader, --n-data images), crop+flip augmentation
on the device, channels_last where asked, then dpnp_ray.steps.train_step (PGD-k attack, clean and
adversarial branch, one backward, SGD). Warm-up steps (cudnn.benchmark, compilation) are timed
separately; then --iters steps are timed as one block between two synchronisations.

FLOP model (docs/evaluation.md#cost-model): a ResNet-18 forward is 1.11 GFLOP per 32x32 image; an
attack step is 2 forward-equivalents (forward + input backward), a training forward+backward 3, and
Adv-DPNP trains on both branches, so a step costs (2k + 6) forward-equivalents per image
(28.9 GFLOP at k = 10). Achieved TFLOP/s = images/s x (2k + 6) x 1.11 GFLOP; the fraction is of the
device's dense bf16 matrix-unit peak (looked up by device name, or --peak-tflops), for every row.
Without a CUDA device this script says so and exits 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import sys
import time

from measure import machine, table, write_json

import torch

GFLOP_PER_FORWARD = 1.11  # ResNet-18, one 32x32 image (docs/evaluation.md#cost-model)
#: dense bf16 tensor-core peak in TFLOP/s by device-name fragment (first match wins; vendor data sheets)
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
]
VARIANTS = {  # name -> (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}


def peak_for(name: str) -> float | None:
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment in name:
            return tflops
    return None


def run_variant(name: str, args, device: torch.device) -> dict:
    from dpnp_ray.config import ExperimentConfig
    from dpnp_ray.data import augment, to_float
    from dpnp_ray.devices import DeviceLoader, Precision
    from dpnp_ray.steps import DualBranchForward, train_step
    from dpnp_ray.models import build_model
    from torch.utils.data import RandomSampler

    precision_name, channels_last, compiled = VARIANTS[name]
    precision = Precision.choose(precision_name, device)
    cfg = ExperimentConfig.from_dict(dict(dataset="cifar10", model=args.model, method="adv_dpnp",
                                          train_attack_steps=args.steps, batch_size=args.batch))
    torch.manual_seed(0)
    net = build_model(backbone=args.model, num_classes=10, in_channels=3, mean=(0.49, 0.48, 0.45),
                      std=(0.25, 0.24, 0.26), prototype_head=True).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compiled:
        net.backbone = torch.compile(net.backbone)
    forward = DualBranchForward(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = precision.grad_scaler()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n_data, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.n_data,), generator=g)
    loader = DeviceLoader(images, labels, sampler=RandomSampler(range(args.n_data), generator=g),
                          batch_size=args.batch, drop_last=True, device=device)
    attack_gen = torch.Generator(device=device).manual_seed(1)
    augment_gen = torch.Generator(device=device).manual_seed(2)
    batches = iter(())

    def step():
        nonlocal batches
        try:
            xb, yb = next(batches)
        except StopIteration:
            batches = iter(loader)
            xb, yb = next(batches)
        x = augment(to_float(xb), "crop_flip", augment_gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net.train()
        return train_step(forward, net, x, yb, cfg, eps=8 / 255, optimizer=optimizer, precision=precision,
                          generator=attack_gen, scaler=scaler)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.iters):
        stats = step()
    sync()
    seconds = (time.perf_counter() - started) / args.iters
    finite = bool(torch.isfinite(stats["loss_total"]))
    img_s = args.batch / seconds
    forwards = 2 * args.steps + 6
    tflops = img_s * forwards * GFLOP_PER_FORWARD / 1000
    return {"variant": name, "precision": precision.name, "channels_last": channels_last, "compile": compiled,
            "step_ms": 1000 * seconds, "img_s": img_s, "epoch_s_50k": 50_000 / img_s, "tflops": tflops,
            "peak_fraction": tflops / args.peak_tflops if args.peak_tflops else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "warmup_s": warmup_s, "loss_finite": finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps k")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant (compilation included)")
    parser.add_argument("--n-data", type=int, default=50_000, help="images in the device-resident split")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense bf16 matrix-unit peak of the device (default: looked up by its name)")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run the code path on the CPU with tiny settings; prints NO GPU numbers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from dpnp_ray.devices import configure_backend

    if args.dry_run_cpu:
        device = torch.device("cpu")
        args.batch, args.steps, args.iters, args.warmup, args.n_data = 8, 1, 1, 1, 64
        args.variants = ",".join(v for v in args.variants.split(",") if not VARIANTS[v][2])
        print("CPU DRY RUN (--dry-run-cpu): checks that the code runs; the numbers below are NOT GPU numbers "
              "and are not written anywhere.")
    elif not torch.cuda.is_available():
        print("No CUDA device: torch.cuda.is_available() is False on this machine, so no GPU numbers were "
              "measured. Run bench/gpu.py on a machine with an NVIDIA GPU.")
        return
    else:
        device = torch.device("cuda")
    configure_backend(device)
    where = machine(device)
    if device.type == "cuda" and not args.peak_tflops:
        args.peak_tflops = peak_for(where["gpu"]) or 0.0
    rows = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(run_variant(name, args, device))
        print(f"  {name}: {rows[-1]['img_s']:.1f} img/s", flush=True)
    k = args.steps
    print(f"Adv-DPNP PGD-{k} training step, {args.model}, batch {args.batch}, on {where.get('gpu', 'CPU (dry run)')}; "
          f"FLOP model (2k+6) x {GFLOP_PER_FORWARD} GFLOP = {(2 * k + 6) * GFLOP_PER_FORWARD:.1f} GFLOP/image; "
          f"peak {args.peak_tflops or 'unknown (pass --peak-tflops)'} TFLOP/s dense bf16")
    print(table(rows, [("variant", "variant", ""), ("step_ms", "ms/step", ".1f"), ("img_s", "img/s", ".1f"),
                       ("epoch_s_50k", "epoch 50k s", ".1f"), ("tflops", "TFLOP/s", ".1f"),
                       ("peak_fraction", "of peak", ".3f"), ("peak_mem_gib", "peak GiB", ".2f"),
                       ("warmup_s", "warm-up s", ".1f")]))
    if args.dry_run_cpu:
        return
    out = write_json("gpu", {"args": vars(args), "machine": where, "flop_model": {
        "gflop_per_forward": GFLOP_PER_FORWARD, "forwards_per_step": 2 * k + 6}, "rows": rows}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
