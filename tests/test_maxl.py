"""MAXL: the mask softmax, focal loss and entropy against float64 transcriptions of docs/methods.md, the
meta-gradient against finite differences, BatchNorm untouched by the look-ahead, and digits runs."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from train.main import train
from train.methods.maxl_losses import ClassBlocks, focal_loss, mask_log_softmax, mask_softmax, negative_entropy
from train.methods.maxl_meta import MetaSettings, first_order_surrogate, forward_mode_objective, second_order_objective

PSI = [3, 1, 4, 2, 5]  # awkward blocks: K = 15 over N = 5 classes


def reference_mask_softmax(logits, labels, psi):
    """Per row, a softmax over the class's block only, in float64 with numpy (max over the block)."""
    starts = np.cumsum([0] + psi)
    out = np.zeros(logits.shape)
    for row, y in enumerate(labels):
        block = logits[row, starts[y]:starts[y + 1]].astype(np.float64)
        exp = np.exp(block - block.max())
        out[row, starts[y]:starts[y + 1]] = exp / exp.sum()
    return out


def test_mask_softmax_is_exactly_zero_outside_the_block_and_matches_float64():
    torch.manual_seed(1)
    blocks = ClassBlocks(PSI)
    logits = torch.randn(7, blocks.num_aux, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 2, 0])
    probs = mask_softmax(logits, labels, blocks)
    expected = reference_mask_softmax(logits.numpy(), labels.numpy(), PSI)
    assert np.allclose(probs.numpy(), expected, rtol=1e-12, atol=1e-15)
    assert torch.all(probs[~blocks.mask(labels)] == 0)  # exactly zero, not 1e-8
    assert torch.allclose(probs.sum(1), torch.ones(7, dtype=torch.float64), atol=1e-12)


def test_mask_softmax_survives_huge_logits_in_float32():
    blocks = ClassBlocks(PSI)
    logits = torch.full((5, blocks.num_aux), -1e4)
    logits[:, ::2] = 1e4
    logits.requires_grad_()
    labels = torch.arange(5)
    probs = mask_softmax(logits, labels, blocks)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(1), torch.ones(5))
    (probs * torch.randn_like(probs)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[~blocks.mask(labels)] == 0)


def test_mask_softmax_gradient_matches_the_float64_reference():
    torch.manual_seed(2)
    blocks = ClassBlocks(PSI)
    labels = torch.tensor([4, 0, 3, 1, 2, 4])
    logits = torch.randn(6, blocks.num_aux, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, blocks.num_aux, dtype=torch.float64)
    (mask_softmax(logits, labels, blocks) * weights).sum().backward()
    # d/dz_j Σ_k w_k p_k = p_j (w_j − Σ_k w_k p_k) inside the block, 0 outside
    p = torch.from_numpy(reference_mask_softmax(logits.detach().numpy(), labels.numpy(), PSI))
    expected = p * (weights - (weights * p).sum(1, keepdim=True))
    assert torch.allclose(logits.grad, expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: mask_log_softmax(z, labels, blocks).exp(), (logits.detach().requires_grad_(),))


def reference_focal(logits, targets, gamma):
    p = torch.softmax(logits.double(), dim=1)
    if targets.dtype == torch.int64:
        targets = torch.nn.functional.one_hot(targets, logits.shape[1]).double()
    return (-(targets * (1 - p) ** gamma * torch.log(p)).sum(1)).mean()


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
@pytest.mark.parametrize("soft", [False, True])
def test_focal_loss_matches_the_float64_formula(gamma, soft):
    torch.manual_seed(3)
    logits = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.softmax(torch.randn(9, 7, dtype=torch.float64), 1) if soft else torch.randint(0, 7, (9,))
    ours = focal_loss(logits, targets, gamma)
    reference = reference_focal(logits, targets, gamma)
    assert torch.allclose(ours, reference, rtol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(g_ours, g_ref, rtol=1e-10, atol=1e-13)
    if gamma == 0 and not soft:
        assert torch.allclose(ours, torch.nn.functional.cross_entropy(logits, targets))


def test_negative_entropy_of_the_batch_mean_label():
    blocks = ClassBlocks(PSI)
    labels = torch.tensor([0, 0, 2])  # blocks 1, 3 and 4 unseen: their ȳ is 0
    logits = torch.randn(3, blocks.num_aux, dtype=torch.float64, requires_grad=True)
    probs = mask_softmax(logits, labels, blocks)
    value = negative_entropy(probs)
    mean = probs.detach().mean(0)
    kept = mean[mean > 0]
    assert torch.allclose(value, (kept * kept.log()).sum())
    value.backward()
    assert torch.isfinite(logits.grad).all()


class TinyLearner(nn.Module):
    """Linear → BatchNorm → tanh backbone with the two heads: small enough for finite differences."""

    def __init__(self, inputs, classes, aux, batch_norm=True):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(inputs, 6), nn.BatchNorm1d(6) if batch_norm else nn.Identity(),
                                      nn.Tanh())
        self.primary = nn.Linear(6, classes)
        self.auxiliary = nn.Linear(6, aux)

    def forward(self, x):
        features = self.backbone(x)
        return {"primary": self.primary(features), "auxiliary": self.auxiliary(features)}


def tiny_problem(seed=4, batch_norm=True):
    torch.manual_seed(seed)
    blocks = ClassBlocks([2, 3, 1])
    learner = TinyLearner(5, 3, blocks.num_aux, batch_norm).double()
    generator = nn.Linear(5, blocks.num_aux).double()
    images = torch.randn(11, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 1, 1, 0, 2, 0])
    settings = MetaSettings(lr=0.3, gamma=2.0, entropy_weight=0.2, blocks=blocks)
    return learner, generator, images, labels, settings


def objective_of(generator_weight, generator_bias, learner, images, labels, settings):
    logits = torch.nn.functional.linear(images, generator_weight, generator_bias)
    return second_order_objective(learner, logits, images, labels, settings)[0]


@pytest.mark.parametrize("exact", [second_order_objective, forward_mode_objective])
def test_second_order_meta_gradient_equals_finite_differences(exact):
    """Both exact ways (the double backward and the forward-mode JVP) against finite differences of the
    objective L_pri(θ1⁺) + λH itself."""
    learner, generator, images, labels, settings = tiny_problem()
    weight, bias = (p.detach().clone().requires_grad_() for p in (generator.weight, generator.bias))
    logits = torch.nn.functional.linear(images, weight, bias)
    analytic = torch.autograd.grad(exact(learner, logits, images, labels, settings)[0], (weight, bias))
    h = 1e-6
    for tensor, grad in zip((weight, bias), analytic):
        numeric = torch.zeros_like(tensor)
        for index in np.ndindex(*tensor.shape):
            plus, minus = tensor.detach().clone(), tensor.detach().clone()
            plus[index] += h
            minus[index] -= h
            fixed_w, fixed_b = weight.detach(), bias.detach()
            f_plus = objective_of(*((plus, fixed_b) if tensor is weight else (fixed_w, plus)), learner, images,
                                  labels, settings)
            f_minus = objective_of(*((minus, fixed_b) if tensor is weight else (fixed_w, minus)), learner, images,
                                   labels, settings)
            numeric[index] = (f_plus - f_minus).item() / (2 * h)
        assert torch.allclose(grad, numeric, rtol=1e-6, atol=1e-9), (grad, numeric)
    if exact is second_order_objective:  # the forward-mode surrogate's value is not the objective
        assert torch.autograd.gradcheck(lambda w, b: objective_of(w, b, learner, images, labels, settings),
                                        (weight, bias))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_forward_mode_meta_gradient_equals_the_double_backward(batch_norm):
    learner, generator, images, labels, settings = tiny_problem(seed=9, batch_norm=batch_norm)
    graph = generator_gradient(second_order_objective, learner, generator, images, labels, settings)
    forward = generator_gradient(forward_mode_objective, learner, generator, images, labels, settings)
    assert graph.abs().max() > 1e-4
    torch.testing.assert_close(forward, graph, rtol=1e-10, atol=1e-13)


def test_the_look_ahead_leaves_batch_norm_running_statistics_alone():
    learner, generator, images, labels, settings = tiny_problem()
    before = copy.deepcopy(dict(learner.named_buffers()))
    for objective in (second_order_objective, forward_mode_objective, first_order_surrogate):
        value, _ = objective(learner, generator(images), images, labels, settings)
        value.backward()
    for name, buffer in learner.named_buffers():
        assert torch.equal(buffer, before[name]), name


def generator_gradient(objective, learner, generator, images, labels, settings):
    generator.zero_grad()
    value, _ = objective(learner, generator(images), images, labels, settings)
    value.backward()
    return torch.cat([p.grad.flatten() for p in generator.parameters()])


def test_first_order_keeps_the_entropy_gradient():
    learner, generator, images, labels, settings = tiny_problem()
    no_step = MetaSettings(lr=0.0, gamma=settings.gamma, entropy_weight=settings.entropy_weight, blocks=settings.blocks)
    first = generator_gradient(first_order_surrogate, learner, generator, images, labels, no_step)
    generator.zero_grad()
    (settings.entropy_weight * negative_entropy(mask_softmax(generator(images), labels, settings.blocks))).backward()
    entropy_only = torch.cat([p.grad.flatten() for p in generator.parameters()])
    assert entropy_only.abs().max() > 1e-3  # the term is there to lose
    assert torch.allclose(first, entropy_only, atol=1e-12)


def test_first_order_is_close_to_second_order_on_a_tiny_model():
    """Central differences with ε = 0.01/‖v‖: within 1e-4 relative of the exact meta-gradient here."""
    learner, generator, images, labels, settings = tiny_problem(batch_norm=False)
    second = generator_gradient(second_order_objective, learner, generator, images, labels, settings)
    first = generator_gradient(first_order_surrogate, learner, generator, images, labels, settings)
    assert torch.linalg.vector_norm(first - second) <= 1e-4 * torch.linalg.vector_norm(second)


def read_records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


GROUPS = "0,2,4,6,8/1,3,5,7,9"  # odd and even digits: 2 primary classes, the digits as human labels


@pytest.mark.parametrize("method,extra", [
    ("maxl", dict(aux_per_class="3")),
    ("maxl", dict(aux_per_class="2,4,1,3,2,2,3,1,2,3", maxl_interleave=True, maxl_order="first",
                  log_grad_similarity=True)),
    ("maxl_human", dict(primary_labels=GROUPS, log_grad_similarity=True)),
])
def test_maxl_trains_logs_checkpoints_and_resumes_exactly(tiny_config, tmp_path, method, extra):
    settings = dict(method=method, epochs=2, samples_per_class=24, batch_size=48, lr=0.05, log_every=2, **extra)
    straight = train(tiny_config(run_name="straight", **settings))
    paused = train(tiny_config(run_name="resumed", stop_after_epochs=1, **settings))
    assert paused["completed"] is False and paused["step"] == straight["steps"] // 2
    resumed = train(tiny_config(run_name="x", resume=str(tmp_path / "runs" / "resumed" / "last.pt"), **settings))
    a = torch.load(tmp_path / "runs" / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "resumed" / "last.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    if method == "maxl":
        for name, tensor in a["method_state"]["generator"].items():
            assert torch.equal(tensor, b["method_state"]["generator"][name]), name
        assert a["method_state"]["generator_scheduler"] == b["method_state"]["generator_scheduler"]
    assert resumed["test"] == straight["test"]
    steps = read_records(tmp_path / "runs" / "straight", "step")
    names = set().union(*steps)
    assert {"primary", "auxiliary"} <= names
    if method == "maxl":
        assert {"label_entropy", "meta_primary"} <= names and "aux_agreement" in straight["test"]
        assert all(0 < r["label_entropy"] <= np.log(30) + 1e-6 for r in steps if "label_entropy" in r)
    if extra.get("log_grad_similarity"):
        assert all(-1 <= r["grad_cosine"] <= 1 for r in steps if "grad_cosine" in r)
        from train.commands import report

        figures = {path.name for path in report.render(tmp_path / "runs" / "straight")}
        assert {"loss.png", "grad_similarity.png"} <= figures
    expected_classes = 2 if method == "maxl_human" else 10
    assert len(straight["test_per_class"]) == expected_classes


def test_random_auxiliary_labels_are_fixed_per_seed_and_stay_in_each_images_block(tiny_config):
    """maxl_random: one label per training image, uniform over its primary class's ψ labels (its human labels'
    count), the same for the same seed, not the human labels."""
    from pipeline.datasets import build_splits
    from train.methods import build_method

    def labels(method, seed):
        bound = build_method(tiny_config(method=method, primary_labels=GROUPS, seed=seed))
        bound.see_data(build_splits("digits", "unused", 16, 0.1, seed=0, primary_labels=GROUPS))
        return bound.fine_labels, bound.blocks

    human, blocks = labels("maxl_human", 0)
    random, _ = labels("maxl_random", 0)
    splits = build_splits("digits", "unused", 16, 0.1, seed=0, primary_labels=GROUPS)
    assert torch.equal(blocks.class_of(random), torch.as_tensor(splits.train.labels))  # in the image's block
    assert torch.equal(random, labels("maxl_random", 0)[0]) and not torch.equal(random, labels("maxl_random", 1)[0])
    assert (random == human).double().mean() < 0.4  # 1 in 5 by chance; the human labels agree with themselves
    counts = torch.bincount(random, minlength=blocks.num_aux).double()
    primary_counts = torch.bincount(torch.as_tensor(splits.train.labels)).double()
    owner = blocks.class_of(torch.arange(blocks.num_aux))
    expected = primary_counts[owner] / blocks.sizes[owner]  # binomial(n_c, 1/ψ_c): about 129 ± 10 here
    sigma = (expected * (1 - 1 / blocks.sizes[owner].double())).sqrt()
    assert ((counts - expected).abs() < 4 * sigma).all(), (counts, expected)  # 4σ: 10 labels, p ≈ 6e-4


def test_maxl_beats_its_initialisation_on_digits(tiny_config):
    # 5 epochs: at 3, fp32 (the precision of CPUs without native bf16) was still near 20% on digits
    summary = train(tiny_config(method="maxl", epochs=5, run_name="maxl-learns"))
    assert summary["test"]["SI"] > 25.0  # chance is 10%


@pytest.mark.parametrize("overrides,message", [
    (dict(method="maxl", aux_per_class="5,5"), "lists 2 values but the data has 10"),
    (dict(method="maxl", aux_per_class="0"), "ψ_c ≥ 1"),
    (dict(method="maxl", transforms="color_perm"), "--transforms none"),
    (dict(method="maxl", maxl_order="third"), "unknown --maxl-order"),
    (dict(method="maxl", maxl_meta_gradient="reverse"), "unknown --maxl-meta-gradient"),
    (dict(method="maxl_human"), "needs fine labels"),
    (dict(method="maxl_human", primary_labels="0,1/2,3"), "exactly one non-empty group"),
    (dict(method="maxl", primary_labels="coarse"), "only CIFAR-100"),
    (dict(method="maxl", precision="fp16"), "maxl refuses --precision fp16"),
])
def test_maxl_refuses_bad_settings_in_one_line(tiny_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(**overrides))


def test_vgg16_is_the_papers_network():
    from models import build_backbone
    from models.maxl import MaxlLearner

    backbone = build_backbone("vgg16")
    # VGG-16's 13 convolutions (14,714,688 weights and biases) plus their BatchNorm scales and shifts (8,448)
    assert sum(p.numel() for p in backbone.parameters()) == 14_714_688 + 8_448
    learner = MaxlLearner(backbone, 20, 100).eval()
    outputs = learner(torch.zeros(2, 3, 32, 32))
    assert outputs["primary"].shape == (2, 20) and outputs["auxiliary"].shape == (2, 100)
    assert backbone.stage_outputs(torch.zeros(1, 3, 32, 32))[-1].shape[-1] == 2  # a pool after every group: 2×2, then 1×1


def test_the_maxl_presets_carry_the_papers_recipe():
    from train.config import resolve_config

    for preset, method in (("maxl-cifar100-vgg16", "maxl"), ("maxl-human-cifar100-vgg16", "maxl_human")):
        config = resolve_config({"preset": preset})
        assert (config.method, config.model, config.primary_labels, config.batch_size, config.epochs) == (
            method, "vgg16", "coarse", 100, 200)
        assert (config.lr, config.generator_lr, config.generator_weight_decay, config.lr_gamma) == (0.01, 1e-3, 5e-4, 0.5)


def test_coarse_primary_labels_group_cifar100_classes_into_blocks():
    from pipeline.datasets import DatasetSplits, ImageSet
    from pipeline.label_groups import group_primary_labels

    rng = np.random.default_rng(5)
    fine = np.arange(100).repeat(2)
    coarse = rng.permutation(np.arange(20).repeat(5))[fine]  # each superclass owns 5 classes
    full = ImageSet(np.zeros((200, 2, 2, 3), np.uint8), fine, 100, [f"c{i}" for i in range(100)],
                    coarse_labels=coarse, coarse_names=tuple(f"s{i}" for i in range(20)))
    splits = group_primary_labels(DatasetSplits(full, full.subset(np.arange(10)), full, (0.5,) * 3, (0.2,) * 3),
                                  "coarse", full)
    assert splits.num_classes == 20 and splits.group_sizes == (5,) * 20
    assert np.array_equal(splits.train.labels, coarse)
    blocks = ClassBlocks(splits.group_sizes)
    assert torch.equal(blocks.class_of(torch.as_tensor(splits.train.fine_labels)), torch.as_tensor(coarse))
    assert np.array_equal(splits.val.labels, coarse[:10]) and len(np.unique(splits.train.fine_labels)) == 100


@pytest.mark.distributed
def test_maxl_trains_under_torchrun_with_two_processes(quick_torchrun_verdicts, two_rank_runs_directory):
    assert quick_torchrun_verdicts["runs"]["maxl"] == [0, 0]  # tests/two_rank_runs.py's "maxl"
    run_dir = two_rank_runs_directory / "maxl"
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert any("meta_primary" in r for r in steps) and any("primary" in r for r in steps)
    summary = next(r for r in records if r["kind"] == "summary")
    assert summary["completed"] and "aux_agreement" in summary["test"]
    state = torch.load(run_dir / "last.pt", weights_only=True)["method_state"]
    assert all(torch.isfinite(t).all() for t in state["generator"].values() if t.is_floating_point())


def test_forward_mode_meta_gradient_under_bf16_autocast_stays_close_to_float64():
    """The trainer's default path on a CPU (channels_last, bf16 autocast, the JVP under autocast) against
    the double backward in float64 on a small ResNet."""
    from models import build_backbone
    from models.maxl import LabelGenerator, MaxlLearner

    torch.manual_seed(2)
    blocks = ClassBlocks([2, 3, 2])
    learner = MaxlLearner(build_backbone("resnet8"), 3, blocks.num_aux)
    generator = LabelGenerator(build_backbone("resnet8"), blocks.num_aux)
    images = torch.randn(12, 3, 12, 12)
    labels = torch.tensor([0, 1, 2] * 4)
    settings = MetaSettings(lr=0.1, gamma=2.0, entropy_weight=0.2, blocks=blocks)

    def meta_gradient(objective, dtype, autocast):
        model, labeller = copy.deepcopy(learner).to(dtype), copy.deepcopy(generator).to(dtype)
        views = images.to(dtype)
        if autocast:
            model, views = model.to(memory_format=torch.channels_last), views.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value, _ = objective(model, labeller(views), views, labels, settings)
        return torch.cat([g.flatten().double() for g in torch.autograd.grad(value, list(labeller.parameters()))])

    reference = meta_gradient(second_order_objective, torch.float64, False)
    fp32 = meta_gradient(forward_mode_objective, torch.float32, False)
    bf16 = meta_gradient(forward_mode_objective, torch.float32, True)
    cosine = torch.nn.functional.cosine_similarity
    assert torch.linalg.vector_norm(fp32 - reference) < 1e-4 * torch.linalg.vector_norm(reference)
    assert cosine(bf16, reference, dim=0) > 0.98, cosine(bf16, reference, dim=0)
