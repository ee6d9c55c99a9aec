"""Optimizer, learning-rate schedule, precision and EMA choices."""
from __future__ import annotations

import copy
import functools
import math

import torch

from .config import TrainConfig
from .machine_cache import cpu_bf16_units


def build_optimizer(config: TrainConfig, model: torch.nn.Module, fused: bool = True) -> torch.optim.Optimizer:
    """SGD and AdamW run torch's fused kernels on CPUs and GPUs: one kernel over all parameters instead of torch's
    per-parameter loop, which a CPU otherwise runs. On a CPU fused SGD gives the default implementation's bits
    (tests/test_training.py); fused AdamW agrees with it to float rounding.
    `fused=False`: torch's default implementation, as the papers' code runs it (the benches' reference)."""
    # By default no weight decay on BN parameters and biases (modern ResNet recipes); the papers' code decays
    # every parameter, and their presets set --decay-norm-and-bias. Frozen parameters stay out.
    trained = [p for p in model.parameters() if p.requires_grad]
    if config.decay_norm_and_bias:
        groups = [{"params": trained, "weight_decay": config.weight_decay}]
    else:
        decay = [p for p in trained if p.ndim > 1]
        no_decay = [p for p in trained if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer_impl == "apex":
        if config.optimizer != "sgd":
            raise ValueError(f"--optimizer-impl apex provides SGD only, not --optimizer {config.optimizer}")
        try:
            from apex.optimizers import FusedSGD  # NVIDIA apex, optional; never the PyPI package of that name
        except ImportError:
            raise ValueError("--optimizer-impl apex needs NVIDIA apex built from source; it is not importable") from None
        return FusedSGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer_impl != "torch":
        raise ValueError(f"unknown optimizer implementation {config.optimizer_impl!r}; valid: torch, apex")
    if config.optimizer == "lars":  # the contrastive recipes: biases, norms and ViT tokens neither adapted nor decayed
        from .lars import LARS, lars_groups

        return LARS(lars_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum,
                    eta=config.lars_eta)
    if config.optimizer == "adamw":  # MoCo v3's ViTs; --momentum is not used (β = 0.9, 0.999)
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
    if config.optimizer == "adam":  # Deep InfoMax's; L2 decay added to the gradient, as SGD's
        return torch.optim.Adam(groups, lr=config.lr, fused=fused or None)
    if config.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: sgd, lars, adamw, adam")
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                           fused=fused or None)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    if step < config.warmup_iterations:
        return (step + 1) / config.warmup_iterations
    if config.schedule == "cosine":
        progress = (step - config.warmup_iterations) / max(1, total_steps - config.warmup_iterations)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    passed = sum(step >= round(fraction * total_steps) for fraction in config.lr_milestones)
    return config.lr_gamma ** passed


def build_scheduler(config: TrainConfig, optimizer, total_steps: int):
    """The schedule as a table of every step's factor, computed once (a step looks its factor up: no code of
    this project runs per step, and the same table serves a device-side schedule)."""
    if config.schedule not in ("cosine", "multistep"):
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: cosine, multistep")
    factors = FactorTable((step, lr_factor(step, total_steps, config)) for step in range(total_steps + 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factors] * len(optimizer.param_groups))


class FactorTable(dict):
    """Step → learning-rate factor, a lookup LambdaLR calls (its state_dict saves the empty __dict__); past the
    last step (a benchmark that keeps stepping) the last factor holds."""
    __call__ = dict.__getitem__

    def __missing__(self, step: int) -> float:
        return self[len(self) - 1]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: oneDNN then runs bf16 convolutions and matmuls faster than fp32 (`python -m
    train.commands.bench step` prints the measured rates of both)."""
    return bool(cpu_bf16_units())


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    """auto: bf16 autocast where the hardware computes bf16 natively (GPUs with bf16, CPUs with
    AVX512-BF16 or AMX), fp32 elsewhere; emulated bf16 would be slower than fp32."""
    precision = config.precision
    if precision == "auto":
        bf16_ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
        precision = "bf16" if bf16_ok else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}; valid: auto, fp32, bf16, fp16")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the one map


def autocast_context(precision: str, device: torch.device):
    """What makes the step's autocast context, each call a fresh one (the one way a run makes it): torch.autocast
    itself, disabled in fp32, so that entering it runs no code of this project. No cast cache: a CUDA graph's
    capture needs it off, and a step casts each weight once anyway."""
    return functools.partial(torch.autocast, device.type, dtype=PRECISION_DTYPES[precision],
                             enabled=precision != "fp32", cache_enabled=False)


def autocast(precision: str, device: torch.device):
    """One autocast context for `precision` on `device` (`autocast_context(precision, device)()`)."""
    return autocast_context(precision, device)()


def build_scaler(precision: str, device: torch.device):
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


class WeightEma(torch.nn.Module):
    """`--ema-decay`: an exponential moving average of a model's parameters and buffers, evaluated in its place.
    The first update copies the model, each later one computes θ_ema ← decay·θ_ema + (1 − decay)·θ: what torch's
    AveragedModel computes with get_ema_multi_avg_fn, with the same state dict. Written here because
    AveragedModel keeps its update count on the host, reads it and copies it to the device on every update (a
    host sync per step on a GPU); here the count stays on the device and a host flag says whether to copy."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.register_buffer("n_averaged", torch.zeros((), dtype=torch.long,
                                                       device=next(model.parameters()).device))
        self.started = False  # whether n_averaged > 0, known on the host

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [tensor.detach() for tensor in (*model.parameters(), *model.buffers())]
        if not self.started:
            torch._foreach_copy_(averaged, current)
            self.started = True
        else:
            floating = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], 1 - self.decay)
            for a, c in zip(averaged, current):  # integer buffers (BatchNorm's batch count), as AveragedModel
                if not a.is_floating_point():
                    a.copy_(a * self.decay + c * (1 - self.decay))
        self.n_averaged += 1

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict, assign)
        self.started = bool(self.n_averaged > 0)  # once, at resume
        return result


def build_ema(config: TrainConfig, model: torch.nn.Module) -> WeightEma | None:
    return WeightEma(model, config.ema_decay) if config.ema_decay > 0 else None
