"""Every kernel backend against float64 references on fresh random inputs of awkward shapes.

Under NUMBA_ENABLE_CUDASIM=1 (tests/test_kernels_simulator.py runs this module that way) the
`cuda` backend runs in Numba's simulator at small sizes; on a machine with a GPU it runs for real.
"""
import itertools
import os
import sys

import pytest
import torch

import kernels

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if SIMULATOR:
    BACKENDS = ["cuda"]
    SHAPES = [(1, 1, 1), (3, 3, 2), (1, 5, 3), (1, 3, 6)]
elif torch.cuda.is_available():
    BACKENDS = ["torch", "cpu", "cuda"]
    SHAPES = list(itertools.product((1, 3, 33), (1, 3, 10, 100), (1, 2, 3, 4, 6, 24)))
else:
    BACKENDS = ["torch", "cpu"]
    SHAPES = list(itertools.product((1, 3, 33), (1, 3, 10, 100), (1, 2, 3, 4, 6, 24)))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOLERANCE = dict(rtol=2e-5, atol=2e-6)


def device_for(backend):
    return torch.device("cuda" if backend == "cuda" and not SIMULATOR else "cpu")


def reference_joint_ce(logits64, labels, num_transforms):
    """Per-row −log softmax(L[r])[y·M + j], written directly in float64."""
    rows = logits64.shape[0]
    targets = torch.tensor([int(labels[r // num_transforms]) * num_transforms + r % num_transforms
                            for r in range(rows)], dtype=torch.long)
    return torch.logsumexp(logits64, dim=1) - logits64[torch.arange(rows), targets]


def reference_aggregate(logits64, num_transforms):
    rows, columns = logits64.shape
    batch, classes = rows // num_transforms, columns // num_transforms
    out = torch.zeros(batch, classes, dtype=torch.float64)
    for j in range(num_transforms):
        out += logits64[j::num_transforms, j::num_transforms]
    return out / num_transforms


def reference_kl(student64, teacher64, temperature):
    log_p = torch.log_softmax(teacher64 / temperature, dim=1)
    log_q = torch.log_softmax(student64 / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * temperature**2


def random_logits(rows, columns, scale=3.0, seed=None):
    # Fresh per call, drawn from the global stream that conftest seeds per test: a failure reproduces.
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ())))
    return torch.randn(rows, columns, generator=generator, dtype=torch.float64) * scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,classes,num_transforms", SHAPES)
def test_joint_cross_entropy_forward_and_gradient(backend, batch, classes, num_transforms):
    device = device_for(backend)
    logits64 = random_logits(batch * num_transforms, classes * num_transforms)
    labels = torch.randint(0, classes, (batch,))
    logits = logits64.float().to(device).requires_grad_()
    loss = kernels.joint_cross_entropy(logits, labels.to(device), num_transforms, backend=backend)
    upstream = torch.rand(()) + 0.5
    (loss * upstream).backward()
    reference_input = logits64.float().double().requires_grad_()
    expected = reference_joint_ce(reference_input, labels, num_transforms).mean()
    (expected * upstream.double()).backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double().cpu(), expected.detach(), **FP32_TOLERANCE)
    assert logits.grad.dtype == torch.float32
    torch.testing.assert_close(logits.grad.double().cpu(), reference_input.grad, **FP32_TOLERANCE)
    per_row = kernels.joint_cross_entropy(logits.detach(), labels.to(device), num_transforms, reduction="none",
                                          sum_over_transforms=True, backend=backend)
    torch.testing.assert_close(per_row.double().cpu(), num_transforms * reference_joint_ce(
        logits64.float().double(), labels, num_transforms), **FP32_TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,classes,num_transforms", SHAPES)
def test_aggregate_logits_forward_and_gradient(backend, batch, classes, num_transforms):
    device = device_for(backend)
    logits64 = random_logits(batch * num_transforms, classes * num_transforms)
    logits = logits64.float().to(device).requires_grad_()
    scores = kernels.aggregate_logits(logits, num_transforms, backend=backend)
    upstream = torch.randn(batch, classes, dtype=torch.float64)
    (scores * upstream.float().to(device)).sum().backward()
    reference_input = logits64.float().double().requires_grad_()
    expected = reference_aggregate(reference_input, num_transforms)
    (expected * upstream.float().double()).sum().backward()
    torch.testing.assert_close(scores.double().cpu(), expected.detach(), **FP32_TOLERANCE)
    torch.testing.assert_close(logits.grad.double().cpu(), reference_input.grad, **FP32_TOLERANCE)
    single = kernels.single_view_logits(logits.detach(), num_transforms)
    assert torch.equal(single.cpu(), logits.detach().cpu()[::num_transforms, ::num_transforms])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows,classes", [(1, 1), (3, 11)] if SIMULATOR else [(1, 1), (3, 7), (33, 10), (17, 100),
                                                                              (5, 2400)])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_distillation_kl_forward_and_gradient(backend, rows, classes, temperature):
    device = device_for(backend)
    student64, teacher64 = random_logits(rows, classes), random_logits(rows, classes)
    student = student64.float().to(device).requires_grad_()
    teacher = teacher64.float().to(device).requires_grad_()
    loss = kernels.distillation_kl(student, teacher, temperature=temperature, backend=backend)
    loss.backward()
    reference_student = student64.float().double().requires_grad_()
    expected = reference_kl(reference_student, teacher64.float().double(), temperature)
    expected.backward()
    torch.testing.assert_close(loss.double().cpu(), expected.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(student.grad.double().cpu(), reference_student.grad, **FP32_TOLERANCE)
    assert teacher.grad is None  # no gradient into the teacher


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in ("torch", "cuda")])
def test_float64_path_passes_gradcheck(backend):
    """The CPU kernels keep float64 end to end (gradcheck's default, float64-tight bounds)."""
    device = device_for(backend)
    tolerance = {}
    logits = random_logits(6, 9, scale=1.0).to(device).requires_grad_()
    labels = torch.tensor([0, 2]).to(device)
    check = torch.autograd.gradcheck
    assert check(lambda x: kernels.joint_cross_entropy(x, labels, 3, backend=backend), (logits,), **tolerance)
    assert check(lambda x: kernels.aggregate_logits(x, 3, backend=backend), (logits,), **tolerance)
    teacher = random_logits(6, 9).to(device)
    assert check(lambda x: kernels.distillation_kl(x, teacher, temperature=2.0, backend=backend), (logits,),
                 **tolerance)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_stay_finite(backend):
    device = device_for(backend)
    batch, classes, num_transforms = 3, 5, 4
    logits64 = random_logits(batch * num_transforms, classes * num_transforms).sign() * 1e4
    logits64[0, :] = 1e4  # a row of ties
    labels = torch.randint(0, classes, (batch,))
    logits = logits64.float().to(device).requires_grad_()
    loss = kernels.joint_cross_entropy(logits, labels.to(device), num_transforms, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    reference_input = logits64.clone().requires_grad_()
    expected = reference_joint_ce(reference_input, labels, num_transforms).mean()
    expected.backward()
    torch.testing.assert_close(loss.double().cpu(), expected.detach(), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(logits.grad.double().cpu(), reference_input.grad, rtol=1e-5, atol=1e-6)
    student = logits.detach().clone().requires_grad_()
    kl = kernels.distillation_kl(student, -logits.detach(), temperature=3.0, backend=backend)
    kl.backward()
    assert torch.isfinite(kl) and torch.isfinite(student.grad).all()


# Half-precision logits: arithmetic in fp32, loss in fp32, gradient in the input dtype (rounded once).
HALF_TOLERANCE = {torch.float16: dict(rtol=2e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(backend, dtype):
    device = device_for(backend)
    batch, classes, num_transforms = 3, 10, 4
    logits = random_logits(batch * num_transforms, classes * num_transforms).to(dtype).to(device).requires_grad_()
    labels = torch.randint(0, classes, (batch,))
    loss = kernels.joint_cross_entropy(logits, labels.to(device), num_transforms, backend=backend)
    loss.backward()
    reference_input = logits.detach().double().cpu().requires_grad_()
    expected = reference_joint_ce(reference_input, labels, num_transforms).mean()
    expected.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    torch.testing.assert_close(loss.double().cpu(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.double().cpu(), reference_input.grad, **HALF_TOLERANCE[dtype])
    scores = kernels.aggregate_logits(logits.detach(), num_transforms, backend=backend)
    torch.testing.assert_close(scores.double().cpu(), reference_aggregate(logits.detach().double().cpu(),
                                                                          num_transforms), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["rotation", "rot_color_perm6", "color_perm"] if SIMULATOR
                         else sorted(kernels.FAMILIES))
@pytest.mark.parametrize("channels_last", [True, False])
def test_expand_views_equals_the_direct_transforms(backend, family, channels_last):
    device = device_for(backend)
    batch, size = (1, 3) if SIMULATOR else (3, 7)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).to(device)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    views = kernels.expand_views(images, family, mean=mean, std=std, channels_last=channels_last, backend=backend)
    spec = kernels.get_family(family)
    scale, shift = kernels.reference.normalisation_affine(mean, std, "cpu")
    normalised = (images.cpu().float() * scale + shift).permute(0, 3, 1, 2)
    expected = torch.stack([torch.rot90(normalised, k, dims=(-2, -1))[:, list(order)]
                            for k, order in zip(spec.quarter_turns, spec.channel_orders)], dim=1)
    expected = expected.reshape(batch * spec.num_transforms, 3, size, size)
    if views.is_cuda:  # the device compiles x·scale + shift into one fused multiply-add: one rounding, not two
        torch.testing.assert_close(views.cpu(), expected, rtol=0, atol=1e-6)
    else:
        assert torch.equal(views.cpu(), expected)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert views.is_contiguous(memory_format=memory_format)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown kernel backend 'gpu'"):
        kernels.aggregate_logits(torch.zeros(4, 4), 2, backend="gpu")
    with pytest.raises(ValueError, match=r"not \[B·M, N·M\] for M=3"):
        kernels.aggregate_logits(torch.zeros(4, 6), 3)
    with pytest.raises(ValueError, match="same shape"):
        kernels.distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    if not SIMULATOR:
        for backend in ("cpu", "torch"):
            with pytest.raises(ValueError, match=r"label -1 is outside \[0, 2\)"):
                kernels.joint_cross_entropy(torch.zeros(4, 4), torch.tensor([0, -1]), 2, backend=backend)


@pytest.mark.skipif(not SIMULATOR and not torch.cuda.is_available(), reason="needs the CUDA kernels")
def test_cuda_flags_out_of_range_labels_without_corrupting_memory():
    from kernels import ops

    device = device_for("cuda")
    logits = torch.zeros(4, 6, device=device)
    labels = torch.tensor([1, 7], device=device)  # 7 is outside [0, 3)
    row_loss, _ = ops.joint_ce_forward(logits, labels, 2, "cuda")  # bypasses the host-side check
    assert torch.isnan(row_loss[2:]).all() and torch.isfinite(row_loss[:2]).all()
    if SIMULATOR:
        return  # the host-array flag of the simulator is per call; the device flag is for real GPUs
    with pytest.raises(ValueError, match="outside"):
        kernels.raise_pending_label_error()


@pytest.mark.skipif(SIMULATOR, reason="the CPU kernels' own helpers")
def test_float32_exp_is_within_a_few_ulp_of_float64():
    import numpy as np
    from numba import njit

    from kernels.cpu import exp_nonpositive

    @njit
    def exp_all(values, out):
        for k in range(values.shape[0]):
            out[k] = exp_nonpositive(values[k])

    rng = np.random.default_rng()
    values = np.concatenate([np.linspace(-87.0, 0.0, 200_001), -rng.exponential(10.0, 100_000), [0.0, -1e-30]])
    values = values.astype(np.float32)
    out = np.empty_like(values)
    exp_all(values, out)
    expected = np.exp(values.astype(np.float64))
    ulp = np.spacing(expected.astype(np.float32)).astype(np.float64)
    normal = expected > np.finfo(np.float32).tiny
    assert np.abs(out - expected)[normal].max() <= 2 * ulp[normal].max() and \
        (np.abs(out - expected)[normal] / ulp[normal]).max() <= 2.0
    assert (out[~normal] <= np.finfo(np.float32).tiny).all()  # below 2**-126: flushed towards 0
    extremes = np.array([-1e4, -np.inf, np.nan], dtype=np.float32)
    exp_all(extremes, out[:3])
    assert out[0] == 0.0 and out[1] == 0.0 and np.isnan(out[2])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "cuda"])
def test_nan_logits_give_a_nan_loss_as_in_torch(backend):
    logits = random_logits(6, 12, seed=3).float()
    logits[4, 5] = float("nan")
    loss = kernels.joint_cross_entropy(logits, torch.tensor([0, 1, 2]), 2, reduction="none", backend=backend)
    assert torch.isnan(loss[4]) and torch.isfinite(loss[torch.arange(6) != 4]).all()
    kl = kernels.distillation_kl(logits, torch.zeros_like(logits), backend=backend)
    assert torch.isnan(kl)


@pytest.mark.skipif(SIMULATOR, reason="graph capture of the CPU ops")
def test_compiled_step_keeps_the_custom_ops_in_its_graph():
    """torch.compile(fullgraph=True) fails on a graph break; the result and gradient equal eager."""
    logits = random_logits(12, 20, seed=5).float().requires_grad_()
    teacher = random_logits(3, 5, seed=6).float()
    labels = torch.tensor([1, 4, 0])

    def losses(x):
        aggregated = kernels.aggregate_logits(x, 4, backend="cpu")
        return (kernels.joint_cross_entropy(x, labels, 4, backend="cpu")
                + kernels.distillation_kl(aggregated, teacher, temperature=2.0, backend="cpu"))

    compiled = torch.compile(losses, backend="aot_eager", fullgraph=True)
    eager_loss = losses(logits)
    (eager_grad,) = torch.autograd.grad(eager_loss, logits)
    compiled_loss = compiled(logits)
    (compiled_grad,) = torch.autograd.grad(compiled_loss, logits)
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(compiled_grad, eager_grad)


@pytest.mark.skipif(SIMULATOR, reason="the registered CPU ops")
def test_registered_ops_pass_torch_opcheck():
    from kernels import ops

    logits = random_logits(6, 8, seed=7).float().requires_grad_()
    student = random_logits(6, 8, seed=8).float().requires_grad_()
    labels = torch.tensor([3, 0, 2])
    torch.library.opcheck(ops.joint_ce_forward, (logits, labels, 2, "cpu"))
    torch.library.opcheck(ops.aggregate_forward, (logits, 2, "cpu"))
    torch.library.opcheck(ops.kl_forward, (student, logits.detach(), 2.0, "cpu"))


@pytest.mark.skipif(SIMULATOR, reason="the CPU kernels' gradient-in-forward path")
def test_gradient_written_in_forward_survives_retained_graphs_and_scaling():
    """The CPU mean path writes the gradient during the forward; backward twice through a retained graph,
    a scaled loss and accumulation into a leaf must all give what the eager composite gives."""
    logits64 = random_logits(15, 12, seed=11)
    labels = torch.tensor([0, 2, 1, 2, 0])
    reference_input = logits64.clone().requires_grad_()
    (reference_joint_ce(reference_input, labels, 3).mean() * 2.5).backward()
    logits = logits64.float().requires_grad_()
    loss = kernels.joint_cross_entropy(logits, labels, 3, backend="cpu") * 2.5
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward()  # accumulates a second, recomputed gradient into the same leaf
    torch.testing.assert_close(first.double(), reference_input.grad, **FP32_TOLERANCE)
    torch.testing.assert_close(logits.grad, 2 * first)


@pytest.mark.skipif(not SIMULATOR, reason="only meaningful in the simulator process of test_kernels_simulator.py")
def test_the_simulator_runs_the_cuda_target():
    from numba import config

    from kernels import ops

    assert config.ENABLE_CUDASIM and ops.simulator_enabled()
    assert kernels.backend_for_device("cuda", torch.device("cpu")) == "cuda"


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the cuda backend runs on a GPU or in the simulator")
def test_the_cuda_kernels_refuse_float64_rather_than_round_it():
    device = device_for("cuda")
    logits = random_logits(6, 9).to(device)
    labels = torch.tensor([0, 2], device=device)
    with pytest.raises(ValueError, match="computes in float32 and does not take float64"):
        kernels.joint_cross_entropy(logits, labels, 3, backend="cuda")
    with pytest.raises(ValueError, match="does not take float64"):
        kernels.aggregate_logits(logits, 3, backend="cuda")
    with pytest.raises(ValueError, match="does not take float64"):
        kernels.distillation_kl(logits, logits, temperature=2.0, backend="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_head_cross_entropy_keeps_float64_and_upcasts_halves(dtype):
    from train.methods.base import views_mean

    logits = random_logits(6, 5).to(dtype)
    assert kernels.upcast(logits).dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert views_mean(logits, 3).dtype == kernels.upcast(logits).dtype


def test_expand_views_of_other_channel_counts_take_the_generic_cpu_loop():
    images = torch.randint(0, 256, (2, 5, 5, 2), dtype=torch.uint8)  # the RGB loop is specialised; this is not
    views = kernels.expand_views(images, "rotation", mean=(0.4, 0.6, 0.5), std=(0.2, 0.3, 0.25), backend="cpu")
    scale, shift = kernels.reference.normalisation_affine((0.4, 0.6, 0.5), (0.2, 0.3, 0.25), "cpu")
    normalised = (images.float() * scale[:2] + shift[:2]).permute(0, 3, 1, 2)
    expected = torch.stack([torch.rot90(normalised, k, dims=(-2, -1)) for k in range(4)], dim=1).reshape(8, 2, 5, 5)
    assert torch.equal(views, expected)


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the cuda backend runs on a GPU or in the simulator")
def test_the_cuda_gradient_grid_fits_any_row_count():
    """Batch 4096 with rot_color_perm24 is 98,304 rows: more than a grid's y dimension (65,535) allows, so the
    backward kernels take a 1-D grid of one thread per element."""
    from kernels import ops

    blocks, threads = ops._row_grid(4096 * 24, 100 * 24)
    assert isinstance(blocks, int) and blocks * threads >= 4096 * 24 * 100 * 24 and blocks < 2**31


def test_a_numba_kernel_leaves_torchs_thread_count_as_it_found_it():
    """Numba's OpenMP layer shares torch's runtime: each launch set it to the core count, so a one-thread run
    computed its later steps on every core (and its resume, begun elsewhere, differed in the last bits)."""
    import kernels

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        kernels.follow_torch_threads()
        images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
        kernels.expand_views(images, "rotation", mean=(0.5,) * 3, std=(0.25,) * 3, backend="cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        kernels.follow_torch_threads()


@pytest.mark.skipif(SIMULATOR, reason="a CPU process's threads")
@pytest.mark.parametrize("start", ["follow_torch_threads", "a kernel"])
def test_starting_numbas_pool_keeps_torchs_one_thread(start):
    """torchrun gives each rank OMP_NUM_THREADS=1; Numba's OpenMP pool, started by the first follow_torch_threads,
    set the shared runtime to its own size (every core), so each rank's convolutions ran on every core: two ranks
    on two busy cores trained 18 steps in 9 s instead of 0.5 s. A run calls follow_torch_threads first; a script
    whose first Numba work is a kernel (a loader's views, a benchmark) had torch on both cores after it. A fresh
    process, the pool larger than torch's."""
    from conftest import run_child, subprocess_env

    env = dict(subprocess_env(), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    first = ("kernels.follow_torch_threads()" if start == "follow_torch_threads" else
             "kernels.expand_views(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), 'rotation', mean=(0.5,) * 3, "
             "std=(0.25,) * 3, backend='cpu')")
    child = run_child([sys.executable, "-c", f"import torch, kernels; {first}; "
                       "import numba; print(torch.get_num_threads(), numba.threading_layer())"], env=env, timeout=120)
    threads, layer = child.stdout.split()
    assert threads == "1", (threads, layer)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["rotation", "rot_color_perm6"] if SIMULATOR else sorted(kernels.FAMILIES))
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_fused_gather_equals_crop_flip_and_views_in_float64(backend, family, channels_last):
    """The resident loader's one-pass views (gather from the dataset, crop in the zero-padded image, mirror, the
    family's views, normalise) against the same steps in float64 on an odd size, with crops that reach into the
    padding, repeated indices and both flips."""
    from kernels.reference import crop_and_flip

    device = device_for(backend)
    count, size, padding = (4, 5, 2) if SIMULATOR else (9, 7, 3)
    generator = torch.Generator().manual_seed(3)
    dataset = torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator)
    indices = torch.tensor([2, 0, 2] if SIMULATOR else [8, 0, 3, 3, 5])
    offsets = torch.randint(0, 2 * padding + 1, (len(indices), 2), generator=generator)
    offsets[0] = torch.tensor([0, 2 * padding])  # the corners of the padded image
    flips = torch.arange(len(indices)) % 2 == 0
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    views = kernels.gather_expand_views(dataset.to(device), indices.to(device), offsets.to(device), flips.to(device),
                                        padding, family, mean=mean, std=std, channels_last=channels_last,
                                        backend=backend)
    spec = kernels.get_family(family)
    cropped = crop_and_flip(dataset[indices], offsets, flips, padding).double()
    normalised = ((cropped / 255 - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64))
    normalised = normalised.permute(0, 3, 1, 2)
    expected = torch.stack([torch.rot90(normalised, k, dims=(-2, -1))[:, list(order)]
                            for k, order in zip(spec.quarter_turns, spec.channel_orders)], dim=1)
    expected = expected.reshape(len(indices) * spec.num_transforms, 3, size, size)
    assert views.shape == expected.shape and views.dtype == torch.float32
    assert views.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # float32: the uint8 value exactly, then one multiply and one add (or one fused multiply-add) of |x| ≤ 4.1
    torch.testing.assert_close(views.cpu().double(), expected, rtol=0, atol=4 * 4.1 * 2.0**-24)
    if backend != "torch":  # and bit for bit what the two unfused steps give on the same backend
        unfused = kernels.expand_views(crop_and_flip(dataset[indices], offsets, flips, padding).to(device), family,
                                       mean=mean, std=std, channels_last=channels_last, backend=backend)
        assert torch.equal(views.cpu(), unfused.cpu())


@pytest.mark.skipif(SIMULATOR, reason="compiles the real kernels (the simulator replaces numba.cuda)")
def test_every_cuda_kernel_compiles_to_ptx_for_its_declared_signature(monkeypatch):
    """NVVM compiles each kernel for its eager signature with no GPU (the PTX for compute capability 8.0): a type
    or signature mistake fails here, not at a GPU's first step. Device functions ask the current device for its
    compute capability, which a CPU machine has none of: the test names one."""
    from types import SimpleNamespace

    import numba.cuda.dispatcher
    from numba import cuda

    import kernels.cuda as cuda_kernels

    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=(8, 0)))
    assert set(cuda_kernels.SIGNATURES) == {"joint_ce_forward", "joint_ce_backward", "aggregate_forward",
                                            "aggregate_backward", "kl_forward", "kl_backward", "expand_views",
                                            "gather_views"}
    for name, signature in cuda_kernels.SIGNATURES.items():
        ptx, _ = cuda.compile_ptx(getattr(cuda_kernels, name), signature, cc=(8, 0))
        assert ".entry" in ptx and name in ptx, name


@pytest.mark.skipif("cuda" not in BACKENDS, reason="the cuda backend runs on a GPU or in the simulator")
def test_every_cuda_launch_passes_the_types_its_kernel_declares(monkeypatch):
    """Each op's arguments, as kernels/ops.py launches them, against kernels/cuda.py's SIGNATURES: dtype, rank and
    layout (a C-contiguous signature takes only C-contiguous arrays)."""
    import numba
    from numba.core import sigutils, types

    from kernels import cuda as cuda_kernels, ops

    names = {id(value): name for name, value in vars(ops._cuda_kernels()).items()}
    launches = []
    launch = ops._launch

    def record(kernel, grid, block, tensor, *args):
        launches.append((names[id(kernel)], args))
        return launch(kernel, grid, block, tensor, *args)

    monkeypatch.setattr(ops, "_launch", record)
    device = device_for("cuda")
    logits = random_logits(6, 9).float().to(device).requires_grad_()
    labels = torch.tensor([0, 2], device=device)
    kernels.joint_cross_entropy(logits, labels, 3, backend="cuda").backward()
    kernels.aggregate_logits(logits, 3, backend="cuda").sum().backward()
    kernels.distillation_kl(logits, logits.detach() * 2, temperature=2.0, backend="cuda").backward()
    dataset = torch.randint(0, 256, (4, 5, 5, 3), dtype=torch.uint8, device=device)
    stats = dict(mean=(0.5,) * 3, std=(0.25,) * 3, backend="cuda")
    kernels.expand_views(dataset, "rotation", **stats)
    kernels.gather_expand_views(dataset, torch.tensor([3, 1], device=device), torch.tensor([[0, 1], [2, 2]],
                                device=device), torch.tensor([True, False], device=device), 1, "rotation", **stats)
    assert {name for name, _ in launches} == set(cuda_kernels.SIGNATURES)
    for name, args in launches:
        declared, _ = sigutils.normalize_signature(cuda_kernels.SIGNATURES[name])
        assert len(args) == len(declared), name
        for position, (expected, value) in enumerate(zip(declared, args)):
            actual = numba.typeof(value)
            if isinstance(expected, types.Array):
                assert isinstance(actual, types.Array) and (actual.dtype, actual.ndim) == (expected.dtype,
                                                                                       expected.ndim), (name, position)
                assert expected.layout in ("A", actual.layout), (name, position, actual.layout)
            else:
                assert actual == expected, (name, position, actual)
