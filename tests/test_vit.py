"""The small Vision Transformers: parameter counts from their named configurations, other image sizes, and
a bf16 step."""
import pytest
import torch

from models import build_backbone


def named_configuration_parameters(dim: int, depth: int, patch: int = 4, image: int = 32, mlp_ratio: int = 4) -> int:
    """Counted from the configuration alone: patch projection, class token, position embeddings, per block
    two LayerNorms, qkv, output projection and the MLP, and the final LayerNorm."""
    tokens = (image // patch) ** 2 + 1
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp_ratio * dim + mlp_ratio * dim) \
        + (mlp_ratio * dim * dim + dim)
    return (3 * patch * patch * dim + dim) + dim + tokens * dim + depth * block + 2 * dim


@pytest.mark.parametrize("name,dim", [("vit_tiny", 192), ("vit_small", 384)])
def test_parameter_count_matches_the_named_configuration(name, dim):
    model = build_backbone(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - named_configuration_parameters(dim, 12)) <= 0.01 * count
    assert model.feature_dim == dim


def test_a_bf16_step_runs_and_other_sizes_resize_the_position_embeddings():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny")
    for size in (32, 16):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model(torch.randn(3, 3, size, size))
        assert features.shape == (3, 192) and torch.isfinite(features.float()).all()
        features.float().square().mean().backward()
        assert model.pos_embed.grad is not None and torch.isfinite(model.pos_embed.grad).all()
        model.zero_grad()


def test_explicit_attention_equals_pytorch_attention_in_float64():
    """The CPU path's written-out attention against F.scaled_dot_product_attention: values and gradients."""
    from models.vit import explicit_attention

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(3, 2, 7, 5, dtype=torch.float64, generator=generator)
    results = []
    for attention in (explicit_attention, torch.nn.functional.scaled_dot_product_attention):
        out = attention(q, k, v)
        results.append([out] + list(torch.autograd.grad(out, (q, k, v), grad)))
    for mine, expected in zip(*results):
        torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-12)
