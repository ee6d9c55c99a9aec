"""Deep InfoMax: the global and local objectives against float64 transcriptions of their formulas (both
estimators, values and gradients), and a digits run that trains and resumes."""
import math

import pytest
import torch
import torch.nn.functional as F

from train.methods.infomax import global_mi_loss, local_mi_loss


def softplus(x):
    return math.log1p(math.exp(x)) if x < 30 else x


@pytest.mark.parametrize("estimator", ["infonce", "jsd"])
def test_global_objective_matches_its_formula_in_float64(estimator):
    torch.manual_seed(0)
    maps, vectors = (torch.randn(5, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    loss = global_mi_loss(maps, vectors, estimator)
    scores = vectors @ maps.T / 2  # /√E, E = 4
    if estimator == "infonce":
        reference = torch.stack([-(scores[b, b] - torch.logsumexp(scores[b], 0)) for b in range(5)]).mean()
    else:
        positives = torch.stack([F.softplus(-scores[b, b]) for b in range(5)]).mean()
        negatives = torch.stack([F.softplus(scores[b, c]) for b in range(5) for c in range(5) if c != b]).mean()
        reference = positives + negatives
        assert math.isclose(positives.item(), sum(softplus(-scores[b, b].item()) for b in range(5)) / 5, rel_tol=1e-12)
    assert torch.allclose(loss, reference, rtol=1e-12)
    for ours, theirs in zip(torch.autograd.grad(loss, (maps, vectors)), torch.autograd.grad(reference, (maps, vectors))):
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("estimator", ["infonce", "jsd"])
def test_local_objective_matches_its_formula_in_float64(estimator):
    torch.manual_seed(1)
    batch, width, positions = 3, 4, 5
    maps = torch.randn(batch, width, positions, dtype=torch.float64, requires_grad=True)
    vectors = torch.randn(batch, width, dtype=torch.float64, requires_grad=True)
    loss = local_mi_loss(maps, vectors, estimator)
    terms, negatives = [], []
    for b in range(batch):
        for p in range(positions):
            positive = vectors[b] @ maps[b, :, p] / 2  # /√E, E = 4
            others = [vectors[b] @ maps[c, :, q] / 2 for c in range(batch) if c != b for q in range(positions)]
            if estimator == "infonce":  # candidates: the positive and every position of every other image
                terms.append(-(positive - torch.logsumexp(torch.stack([positive, *others]), 0)))
            else:
                terms.append(F.softplus(-positive))
        if estimator == "jsd":
            negatives += [F.softplus(vectors[b] @ maps[c, :, q] / 2) for c in range(batch) if c != b
                          for q in range(positions)]
    reference = torch.stack(terms).mean() + (torch.stack(negatives).mean() if negatives else 0)
    assert torch.allclose(loss, reference, rtol=1e-12)
    for ours, theirs in zip(torch.autograd.grad(loss, (maps, vectors)), torch.autograd.grad(reference, (maps, vectors))):
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_dim_refuses_an_unknown_estimator(tiny_config):
    from train.methods import build_method

    with pytest.raises(ValueError, match="unknown --mi-estimator 'nwj'"):
        build_method(tiny_config(method="dim", transforms="none", mi_estimator="nwj"))


@pytest.mark.parametrize("spatial", [False, True])
def test_dim_critic_encoders_start_near_the_identity_and_end_in_layer_norm(spatial):
    from train.methods.infomax import ResidualEncoder

    torch.manual_seed(3)
    encoder = ResidualEncoder(5, 7, spatial=spatial)
    weight = encoder.shortcut.weight.detach().view(7, 5)
    assert torch.equal(weight.diagonal(), torch.ones(5)) and weight.fill_diagonal_(0).abs().max() <= 0.01
    x = torch.randn(6, 5, 3, 3) if spatial else torch.randn(6, 5)
    codes = encoder(x)
    per_code = codes.movedim(1, -1) if spatial else codes  # LayerNorm over the code's width at every position
    assert torch.allclose(per_code.mean(-1), torch.zeros(per_code.shape[:-1]), atol=1e-5)
    assert torch.allclose(per_code.var(-1, unbiased=False), torch.ones(per_code.shape[:-1]), atol=1e-3)
