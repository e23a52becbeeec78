"""The fast path computes the same function as the plain path: memory format, device-resident
batches, bf16 autocast, no host syncs in the attack and the step, and early-exit evaluation PGD."""

import contextlib

import pytest
import torch
from torch.utils.data import DataLoader

from dpnp_ray.attacks import _input_grad, ATTACK_LOSSES, eval_mode, pgd
from dpnp_ray.config import ExperimentConfig
from dpnp_ray.data import Split
from dpnp_ray.distributed import LocalEnvironment
from dpnp_ray.evaluate import correct_counts, pgd_attack
from dpnp_ray.steps import DualBranchForward
from dpnp_ray.models import build_model
from dpnp_ray.devices import DeviceLoader, Precision, configure_backend
from dpnp_ray.steps import PROTOTYPE_DETACH, method_loss, train_step
from dpnp_ray import training_loop as train_module

CPU = torch.device("cpu")
FP32 = Precision.choose("fp32", CPU)


def small_net(backbone: str = "small_cnn", prototypes: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(backbone=backbone, num_classes=4, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                       prototype_head=prototypes, prototype_radius=2.0)


def cfg_of(**kw) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"dataset": "digits", **kw})


# ------------------------------------------------------------------------------ channels_last
# The training loop uses channels_last on CUDA only (training_loop.py). What a memory format can change
# is the order of the additions inside each convolution, so: in fp64 both formats give the same numbers
# up to fp64 rounding, on any device; at the precision training runs in, each format's error from the
# exact (fp64) result is rounding error of that precision. Tolerances follow from unit roundoffs, not
# from one machine's kernels (oneDNN's channels_last fp32 convolutions, for one, differ by CPU model).

FP64_LAYOUT_TOLERANCE = 1e-10
"""fp64 rounding (u = 1.1e-16) amplified as much as these nets amplify fp32 rounding (resnet18 on 2x2 maps:
~1e5 x u) stays below 1e-11 (measured: 2e-14); a real difference between the formats (a wrong stride or
permutation) is O(1)."""

ROUNDING_MODEL_FACTOR = 8
"""An fp32/bf16 result may differ from fp64 by up to this many times the first-order effect of rounding
every parameter, input and layer output to that precision (`rounding_sensitivity`); the factor covers the
rounding inside each convolution's sums, which the perturbation model leaves out (measured for small_cnn:
1.2-2.3x in fp32 on CPUs, 0.2-1x in bf16 and fp32/TF32 on an H100)."""


def loss_and_gradients(backbone: str, channels_last: bool, dtype: torch.dtype, device: torch.device = CPU,
                       autocast: torch.dtype | None = None, perturb: float = 0.0, seed: int = 0):
    """[the Adv-DPNP training loss, the gradient of all parameters (one vector), the attack's input gradient],
    as fp64 on the CPU. perturb > 0: every parameter, input and layer output x becomes x (1 + perturb s),
    s = +-1 at random (seeded): the first-order model of rounding to a format of unit roundoff `perturb`."""
    cfg = cfg_of()
    g = torch.Generator().manual_seed(0)
    x, x_adv = torch.rand(6, 3, 12, 12, generator=g), torch.rand(6, 3, 12, 12, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1], device=device)
    net = small_net(backbone).to(dtype)
    signs = torch.Generator().manual_seed(1000 + seed)

    def rounded(t: torch.Tensor) -> torch.Tensor:
        s = 2 * torch.randint(0, 2, t.shape, generator=signs, dtype=t.dtype) - 1
        return t * (1 + perturb * s.to(t.device))

    if perturb:
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(rounded(p))
        x, x_adv = rounded(x), rounded(x_adv)
        for module in net.modules():
            if not list(module.children()):
                module.register_forward_hook(lambda m, i, out: rounded(out) if isinstance(out, torch.Tensor) else out)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=fmt)
    if channels_last:
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=fmt)  # the comparison is not vacuous
    x, x_adv = (t.to(device=device, dtype=dtype).contiguous(memory_format=fmt) for t in (x, x_adv))
    cast = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    dc, da = PROTOTYPE_DETACH[cfg.prototype_update]
    with cast:
        loss, _ = method_loss(DualBranchForward(net)(x, x_adv, detach_clean=dc, detach_adv=da), y, cfg)
    loss.backward()
    with eval_mode(net), cast:
        input_grad, _, _ = _input_grad(net, x_adv, y, ATTACK_LOSSES.get("ce"), None)
    gradient = torch.cat([p.grad.flatten().double() for p in net.parameters()])
    return [t.detach().double().cpu() for t in (loss, gradient, input_grad)]


def relative_errors(approx, exact) -> list[float]:
    """Norm-wise relative error of each of [loss, parameter gradient, input gradient]. Norm-wise over all
    parameters: gradients that are zero in exact arithmetic (a bias before a BatchNorm) have no relative error."""
    return [float((a - e).norm() / e.norm().clamp_min(1e-300)) for a, e in zip(approx, exact)]


def rounding_sensitivity(backbone: str, unit: float, samples: int = 3) -> list[float]:
    """Per tensor, the largest relative change of the fp64 results under `samples` draws of the rounding
    model at unit roundoff `unit` (see loss_and_gradients)."""
    exact = loss_and_gradients(backbone, False, torch.float64)
    draws = [relative_errors(loss_and_gradients(backbone, False, torch.float64, perturb=unit, seed=s), exact)
             for s in range(samples)]
    return [max(column) for column in zip(*draws)]


LAYOUT_DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", LAYOUT_DEVICES, ids=str)
@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_channels_last_computes_the_same_function(backbone, device):
    plain = loss_and_gradients(backbone, False, torch.float64, device)
    fast = loss_and_gradients(backbone, True, torch.float64, device)
    errors = relative_errors(fast, plain)
    assert max(errors) <= FP64_LAYOUT_TOLERANCE, errors


def unit_roundoff(precision: Precision) -> float:
    """The unit roundoff of the arithmetic a precision runs CUDA convolutions in: bf16 (8-bit significand),
    TF32 (11-bit) where cuDNN allows it for fp32, else fp32 (24-bit)."""
    if precision.dtype is torch.bfloat16:
        return 2.0 ** -9
    if precision.dtype is torch.float16:
        return 2.0 ** -11
    return 2.0 ** -11 if torch.backends.cudnn.allow_tf32 else 2.0 ** -24


@pytest.mark.skipif(not torch.cuda.is_available(), reason="channels_last is used on CUDA only (training_loop.py)")
@pytest.mark.parametrize("precision_name", ["auto", "fp32"])
def test_channels_last_error_at_training_precision_is_rounding_error(precision_name, monkeypatch):
    """small_cnn (well conditioned: its fp32 error is 1-2x the rounding model's) on CUDA, with the backend
    settings training uses, in the precision the loop picks (auto: bf16 autocast) and in fp32."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    configure_backend(cuda)
    precision = Precision.choose(precision_name, cuda)
    exact = loss_and_gradients("small_cnn", False, torch.float64)
    # losses.py computes the loss terms in fp32 in every precision: one fp32 rounding is always possible.
    sensitivity = rounding_sensitivity("small_cnn", unit_roundoff(precision))
    bound = [ROUNDING_MODEL_FACTOR * max(s, 2.0 ** -24) for s in sensitivity]
    for channels_last in (False, True):
        got = loss_and_gradients("small_cnn", channels_last, torch.float32, cuda, autocast=precision.dtype)
        errors = relative_errors(got, exact)
        assert all(e <= b for e, b in zip(errors, bound)), (channels_last, errors, bound)


# ---------------------------------------------------------------------- device-resident batches


def batches(loader, epochs):
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out


@pytest.mark.parametrize("world_size,batch_size", [(1, 16), (2, 16), (3, 7), (3, 64)])
def test_device_loader_yields_the_distributed_sampler_batches(world_size, batch_size, monkeypatch):
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (103, 3, 4, 4), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (103,), generator=g))
    cfg = cfg_of(batch_size=batch_size, seed=5)
    epochs = [0, 1, 2]
    for rank in range(world_size):
        env = LocalEnvironment(CPU, rank, world_size)
        host = train_module.train_loader(split, cfg, env)
        assert isinstance(host, DataLoader)  # on the CPU nothing changes
        monkeypatch.setattr(train_module, "fits_on_device", lambda nbytes, device: True)
        resident = train_module.train_loader(split, cfg, env)
        monkeypatch.undo()
        assert isinstance(resident, DeviceLoader) and len(resident) == len(host)
        expected, got = batches(host, epochs), batches(resident, epochs)
        assert [len(e) for e in got] == [len(e) for e in expected] and len(expected[0]) > 0
        for e_epoch, g_epoch in zip(expected, got):
            for (xe, ye), (xg, yg) in zip(e_epoch, g_epoch):
                assert xg.dtype == torch.uint8 and torch.equal(xe, xg) and torch.equal(ye, yg)
        assert not torch.equal(got[0][0][1], got[1][0][1]), "set_epoch reshuffles"


# ------------------------------------------------------------------------------------ precision


def test_precision_choose_semantics(monkeypatch):
    cpu_auto = Precision.choose("auto", CPU)
    assert cpu_auto.name == "fp32" and cpu_auto.grad_scaler() is None
    bf16 = Precision.choose("bf16", CPU)
    assert bf16.dtype is torch.bfloat16 and bf16.device_type == "cpu" and bf16.grad_scaler() is None
    with bf16.autocast():
        assert torch.nn.Linear(4, 2)(torch.rand(3, 4)).dtype is torch.bfloat16
    assert Precision.choose("fp16", CPU).grad_scaler() is not None  # fp16 needs loss scaling
    for supported, name in [(True, "bf16"), (False, "fp16")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
        assert Precision.choose("auto", torch.device("cuda")).name == name
    with pytest.raises(KeyError):
        Precision.choose("int8", CPU)


def test_bf16_autocast_accuracy_within_noise_of_fp32(trained_digits, digits):
    net = trained_digits.train.net
    env = LocalEnvironment(CPU)
    bf16 = Precision.choose("bf16", CPU)
    clean32, n = correct_counts(net, digits.test, None, env=env, batch_size=500, precision=FP32)
    clean16, _ = correct_counts(net, digits.test, None, env=env, batch_size=500, precision=bf16)
    assert abs(clean32 - clean16) / n <= 0.02, (clean32, clean16, n)
    sub = Split(digits.test.images[:200], digits.test.labels[:200])
    eps = trained_digits.config.eval_eps
    rob32, m = correct_counts(net, sub, pgd_attack(eps, eps / 4, 5, FP32), env=env, batch_size=200, precision=FP32)
    rob16, _ = correct_counts(net, sub, pgd_attack(eps, eps / 4, 5, bf16), env=env, batch_size=200, precision=bf16)
    assert abs(rob32 - rob16) / m <= 0.05, (rob32, rob16, m)


def test_configure_backend_sets_cudnn_benchmark_only_for_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backend(CPU)
    assert torch.backends.cudnn.benchmark is False
    configure_backend(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


# ------------------------------------------------------------------------------ no host syncs


class HostSync(AssertionError):
    pass


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """Every way a tensor's value reaches Python raises. On a GPU each of these blocks the host
    until the device catches up; on the CPU they are the structural proxy for it."""
    def forbid(name):
        def raiser(*args, **kwargs):
            raise HostSync(f"host sync: Tensor.{name} called")
        return raiser

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__",
                     "__index__"):
            m.setattr(torch.Tensor, name, forbid(name))
        m.setattr(torch, "nonzero", forbid("torch.nonzero"))
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else CPU


#: on the CPU only the structural guard can fire; on a GPU, CUDA's sync debug mode may fire first
SYNC_ERRORS = (HostSync, RuntimeError) if torch.cuda.is_available() else HostSync


def test_the_guard_catches_a_host_sync(monkeypatch):
    class Syncing(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :4] * float(x.sum())  # a hidden .item()

    x, y = torch.rand(4, 3, 4, 4, device=device()), torch.tensor([0, 1, 2, 3], device=device())
    with no_host_sync(monkeypatch), pytest.raises(SYNC_ERRORS):
        pgd(Syncing(), x, y, eps=0.1, step_size=0.05, steps=1)
    net = small_net().to(device()).eval()
    with no_host_sync(monkeypatch), pytest.raises(SYNC_ERRORS):
        pgd(net, x, y, eps=0.1, step_size=0.05, steps=4, early_stop=True)  # compaction syncs, by design


@pytest.mark.parametrize("restarts", [1, 2])
def test_pgd_steps_never_sync_with_the_host(restarts, monkeypatch):
    net = small_net().to(device()).eval()
    g = torch.Generator(device=device()).manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, device=device()), torch.randint(0, 4, (8,), device=device())
    for loss in ("ce", "cw"):
        with no_host_sync(monkeypatch):
            x_adv = pgd(net, x, y, eps=0.1, step_size=0.03, steps=3, loss=loss, restarts=restarts, generator=g)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("method", ["adv_dpnp", "pgd_at", "trades", "mart"])
def test_train_step_never_syncs_with_the_host(method, monkeypatch):
    cfg = cfg_of(method=method, train_attack_steps=2)
    net = small_net(prototypes=cfg.uses_prototypes).to(device())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.rand(8, 3, 8, 8, device=device()), torch.randint(0, 4, (8,), device=device())
    g = torch.Generator(device=device()).manual_seed(0)
    for _ in range(2):  # the second step runs with momentum buffers in place
        with no_host_sync(monkeypatch):
            stats = train_step(DualBranchForward(net), net, x, y, cfg, eps=0.1, optimizer=opt, precision=FP32,
                               generator=g)
    assert torch.isfinite(stats["loss_total"])


def test_the_per_batch_path_of_the_loop_never_syncs_with_the_host(monkeypatch):
    """What train() does per batch on a GPU: a DeviceLoader batch, to_float, crop+flip, train_step.
    (The sampler's order is computed once per epoch, when the first batch is requested.)"""
    from torch.utils.data import RandomSampler

    from dpnp_ray.data import augment, to_float

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (24,), generator=g)
    loader = DeviceLoader(images, labels, sampler=RandomSampler(range(24), generator=g), batch_size=8,
                          drop_last=True, device=device())
    cfg = cfg_of(train_attack_steps=2)
    net = small_net().to(device())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    augment_gen, attack_gen = (torch.Generator(device=device()).manual_seed(s) for s in (1, 2))
    batches = iter(loader)
    first = next(batches)
    with no_host_sync(monkeypatch):
        for xb, yb in [first, *batches]:
            x = augment(to_float(xb), "crop_flip", augment_gen)
            train_step(DualBranchForward(net), net, x, yb, cfg, eps=0.1, optimizer=opt, precision=FP32,
                       generator=attack_gen)


# ------------------------------------------------------------------------------ early exit


def count_images(net):
    seen = []
    handle = net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen, handle


@pytest.mark.parametrize("restarts,loss", [(1, "ce"), (2, "ce"), (1, "cw")])
def test_early_exit_is_never_weaker_and_does_fewer_forwards(trained_digits, digits, restarts, loss):
    net = trained_digits.train.net
    eps = 2 * trained_digits.config.eval_eps  # twice the threat model: about half the points break
    x, y = digits.test.images[:300].float(), digits.test.labels[:300]
    x = x / 255 if x.max() > 1 else x
    outcome = {}
    for early in (False, True):
        seen, handle = count_images(net)
        with eval_mode(net):
            x_adv = pgd(net, x, y, eps=eps, step_size=eps / 4, steps=10, loss=loss, restarts=restarts,
                        generator=torch.Generator().manual_seed(3), early_stop=early)
            handle.remove()
            with torch.no_grad():
                robust = net(x_adv).argmax(1) == y
        assert float((x_adv - x).abs().max()) <= eps + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
        outcome[early] = (robust, sum(seen))
    (plain, plain_images), (early, early_images) = outcome[False], outcome[True]
    assert int(early.sum()) <= int(plain.sum())
    assert not (early & ~plain).any(), "a point plain PGD breaks is broken by early exit too"
    assert int(plain.sum()) < 0.95 * len(y) and int(plain.sum()) > 0.2 * len(y)  # a regime where it matters
    print(f"\n[early exit] robust {int(plain.sum())} -> {int(early.sum())} of {len(y)}; "
          f"images forwarded {plain_images} -> {early_images}")
    assert early_images < 0.8 * plain_images, (early_images, plain_images)


def test_evaluation_uses_early_exit_and_training_does_not(trained_digits, digits, monkeypatch):
    net = trained_digits.train.net
    env = LocalEnvironment(CPU)
    eps = trained_digits.config.eval_eps
    sub = Split(digits.test.images[:200], digits.test.labels[:200])
    early, n = correct_counts(net, sub, pgd_attack(eps, eps / 4, 10, FP32), env=env, batch_size=100, precision=FP32)
    plain, _ = correct_counts(net, sub, pgd_attack(eps, eps / 4, 10, FP32, early_stop=False), env=env,
                              batch_size=100, precision=FP32)
    assert early <= plain

    import dpnp_ray.steps as step_module

    calls = []
    real = step_module.pgd

    def recording_pgd(*args, **kwargs):
        calls.append(kwargs.get("early_stop", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "pgd", recording_pgd)
    cfg = cfg_of(train_attack_steps=2)
    net = small_net()
    train_step(DualBranchForward(net), net, torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), cfg, eps=0.1,
               optimizer=torch.optim.SGD(net.parameters(), lr=0.1), precision=FP32)
    assert calls == [False], "the training attack is the paper's plain PGD"
