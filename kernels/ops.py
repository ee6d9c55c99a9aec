"""torch.library custom ops around the Numba kernels: autograd, and a fake implementation so a
torch.compile'd step keeps its graph across them. `backend` is "cpu" or "cuda" here.

Tensors reach Numba without copies: `.numpy()` on the CPU, `__cuda_array_interface__` on the
GPU, launched on torch's current stream. fp16/bf16 inputs are upcast to float32 first (Numba's
CPU target has no half type), results are float32 and gradients come back in the input dtype.

Eager calls skip the custom-op dispatcher: each op's implementation also backs a plain
`torch.autograd.Function` (same setup and backward), because the dispatcher's Python layers cost
about as much as the fused CPU kernels themselves at B=256, N=100, M=4. Whenever something
traces (torch.compile, AOT autograd) the registered ops are used, so the graph holds them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import cpu as cpu_kernels

_label_error_flags: dict[int, object] = {}  # CUDA device index → device int32 flag


_pool_follows_torch = False  # kernels/cpu.py's Numba pool was set to torch's thread count in this process


def _cpu_kernels():
    """kernels/cpu.py, its Numba pool first set to torch's thread count, once per process (kernels/cpu.py
    `follow_torch_threads` says why). A run does that itself; a script that iterates a loader or benchmarks a
    kernel without one kept torch on Numba's pool size (every core) under OMP_NUM_THREADS=1."""
    global _pool_follows_torch
    if not _pool_follows_torch:
        cpu_kernels.follow_torch_threads()
        _pool_follows_torch = True
    return cpu_kernels


def simulator_enabled() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def _cuda_kernels():
    """The CUDA kernels, compiled (or loaded from Numba's cache) on first use: numba.cuda costs a second to
    load, and a CPU run never needs it."""
    from . import cuda as cuda_kernels

    return cuda_kernels.compiled()


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _kernel_input(tensor: Tensor) -> Tensor:
    """Float32/float64 contiguous tensors go through as they are; halves are upcast."""
    return tensor.detach().to(_compute_dtype(tensor)).contiguous()


def _array(tensor: Tensor):
    if tensor.is_cuda:
        from numba import cuda

        return cuda.as_cuda_array(tensor.detach())
    return (tensor.detach() if tensor.requires_grad else tensor).numpy()


_numba_streams: dict[int, object] = {}  # torch stream handle → its Numba wrapper, made once


def _launch(kernel, grid, block, tensor: Tensor, *args):
    """Launch on torch's current stream. Its Numba wrapper is made once per stream: Numba caches a kernel's launch
    configuration by the stream object, so a fresh wrapper per call missed that cache on every launch."""
    if tensor.is_cuda:
        handle = torch.cuda.current_stream(tensor.device).cuda_stream
        stream = _numba_streams.get(handle)
        if stream is None:
            from numba import cuda

            stream = _numba_streams[handle] = cuda.external_stream(handle)
        kernel[grid, block, stream](*args)
    else:  # Numba's CUDA simulator on host arrays
        kernel[grid, block](*args)


def _error_flag(tensor: Tensor):
    if not tensor.is_cuda:
        return np.zeros(1, dtype=np.int32)
    from numba import cuda

    index = tensor.device.index
    if index not in _label_error_flags:
        _label_error_flags[index] = cuda.to_device(np.zeros(1, dtype=np.int32))
    return _label_error_flags[index]


def raise_pending_label_error() -> None:
    """Checks the CUDA kernels' out-of-range-label flags (one host sync); call at logging steps."""
    for index, flag in _label_error_flags.items():
        if int(flag.copy_to_host()[0]):
            flag.copy_to_device(np.zeros(1, dtype=np.int32))
            raise ValueError(f"a label outside [0, N) reached the joint cross-entropy on cuda:{index}; "
                             "the rows concerned got a NaN loss")


def _row_grid(rows: int, columns: int):
    """A 1-D grid of one thread per element of a [rows, columns] gradient: gridDim.x allows 2³¹ − 1 blocks, where
    a grid with rows in y would stop at 65,535 rows (batch × views)."""
    threads = _cuda_kernels().ELEMENT_THREADS
    return math.ceil(rows * columns / threads), threads


_implementations: dict = {}  # custom op → its plain function
_eager_calls: dict = {}  # custom op → what an eager call runs instead: its function, or an autograd.Function's apply


def _kernel_op(name: str):
    """torch.library.custom_op "sla_kernels::<name>", remembering the plain function for eager calls."""
    def register(function):
        op = torch.library.custom_op(f"sla_kernels::{name}", mutates_args=())(function)
        _implementations[op] = _eager_calls[op] = function
        return op
    return register


def _differentiable(op, backward, setup_context) -> None:
    """Registers the op's autograd formula, and the same formula as an autograd.Function for eager calls
    (old-style `forward(ctx, ...)`: a `setup_context` method would make every apply bind its signature)."""
    op.register_autograd(backward, setup_context=setup_context)
    implementation = _implementations[op]

    def forward(ctx, *args):
        output = implementation(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"{op._name.split('::')[-1]}_function", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    _eager_calls[op] = function.apply


def _traced(args) -> bool:
    """Whether anything traces: dynamo, or AOT autograd's fake and functional tensor subclasses."""
    return torch.compiler.is_compiling() or any(type(arg) is not Tensor for arg in args if isinstance(arg, Tensor))


def call(op, *args):
    """The registered op while anything traces, else the direct eager path; the results are the same."""
    return op(*args) if _traced(args) else _eager_calls[op](*args)


# ------------------------------------------------------------------ joint cross-entropy (L_SLA)
def check_label_range(labels: Tensor, num_classes: int) -> None:
    """Labels in host memory, read there with numpy: no device is involved and nothing waits (the CUDA kernels
    raise a device flag instead). The CPU op checks inside itself, so that a compiled graph keeps the check
    without breaking at it."""
    values = labels.detach().numpy()
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = int(values[(values < 0) | (values >= num_classes)][0])
        raise ValueError(f"label {bad} is outside [0, {num_classes}) for {num_classes} classes")


def _joint_ce_inputs(logits: Tensor, labels: Tensor, num_transforms: int, backend: str):
    """The kernel's logits and labels (labels checked on the CPU) and its empty per-row outputs."""
    values = _kernel_input(logits)
    labels = labels.contiguous()
    if backend == "cpu":
        check_label_range(labels, values.shape[1] // num_transforms)
    row_loss = torch.empty(values.shape[0], dtype=values.dtype, device=values.device)
    row_lse = torch.empty(values.shape[0], 2, dtype=values.dtype, device=values.device)
    return values, labels, row_loss, row_lse


@_kernel_op("joint_ce_forward")
def joint_ce_forward(logits: Tensor, labels: Tensor, num_transforms: int, backend: str) -> tuple[Tensor, Tensor]:
    """Per-row loss and per-row (max, log-sum-exp-shifted), in the compute dtype."""
    values, labels, row_loss, row_lse = _joint_ce_inputs(logits, labels, num_transforms, backend)
    if backend == "cpu":
        _cpu_kernels().joint_ce_forward(_array(values), _array(labels), num_transforms, _array(row_loss),
                                        _array(row_lse))
    else:
        kernels = _cuda_kernels()
        _launch(kernels.joint_ce_forward, values.shape[0], kernels.THREADS, values, _array(values), _array(labels),
                num_transforms, _array(row_loss), _array(row_lse), _error_flag(values))
    return row_loss, row_lse


@joint_ce_forward.register_fake
def _(logits, labels, num_transforms, backend):
    dtype = _compute_dtype(logits)
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=dtype), logits.new_empty(rows, 2, dtype=dtype)


@_kernel_op("joint_ce_backward")
def joint_ce_backward(logits: Tensor, labels: Tensor, num_transforms: int, row_lse: Tensor, row_grad: Tensor,
                      backend: str) -> Tensor:
    values = _kernel_input(logits)
    grad = torch.empty_like(values)
    row_grad = row_grad.to(values.dtype)
    if backend == "cpu":
        _cpu_kernels().joint_ce_backward(_array(values), _array(labels.contiguous()), num_transforms, _array(row_lse),
                                         _array(row_grad.contiguous()), _array(grad))
    else:  # a mean's gradient arrives as one scalar broadcast over the rows (stride 0): the kernel reads it so
        _launch(_cuda_kernels().joint_ce_backward, *_row_grid(*values.shape), values, _array(values),
                _array(labels.contiguous()), num_transforms, _array(row_lse), _array(row_grad), _array(grad))
    return grad.to(logits.dtype)


@joint_ce_backward.register_fake
def _(logits, labels, num_transforms, row_lse, row_grad, backend):
    return torch.empty_like(logits)


def _joint_ce_setup(ctx, inputs, output):
    logits, labels, num_transforms, backend = inputs
    ctx.save_for_backward(logits, labels, output[1])
    ctx.num_transforms, ctx.backend = num_transforms, backend


def _joint_ce_grad(ctx, grad_row_loss, grad_row_lse):
    logits, labels, row_lse = ctx.saved_tensors
    if grad_row_loss is None:
        grad_row_loss = torch.zeros_like(row_lse)
    grad = call(joint_ce_backward, logits, labels, ctx.num_transforms, row_lse, grad_row_loss, ctx.backend)
    return grad, None, None, None


_differentiable(joint_ce_forward, _joint_ce_grad, _joint_ce_setup)


class _JointCrossEntropyMean(torch.autograd.Function):
    """Eager reduction="mean": the weighted mean is taken here and its gradient becomes the kernel's
    row scale, two autograd nodes fewer than per-row losses and .mean() (about 30 µs at B=256).

    On the CPU, when the logits need a gradient, the forward writes it too (for an incoming gradient
    of 1, `loss.backward()`'s): one exp per element instead of a second pass in the backward, and
    the backward hands the buffer over. The buffer takes the place of the exponentials the backward
    would otherwise recompute; it is held from forward to backward, as eager log_softmax holds its
    output. A second backward through the same graph (retain_graph) recomputes from the logits."""

    @staticmethod
    def forward(ctx, logits, labels, num_transforms, weight, backend, grad_wanted):
        rows = logits.shape[0]
        ctx.row_weight = weight / rows
        ctx.ready_grad = None
        ctx.grad_in_forward = backend == "cpu" and grad_wanted
        if ctx.grad_in_forward:
            row_loss, row_lse, ctx.ready_grad = _joint_ce_cpu_with_grad(logits, labels, num_transforms,
                                                                         ctx.row_weight)
        else:
            row_loss, row_lse = _implementations[joint_ce_forward](logits, labels, num_transforms, backend)
        _joint_ce_setup(ctx, (logits, labels, num_transforms, backend), (row_loss, row_lse))
        loss = row_loss.mean()
        return loss if weight == 1 else loss * weight

    @staticmethod
    def backward(ctx, grad):
        logits, labels, row_lse = ctx.saved_tensors
        if ctx.grad_in_forward:
            ready, ctx.ready_grad = ctx.ready_grad, None  # handed over once; never touched again here
            if ready is None:  # a second backward: the same kernel again, so the same bits
                ready = _joint_ce_cpu_with_grad(logits, labels, ctx.num_transforms, ctx.row_weight)[2]
            unit = grad.detach().numpy() == 1  # a host tensor here (the CPU path): read without a device sync
            return (ready if unit else ready * grad).to(logits.dtype), None, None, None, None, None
        row_grad = (grad * ctx.row_weight).expand(logits.shape[0])
        grad_logits = _implementations[joint_ce_backward](logits, labels, ctx.num_transforms, row_lse, row_grad,
                                                          ctx.backend)
        return grad_logits, None, None, None, None, None


def _joint_ce_cpu_with_grad(logits: Tensor, labels: Tensor, num_transforms: int, row_weight: float):
    values, labels, row_loss, row_lse = _joint_ce_inputs(logits, labels, num_transforms, "cpu")
    grad = torch.empty_like(values)
    _cpu_kernels().joint_ce_forward_and_grad(_array(values), _array(labels), num_transforms, float(row_weight),
                                             _array(row_loss), _array(row_lse), _array(grad))
    return row_loss, row_lse, grad


def joint_ce_mean(logits: Tensor, labels: Tensor, num_transforms: int, weight: float, backend: str) -> Tensor:
    """weight · mean over rows of the joint cross-entropy."""
    if _traced((logits, labels)):
        return joint_ce_forward(logits, labels, num_transforms, backend)[0].mean() * weight
    grad_wanted = torch.is_grad_enabled() and logits.requires_grad  # (inside forward, grad mode is off)
    return _JointCrossEntropyMean.apply(logits, labels, num_transforms, float(weight), backend, grad_wanted)


# ------------------------------------------------------------------ aggregated logits (SLA+AG)
@_kernel_op("aggregate_forward")
def aggregate_forward(logits: Tensor, num_transforms: int, backend: str) -> Tensor:
    values = _kernel_input(logits)
    rows, columns = values.shape
    scores = torch.empty(rows // num_transforms, columns // num_transforms, dtype=values.dtype, device=values.device)
    if backend == "cpu":
        _cpu_kernels().aggregate_forward(_array(values), num_transforms, _array(scores))
    else:
        blocks = (math.ceil(scores.shape[0] / 16), math.ceil(scores.shape[1] / 16))
        _launch(_cuda_kernels().aggregate_forward, blocks, (16, 16), values, _array(values), num_transforms,
                _array(scores))
    return scores


@aggregate_forward.register_fake
def _(logits, num_transforms, backend):
    rows, columns = logits.shape
    return logits.new_empty(rows // num_transforms, columns // num_transforms, dtype=_compute_dtype(logits))


@_kernel_op("aggregate_backward")
def aggregate_backward(logits: Tensor, grad_scores: Tensor, num_transforms: int, backend: str) -> Tensor:
    grad = torch.empty(logits.shape, dtype=_compute_dtype(logits), device=logits.device)
    grad_scores = grad_scores.to(grad.dtype).contiguous()
    if backend == "cpu":
        _cpu_kernels().aggregate_backward(_array(grad_scores), num_transforms, _array(grad))
    else:
        _launch(_cuda_kernels().aggregate_backward, *_row_grid(*grad.shape), grad, _array(grad_scores),
                num_transforms, _array(grad))
    return grad.to(logits.dtype)


@aggregate_backward.register_fake
def _(logits, grad_scores, num_transforms, backend):
    return torch.empty_like(logits)


def _aggregate_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.num_transforms, ctx.backend = inputs[1], inputs[2]


def _aggregate_grad(ctx, grad_scores):
    (logits,) = ctx.saved_tensors
    return call(aggregate_backward, logits, grad_scores, ctx.num_transforms, ctx.backend), None, None


_differentiable(aggregate_forward, _aggregate_grad, _aggregate_setup)


# ------------------------------------------------------------------ distillation KL (SLA+SD, HSAKD)
@_kernel_op("kl_forward")
def kl_forward(student: Tensor, teacher: Tensor, temperature: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row KL(softmax(teacher/τ) ‖ softmax(student/τ)) and each side's per-row (max, log-sum)."""
    s_values, t_values = _kernel_input(student), _kernel_input(teacher).to(_compute_dtype(student))
    rows = s_values.shape[0]
    row_kl = torch.empty(rows, dtype=s_values.dtype, device=s_values.device)
    lse_s, lse_t = (torch.empty(rows, 2, dtype=s_values.dtype, device=s_values.device) for _ in range(2))
    if backend == "cpu":
        _cpu_kernels().kl_forward(_array(s_values), _array(t_values), 1.0 / temperature, _array(row_kl), _array(lse_s),
                                  _array(lse_t))
    else:
        kernels = _cuda_kernels()
        _launch(kernels.kl_forward, rows, kernels.THREADS, s_values, _array(s_values), _array(t_values),
                np.float32(1.0 / temperature), _array(row_kl), _array(lse_s), _array(lse_t))
    return row_kl, lse_s, lse_t


@kl_forward.register_fake
def _(student, teacher, temperature, backend):
    rows, dtype = student.shape[0], _compute_dtype(student)
    return student.new_empty(rows, dtype=dtype), student.new_empty(rows, 2, dtype=dtype), \
        student.new_empty(rows, 2, dtype=dtype)


@_kernel_op("kl_backward")
def kl_backward(student: Tensor, teacher: Tensor, temperature: float, lse_s: Tensor, lse_t: Tensor,
                row_grad: Tensor, backend: str) -> Tensor:
    s_values, t_values = _kernel_input(student), _kernel_input(teacher).to(_compute_dtype(student))
    grad = torch.empty_like(s_values)
    row_grad = row_grad.to(s_values.dtype).contiguous()
    if backend == "cpu":
        _cpu_kernels().kl_backward(_array(s_values), _array(t_values), 1.0 / temperature, _array(lse_s), _array(lse_t),
                                   _array(row_grad), _array(grad))
    else:
        _launch(_cuda_kernels().kl_backward, *_row_grid(*s_values.shape), s_values, _array(s_values),
                _array(t_values), np.float32(1.0 / temperature), _array(lse_s), _array(lse_t), _array(row_grad),
                _array(grad))
    return grad.to(student.dtype)


@kl_backward.register_fake
def _(student, teacher, temperature, lse_s, lse_t, row_grad, backend):
    return torch.empty_like(student)


def _kl_setup(ctx, inputs, output):
    student, teacher, temperature, backend = inputs
    ctx.save_for_backward(student, teacher, output[1], output[2])
    ctx.temperature, ctx.backend = temperature, backend


def _kl_grad(ctx, grad_row_kl, grad_lse_s, grad_lse_t):
    student, teacher, lse_s, lse_t = ctx.saved_tensors
    grad = call(kl_backward, student, teacher, ctx.temperature, lse_s, lse_t, grad_row_kl, ctx.backend)
    return grad, None, None, None  # no gradient into the teacher


_differentiable(kl_forward, _kl_grad, _kl_setup)


# ------------------------------------------------------------------ view expansion
@_kernel_op("expand_views")
def expand_views(images: Tensor, quarter_turns: Tensor, channel_orders: Tensor, scale: Tensor, shift: Tensor,
                 channels_last: bool, backend: str) -> Tensor:
    """uint8 [B, H, W, C] → float32 [B·M, C, H, W], read once and written once."""
    batch, height, width, channels = images.shape
    rows = batch * quarter_turns.shape[0]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(rows, channels, height, width, dtype=torch.float32, device=images.device,
                      memory_format=memory_format)
    out_hwc = out.permute(0, 2, 3, 1)  # the same storage indexed [row, h, w, c]
    args = [images.contiguous(), quarter_turns, channel_orders, scale, shift]
    if backend == "cpu":
        _cpu_kernels().expand_views(*map(_array, args), _array(out_hwc))
    else:
        kernels = _cuda_kernels()
        blocks = math.ceil(out.numel() / kernels.ELEMENT_THREADS)
        # The simulator moves only contiguous host buffers; a real GPU writes the strided view directly.
        target = out_hwc if images.is_cuda or out_hwc.is_contiguous() else torch.empty_like(out_hwc.contiguous())
        _launch(kernels.expand_views, blocks, kernels.ELEMENT_THREADS, images, *map(_array, args), _array(target))
        if target is not out_hwc:
            out_hwc.copy_(target)
    return out


@_kernel_op("gather_views")
def gather_views(dataset: Tensor, indices: Tensor, offsets: Tensor, flips: Tensor, padding: int,
                 quarter_turns: Tensor, channel_orders: Tensor, scale: Tensor, shift: Tensor, channels_last: bool,
                 backend: str) -> Tensor:
    """uint8 dataset [N, H, W, C] and a batch's indices, crop offsets and flips → float32 [B·M, C, H, W]: the
    batch read once from the dataset and each view written once."""
    _, height, width, channels = dataset.shape
    rows = indices.shape[0] * quarter_turns.shape[0]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(rows, channels, height, width, dtype=torch.float32, device=dataset.device,
                      memory_format=memory_format)
    out_hwc = out.permute(0, 2, 3, 1)
    args = [dataset.contiguous(), indices, offsets.contiguous(), flips.to(torch.uint8), padding, quarter_turns,
            channel_orders, scale, shift]
    arrays = [arg if isinstance(arg, int) else _array(arg) for arg in args]
    if backend == "cpu":
        _cpu_kernels().gather_views(*arrays, _array(out_hwc))
    else:
        kernels = _cuda_kernels()
        blocks = math.ceil(out.numel() / kernels.ELEMENT_THREADS)
        target = out_hwc if dataset.is_cuda or out_hwc.is_contiguous() else torch.empty_like(out_hwc.contiguous())
        _launch(kernels.gather_views, blocks, kernels.ELEMENT_THREADS, dataset, *arrays, _array(target))
        if target is not out_hwc:
            out_hwc.copy_(target)
    return out


@gather_views.register_fake
def _(dataset, indices, offsets, flips, padding, quarter_turns, channel_orders, scale, shift, channels_last, backend):
    _, height, width, channels = dataset.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(indices.shape[0] * quarter_turns.shape[0], channels, height, width, dtype=torch.float32,
                       device=dataset.device, memory_format=memory_format)


@expand_views.register_fake
def _(images, quarter_turns, channel_orders, scale, shift, channels_last, backend):
    batch, height, width, channels = images.shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(batch * quarter_turns.shape[0], channels, height, width, dtype=torch.float32,
                       device=images.device, memory_format=memory_format)


# ------------------------------------------------------------------ a run's kernels, resolved once
class FusedKernels:
    """The loss kernels of one backend ("cpu" or "cuda") as a run calls them: no backend resolution or checks per
    call (kernels.for_device resolves and kernels' public functions check; the CPU op checks its labels)."""

    def __init__(self, backend: str):
        self.backend = backend

    def joint_cross_entropy(self, joint_logits: Tensor, labels: Tensor, num_transforms: int,
                            sum_over_transforms: bool = False) -> Tensor:
        """L_SLA, the mean over rows (× M with `sum_over_transforms`)."""
        weight = num_transforms if sum_over_transforms else 1
        return joint_ce_mean(joint_logits, labels, num_transforms, weight, self.backend)

    def aggregate_logits(self, joint_logits: Tensor, num_transforms: int) -> Tensor:
        return call(aggregate_forward, joint_logits, num_transforms, self.backend)

    def distillation_kl(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        row_kl, _, _ = call(kl_forward, student_logits, teacher_logits.detach(), float(temperature), self.backend)
        return row_kl.mean() * temperature**2


class FusedViewGather:
    """A resident dataset's batch → its views in one kernel, with the dataset, padding, family tables and layout
    fixed once (kernels.bind_view_gather)."""

    def __init__(self, dataset: Tensor, padding: int, tables: tuple, out_dtype: torch.dtype, channels_last: bool,
                 backend: str):
        self.dataset, self.padding, self.tables = dataset.contiguous(), padding, tables
        self.out_dtype, self.channels_last, self.backend = out_dtype, channels_last, backend

    def __call__(self, indices: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
        views = call(gather_views, self.dataset, indices, offsets, flips, self.padding, *self.tables,
                     self.channels_last, self.backend)
        return views if self.out_dtype == torch.float32 else views.to(self.out_dtype)
