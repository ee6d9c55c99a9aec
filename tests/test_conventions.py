"""Layout and label conventions of docs/methods.md, checked against direct loops."""
import itertools

import numpy as np
import pytest
import torch

import kernels
from kernels import reference


def direct_view(image_chw: torch.Tensor, family, j: int) -> torch.Tensor:
    rotated = torch.rot90(image_chw, family.quarter_turns[j], dims=(-2, -1))
    return rotated[list(family.channel_orders[j])]


def test_family_sizes_and_orders():
    expected = {"none": 1, "rotation": 4, "rotation2": 2, "color_perm": 6, "color_perm3": 3,
                "rot_color_perm6": 6, "rot_color_perm12": 12, "rot_color_perm24": 24}
    assert {name: f.num_transforms for name, f in kernels.FAMILIES.items()} == expected
    names = ["".join("RGB"[c] for c in order) for order in kernels.get_family("color_perm").channel_orders]
    assert names == ["RGB", "RBG", "GRB", "GBR", "BRG", "BGR"]
    names3 = ["".join("RGB"[c] for c in order) for order in kernels.get_family("color_perm3").channel_orders]
    assert names3 == ["RGB", "GBR", "BRG"]
    assert kernels.get_family("rotation2").quarter_turns == (0, 2)
    family24 = kernels.get_family("rot_color_perm24")
    for rot_index, perm_index in itertools.product(range(4), range(6)):  # j = rot_index · P + perm_index
        j = rot_index * 6 + perm_index
        assert family24.quarter_turns[j] == rot_index
        assert family24.channel_orders[j] == tuple(itertools.permutations((0, 1, 2)))[perm_index]
    family6 = kernels.get_family("rot_color_perm6")
    assert family6.quarter_turns == (0, 0, 0, 2, 2, 2)


@pytest.mark.parametrize("family_name", sorted(kernels.FAMILIES))
def test_expand_views_layout_matches_direct_loop(family_name):
    family = kernels.get_family(family_name)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 5, 5, 3), dtype=torch.uint8, generator=generator)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    views = kernels.expand_views(images, family, mean=mean, std=std, backend="torch")
    assert views.shape == (3 * family.num_transforms, 3, 5, 5)
    assert views.is_contiguous(memory_format=torch.channels_last)
    for b in range(3):
        normalised = (images[b].permute(2, 0, 1).double() / 255 - torch.tensor(mean).double()[:, None, None]) \
            / torch.tensor(std).double()[:, None, None]
        for j in range(family.num_transforms):
            expected = direct_view(normalised, family, j)
            torch.testing.assert_close(views[b * family.num_transforms + j].double(), expected, atol=2e-6, rtol=0)


def test_rotation_on_non_square_images_is_refused():
    images = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="square"):
        kernels.expand_views(images, "rotation", mean=(0, 0, 0), std=(1, 1, 1))
    kernels.expand_views(images, "rotation2", mean=(0, 0, 0), std=(1, 1, 1))  # 180° is defined


def test_joint_labels_si_and_ag_match_direct_formulas():
    rng = np.random.default_rng(3)
    batch, classes, transforms = 5, 7, 3
    logits = torch.from_numpy(rng.normal(size=(batch * transforms, classes * transforms)))
    labels = torch.from_numpy(rng.integers(0, classes, size=batch))
    targets = reference.joint_targets(labels, transforms)
    for b, j in itertools.product(range(batch), range(transforms)):
        assert targets[b * transforms + j] == labels[b] * transforms + j
    si = kernels.single_view_logits(logits, transforms)
    ag = kernels.aggregate_logits(logits, transforms, backend="torch")
    for b, i in itertools.product(range(batch), range(classes)):
        assert si[b, i] == logits[b * transforms, i * transforms]
        direct = sum(logits[b * transforms + j, i * transforms + j] for j in range(transforms)) / transforms
        assert abs(ag[b, i].item() - direct.item()) < 1e-6
    loss = kernels.joint_cross_entropy(logits, labels, transforms, backend="torch")
    direct_loss = np.mean([-(torch.log_softmax(logits[r], 0)[targets[r]]).item() for r in range(batch * transforms)])
    assert abs(loss.item() - direct_loss) < 1e-6
    summed = kernels.joint_cross_entropy(logits, labels, transforms, sum_over_transforms=True, backend="torch")
    assert abs(summed.item() - transforms * direct_loss) < 1e-5


def test_labels_out_of_range_are_refused():
    logits = torch.zeros(6, 9)
    with pytest.raises(ValueError, match=r"label 3 is outside \[0, 3\)"):
        kernels.joint_cross_entropy(logits, torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="labels shape"):
        kernels.joint_cross_entropy(logits, torch.tensor([0, 1, 2]), 3)
