"""The meta step's batch-norm forward-mode rule against PyTorch's own rule in float64, on awkward shapes."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

from train.methods.batch_norm_jvp import BatchStatsNorm, batch_norm_forward_mode


def reference_jvp(x, weight, bias, tangents):
    """torch.func.jvp of training-mode F.batch_norm (PyTorch's composite rule)."""
    def norm(x, weight, bias):
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
    return torch.func.jvp(norm, (x, weight, bias), tangents)


@pytest.mark.parametrize("shape,channels_last", [((5, 3, 7, 3), False), ((5, 3, 7, 3), True), ((9, 4), False)])
@pytest.mark.parametrize("which", ["all", "input", "weight"])
def test_batch_stats_norm_tangent_equals_pytorchs_rule_in_float64(shape, channels_last, which):
    generator = torch.Generator().manual_seed(len(shape) + len(which))
    x = torch.randn(shape, dtype=torch.float64, generator=generator) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = (torch.randn(shape[1], dtype=torch.float64, generator=generator) for _ in range(2))
    tangents = [torch.randn(t.shape, dtype=torch.float64, generator=generator) for t in (x, weight, bias)]
    if which == "input":
        tangents[1:] = [torch.zeros_like(weight), torch.zeros_like(bias)]
    if which == "weight":
        tangents[0], tangents[2] = torch.zeros_like(x), torch.zeros_like(bias)
    expected_out, expected_tangent = reference_jvp(x, weight, bias, tuple(tangents))
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(p, t) for p, t in zip((x, weight, bias), tangents)]
        out, tangent = forward_ad.unpack_dual(BatchStatsNorm.apply(*duals, 1e-5)[0])
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-10, atol=1e-10)


def test_the_routing_applies_to_training_mode_layers_only_and_leaves_running_statistics():
    torch.manual_seed(3)
    layer = torch.nn.BatchNorm2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    tangent = torch.randn_like(x)
    before = {name: b.clone() for name, b in layer.named_buffers()}
    expected = torch.func.jvp(lambda v: F.batch_norm(v, None, None, layer.weight, layer.bias, True), (x,), (tangent,))[1]
    with torch.no_grad(), forward_ad.dual_level(), batch_norm_forward_mode():
        routed = forward_ad.unpack_dual(layer(forward_ad.make_dual(x, tangent))).tangent
    torch.testing.assert_close(routed, expected, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var"):  # (the module itself counts num_batches_tracked)
        assert torch.equal(getattr(layer, name), before[name]), name
    layer.eval()  # running statistics: PyTorch's own layer and rule
    with torch.no_grad(), forward_ad.dual_level(), batch_norm_forward_mode():
        evaluated = forward_ad.unpack_dual(layer(forward_ad.make_dual(x, tangent))).tangent
    torch.testing.assert_close(evaluated, tangent * (layer.weight / torch.sqrt(layer.running_var + layer.eps))
                               .view(1, -1, 1, 1))


def test_bf16_inputs_give_bf16_outputs_close_to_float32():
    torch.manual_seed(5)
    x = torch.randn(6, 4, 5, 3)
    weight, bias, tangent = torch.rand(4) + 0.5, torch.randn(4), torch.randn(6, 4, 5, 3)
    expected = reference_jvp(x, weight, bias, (tangent, torch.zeros(4), torch.zeros(4)))[1]
    with forward_ad.dual_level():
        out = BatchStatsNorm.apply(forward_ad.make_dual(x.bfloat16(), tangent.bfloat16()), weight, bias, 1e-5)[0]
        result = forward_ad.unpack_dual(out).tangent
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result.float(), expected, rtol=0.05, atol=0.05)
