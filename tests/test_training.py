"""Each method trains a tiny model on digits: the loss falls and the accuracies beat chance."""
import json

import pytest
import torch

import kernels
from train.main import train
from train.methods import METHODS, build_method


def read_records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# test_hsakd_training.py (kd too), test_maxl.py, test_contrastive.py (dim too), test_swav.py
OWN_TESTS = ("hsakd", "kd", "maxl", "simclr", "moco", "byol", "linear", "dim", "swav")


@pytest.mark.parametrize("method", sorted(name for name in METHODS if not name.startswith(OWN_TESTS)))
def test_method_trains_and_reports_its_scores(method, tiny_config, tmp_path):
    epochs = 6 if method in ("sla", "sla_sd") else 4  # sla's joint head needs more steps than the others
    summary = train(tiny_config(method=method, epochs=epochs, run_name=method))
    run_dir = tmp_path / "runs" / method
    steps = read_records(run_dir, "step")
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"], (steps[0]["loss"], steps[-1]["loss"])
    bound = build_method(tiny_config(method=method))
    bound.build_model("resnet8", 10, __import__("kernels").get_family(bound.transform_family), torch.device("cpu"),
                      channels_last=True)
    assert set(summary["test"]) - {"images"} == set(bound.score_names()) and bound.primary_score in summary["test"]
    assert len(summary["test_per_class"]) == 10
    if method in ("sla", "sla_sd"):
        assert summary["test"]["AG"] > 60.0  # chance is 10%
    else:
        assert summary["test"]["SI"] > 25.0
    manifest = json.loads((run_dir / "config.json").read_text())
    assert manifest["method"] == method and (run_dir / "git_revision.txt").exists()
    assert manifest["flip"] is False and manifest["test_split"] == "fixed"  # --flip auto: digits mirror nothing
    assert (run_dir / "command.txt").exists() and (run_dir / "last.pt").exists()
    assert {"images_per_s", "data_time_s", "compute_time_s", "lr"} <= set(steps[0])
    if method == "sla_sd":
        assert {"sla", "distill", "sd_ce"} <= set(steps[0])


UNIT_ROUNDOFF = 2.0**-24  # fp32


def test_numba_kernels_and_torch_composite_give_the_same_loss_curve(tiny_config, tmp_path, monkeypatch):
    """Along one fp32 training trajectory of sla_sd (the composite's updates), the Numba CPU kernels give, at every
    step, the composite's loss, loss parts and gradient with respect to both heads' logits, from the same logits,
    to fp32 rounding. Two separately trained curves are not compared: training amplifies last-bit differences
    (6.8e-4 apart after 5 steps on a Zen 3, where Numba vectorises without AVX-512), so no rounding argument
    bounds them; the weights' gradients follow from the logits' by the same autograd code on both sides.

    The bound: each loss is a sum of at most K + R rounded terms (K = N·M logits in a row's log-sum-exp, R = B·M
    rows in the mean), each carrying at most one unit roundoff u of its magnitude, so two summation orders
    differ by at most (K + R)·u of the summed magnitudes (≤ max(1, |loss|) for these non-negative, O(1) terms).
    A logit's gradient (softmax − one-hot, scaled by 1/R, 1/B or T/B) has relative error at most (K + 8)·u in its
    softmax, so two implementations differ by at most (K + 8)·u·(max|gradient| + 1/B) per element."""
    from train.methods.sla import SLASelfDistillation

    compute_losses = SLASelfDistillation.losses
    steps = []

    def both_backends(self, outputs, labels):
        losses = compute_losses(self, outputs, labels)
        if torch.is_grad_enabled():  # a training step; evaluation asks for class scores only
            heads = (outputs["joint"], outputs["sd"])
            composite_kernels, self.loss_kernels = self.loss_kernels, kernels.for_device("cpu", labels.device)
            numba_losses = compute_losses(self, outputs, labels)
            self.loss_kernels = composite_kernels
            steps.append(dict(
                losses={k: (float(v.detach()), float(numba_losses[k].detach())) for k, v in losses.items()},
                gradients=list(zip(torch.autograd.grad(losses["loss"], heads, retain_graph=True),
                                   torch.autograd.grad(numba_losses["loss"], heads, retain_graph=True))),
                rows=len(labels) * self.num_transforms, classes=heads[0].shape[1], batch=len(labels)))
        return losses

    monkeypatch.setattr(SLASelfDistillation, "losses", both_backends)
    train(tiny_config(method="sla_sd", epochs=2, samples_per_class=30, log_every=1, kernels="torch",
                      precision="fp32", run_name="both"))
    assert len(steps) > 5
    for index, step in enumerate(steps):
        terms = step["classes"] + step["rows"]
        for name, (composite, numba) in step["losses"].items():
            assert abs(composite - numba) <= terms * UNIT_ROUNDOFF * max(1.0, abs(composite)), (index, name)
        for composite, numba in step["gradients"]:
            bound = (step["classes"] + 8) * UNIT_ROUNDOFF * (composite.abs().max() + 1.0 / step["batch"])
            assert (composite - numba).abs().max() <= bound, (index, float((composite - numba).abs().max()),
                                                             float(bound))
    curve = [r["loss"] for r in read_records(tmp_path / "runs" / "both", "step")]
    assert curve[-1] < curve[0]  # the trajectory trains


@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_training_runs_on_every_loader_within_the_host_sync_budget(loader, monkeypatch, tmp_path):
    """The loss falls on every loader, and three steady steps between log steps (0-based 5..7; logs at 4 and 9)
    make no host sync and at most one fresh host tensor each (tests/test_host_syncs.py's budget)."""
    from test_host_syncs import counted_steps

    counter, summary = counted_steps(monkeypatch, tmp_path, first=5, last=7, method="sla", loader=loader, epochs=4,
                                     batch_size=64, samples_per_class=0, log_every=5, eval_batch_size=256, lr=0.1,
                                     schedule="cosine", warmup_iterations=0, run_name=loader)
    assert counter.syncs == 0 and counter.fresh <= 3, dict(counter.counts)
    steps = read_records(tmp_path / "runs" / loader, "step")
    assert summary["completed"] and summary["steps"] == 4 * (1293 // 64)
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"], (steps[0]["loss"], steps[-1]["loss"])


def test_auto_precision_follows_the_cpus_native_bf16():
    """`auto` is bf16 exactly where /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (Linux) and oneDNN may use it."""
    import pathlib

    import torch

    from train import machine_cache
    from train.config import TrainConfig
    from train.optim import cpu_has_native_bf16, resolve_precision

    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set(cpuinfo.read_text().split())
    uncapped = machine_cache.onednn_allows("avx512_bf16")  # ONEDNN_MAX_CPU_ISA below it: emulated, as on Zen 3
    assert cpu_has_native_bf16() == (bool({"avx512_bf16", "amx_bf16"} & flags) and uncapped)
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision(TrainConfig(precision="auto"), torch.device("cpu")) == expected
    assert resolve_precision(TrainConfig(precision="fp32"), torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("decay_norm_and_bias", [False, True])
def test_weight_decay_reaches_norm_and_bias_only_when_asked(decay_norm_and_bias):
    from models.registry import build_backbone
    from train.config import PRESETS, TrainConfig
    from train.optim import build_optimizer

    model = build_backbone("resnet8")
    model.stem[0].weight.requires_grad_(False)  # frozen parameters stay out either way
    config = TrainConfig(weight_decay=1e-3, decay_norm_and_bias=decay_norm_and_bias)
    optimizer = build_optimizer(config, model)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(decay_of) == len(trained) == sum(1 for _ in model.parameters()) - 1
    for parameter in trained:
        expected = 1e-3 if decay_norm_and_bias or parameter.ndim > 1 else 0.0
        assert decay_of[id(parameter)] == expected
    assert all(preset["decay_norm_and_bias"] for name, preset in PRESETS.items() if name.startswith("sla-"))


@pytest.mark.parametrize("optimizer_name, nesterov", [("sgd", False), ("sgd", True), ("adamw", False)])
def test_fused_optimizers_are_the_default_and_sgd_keeps_the_default_implementations_bits(optimizer_name, nesterov):
    """Fused kernels by default on a CPU too; SGD's give the same bits as torch's default implementation
    (the papers' code, the benches' reference), so figures recorded before the switch still reproduce;
    AdamW's agree to float rounding."""
    import torch

    from models.registry import build_backbone
    from train.config import TrainConfig
    from train.optim import build_optimizer

    config = TrainConfig(optimizer=optimizer_name, nesterov=nesterov, lr=0.05, weight_decay=1e-3)
    weights = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_backbone("resnet8")
        optimizer = build_optimizer(config, model, fused=fused)
        assert optimizer.defaults["fused"] is (True if fused else None)
        gradients = torch.Generator().manual_seed(1)
        for _ in range(4):
            for parameter in model.parameters():
                parameter.grad = torch.randn(parameter.shape, generator=gradients)
            optimizer.step()
        weights[fused] = [p.detach().clone() for p in model.parameters()]
    for fused_weight, default_weight in zip(weights[True], weights[False]):
        if optimizer_name == "sgd":
            assert torch.equal(fused_weight, default_weight)
        else:
            torch.testing.assert_close(fused_weight, default_weight, rtol=1e-6, atol=1e-7)


def test_progress_lines_average_every_step_of_their_interval_across_epochs(tiny_config, tmp_path):
    settings = dict(method="baseline", epochs=2, samples_per_class=20, batch_size=32, precision="fp32")  # 6 steps/epoch
    train(tiny_config(run_name="every", log_every=1, **settings))
    train(tiny_config(run_name="fours", log_every=4, **settings))
    every = {r["step"]: r["loss"] for r in read_records(tmp_path / "runs" / "every", "step")}
    fours = read_records(tmp_path / "runs" / "fours", "step")
    assert [r["step"] for r in fours] == [4, 8, 12]  # the interval 5–8 spans the two epochs
    for record in fours:
        steps = range(record["step"] - 3, record["step"] + 1)
        assert abs(record["loss"] - sum(every[s] for s in steps) / 4) < 1e-4, record
