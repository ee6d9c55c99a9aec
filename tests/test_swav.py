"""SwAV: Sinkhorn's marginals (one process and two gloo ranks), the swapped-prediction loss against a float64
transcription, the multi-crop layout, and a digits run that trains, freezes its prototypes and resumes."""
import json
import math

import pytest
import torch

from pipeline import random_views as rv
from train.main import train
from train.methods.swav import sinkhorn, swapped_prediction


def unit(rows, dim, seed):
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_sinkhorn_codes_have_the_stated_marginals():
    """Rows (images) sum to 1 after every iteration count; every prototype's mass tends to B/K: within 1e-5
    after 3 iterations for near-uniform scores, and after 30 for 128-d unit vectors' cosines, where the
    paper's 3 leave it within a few percent (the method keeps the paper's 3: the codes are soft targets)."""
    scores = unit(96, 128, 0) @ unit(40, 128, 1).T
    equal_share = torch.full((40,), 96 / 40, dtype=torch.float64)
    for iterations in (3, 30):
        codes = sinkhorn(scores, iterations=iterations)
        assert codes.dtype == torch.float64 and (codes >= 0).all()
        assert torch.allclose(codes.sum(dim=1), torch.ones(96, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(codes.sum(dim=0), equal_share, rtol=1e-5)  # 30 iterations
    assert torch.allclose(sinkhorn(scores, iterations=3).sum(dim=0), equal_share, rtol=0.05)
    assert torch.allclose(sinkhorn(0.1 * scores).sum(dim=0), equal_share, rtol=1e-5)


@pytest.mark.distributed
def test_sinkhorn_over_two_ranks_gives_the_codes_of_the_whole_batch(quick_torchrun_verdicts):
    assert quick_torchrun_verdicts["sinkhorn"]["same_codes"]


def test_swapped_prediction_matches_its_formula_in_float64():
    torch.manual_seed(2)
    scores = [torch.randn(4, 6, dtype=torch.float64, requires_grad=True) for _ in range(5)]  # 2 global, 3 local
    codes = [torch.softmax(torch.randn(4, 6, dtype=torch.float64), dim=1) for _ in range(2)]
    loss = swapped_prediction(scores, codes, 0.1)
    per_code = []
    for v in range(2):
        crops = [c for c in range(5) if c != v]
        per_code.append(sum(-(codes[v] * torch.log_softmax(scores[c] / 0.1, dim=1)).sum(1).mean() for c in crops)
                        / len(crops))
    reference = sum(per_code) / 2
    assert torch.allclose(loss, reference, rtol=1e-12)
    for ours, theirs in zip(torch.autograd.grad(loss, scores), torch.autograd.grad(reference, scores)):
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_multi_crop_views_have_two_sizes_each_interleaved_by_image():
    recipe = rv.get_recipe("swav+3x6")
    assert len(recipe) == 5 and [spec.size for spec in recipe] == [0, 0, 6, 6, 6]
    assert recipe[2].crop_scale == rv.LOCAL_CROP_SCALE and recipe[0].crop_scale == rv.GLOBAL_CROP_SCALE
    images = torch.randint(0, 256, (4, 12, 12, 3), dtype=torch.uint8)
    expander = rv.RandomViewExpander(recipe, 12, (0.5,) * 3, (0.25,) * 3, seed=1)
    out = expander(images)
    assert isinstance(out, rv.MultiCropViews)
    assert out.global_views.shape == (8, 3, 12, 12) and out.local_views.shape == (12, 3, 6, 6)
    assert expander.full_size_equivalent_views == 2 + 3 * (6 / 12) ** 2  # what MFU counts
    # the layout: each group rendered from the same draws as a lone group would give, row b·V + v
    generator = rv.view_generator(1, 0, 0, 0)
    first = rv.render(images, rv.draw(recipe[:2], 4, 12, 12, generator), 12, (0.5,) * 3, (0.25,) * 3)
    second = rv.render(images, rv.draw(recipe[2:], 4, 12, 12, generator), 6, (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(out.global_views, first) and torch.equal(out.local_views, second)
    with pytest.raises(ValueError, match=r"\+<count>x<size>"):
        rv.get_recipe("swav+3")


def test_swav_trains_with_multi_crop_freezes_its_prototypes_and_resumes_exactly(tiny_config, tmp_path):
    config = tiny_config(method="swav", transforms="none", epochs=3, batch_size=32, samples_per_class=16,
                         projector_hidden=64, projector_dim=32, num_prototypes=20, local_views=2, local_size=8,
                         swav_queue_size=64, swav_queue_start_epoch=1, knn_k=20, lr=0.1, precision="fp32",
                         image_size=16, weight_decay=0.0)
    straight = train(config.__class__(**{**config.__dict__, "run_name": "straight"}))
    records = [json.loads(line) for line in (tmp_path / "runs" / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "step")
    manifest = json.loads((tmp_path / "runs" / "straight" / "config.json").read_text())
    assert manifest["view_recipe"] == "swav+2x8" and manifest["views_per_image"] == 4
    from conftest import pause_resume_and_compare

    first_epoch = {}

    def prototypes_after_the_frozen_epoch(checkpoint):
        # epoch 0 froze the prototypes: renormalised before every step and never updated, so still unit rows
        first_epoch["prototypes"] = checkpoint["model"]["prototypes.weight"]
        assert torch.allclose(first_epoch["prototypes"].norm(dim=1), torch.ones(20), atol=1e-5)

    a, b = pause_resume_and_compare(config, tmp_path, straight, prototypes_after_the_frozen_epoch)
    assert torch.equal(a["method_state"]["queue"], b["method_state"]["queue"])
    assert not torch.allclose(a["model"]["prototypes.weight"], first_epoch["prototypes"])  # trained afterwards


def test_swav_queue_length_is_all_ranks_together(tiny_config, monkeypatch):
    import kernels
    from train.methods import build_method

    config = tiny_config(method="swav", transforms="none", projector_hidden=16, projector_dim=8, num_prototypes=5,
                         swav_queue_size=96)
    from train.distributed import DistributedContext

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    four_ranks = DistributedContext(1, 4, torch.device("cpu"))  # the run's context, as build_training attaches it
    method = build_method(config)
    method.attach(four_ranks)
    method.build_model("resnet8", 10, kernels.get_family("none"), torch.device("cpu"), False)
    assert method.queue.shape == (2, 24, 8)  # facebookresearch/swav: queue_length // world_size on each rank
    with pytest.raises(ValueError, match="must divide by the world size 4"):
        uneven = build_method(config.__class__(**{**config.__dict__, "swav_queue_size": 90}))
        uneven.attach(four_ranks)
        uneven.build_model("resnet8", 10, kernels.get_family("none"), torch.device("cpu"), False)
