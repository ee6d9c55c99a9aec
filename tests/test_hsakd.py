"""HSAKD networks and losses against a direct float64 implementation of docs/methods.md's formulas."""
import math

import pytest
import torch

import kernels
from models import HeadSpec, MultiHeadNetwork, build_backbone
from models.heads import IDENTITY_VIEW
from models.hsakd import HsakdNetwork, MutualPair
from train.methods import hsakd

COMPOSITE = kernels.for_device("torch", torch.device("cpu"))  # the eager reference kernels


def log_softmax64(x):
    x = x.double()
    return x - x.logsumexp(1, keepdim=True)


def ce64(logits, targets):
    return -log_softmax64(logits)[torch.arange(len(targets)), targets].mean()


def kl64(student, teacher, tau):
    p_teacher = log_softmax64(teacher / tau).exp()
    return tau**2 * (p_teacher * (log_softmax64(teacher / tau) - log_softmax64(student / tau))).sum(1).mean()


def random_outputs(batch, classes, transforms, branches, generator):
    rows = batch * transforms
    return {"logits": torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 3,
            "branches": [torch.randn(rows, classes * transforms, generator=generator, dtype=torch.float64) * 3
                         for _ in range(branches)]}


@pytest.mark.parametrize("batch,classes,transforms,branches", [(3, 5, 4, 3), (1, 7, 3, 4), (5, 1, 2, 3)])
def test_losses_equal_the_formulas(batch, classes, transforms, branches):
    generator = torch.Generator().manual_seed(batch * 100 + classes)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    joint = labels.repeat_interleave(transforms) * transforms + torch.arange(transforms).repeat(batch)
    tau = 3.0
    teacher = random_outputs(batch, classes, transforms, branches, generator)
    student = random_outputs(batch, classes, transforms, branches, generator)

    expected_teacher = sum(ce64(q, joint) for q in teacher["branches"]) + ce64(teacher["logits"][::transforms], labels)
    got = hsakd.teacher_losses(teacher, labels, transforms, loss_kernels=COMPOSITE)["loss"]
    assert math.isclose(got.item(), expected_teacher.item(), rel_tol=1e-6)
    frozen = hsakd.teacher_losses(teacher, labels, transforms, backbone_frozen=True, loss_kernels=COMPOSITE)["loss"]
    assert math.isclose(frozen.item(), (expected_teacher - ce64(teacher["logits"][::transforms], labels)).item(),
                        rel_tol=1e-6)

    expected_student = (ce64(student["logits"][::transforms], labels) + kl64(student["logits"], teacher["logits"], tau)
                        + sum(kl64(s, t, tau) for s, t in zip(student["branches"], teacher["branches"])))
    got = hsakd.student_losses(student, teacher, labels, transforms, temperature=tau, loss_kernels=COMPOSITE)["loss"]
    assert math.isclose(got.item(), expected_student.item(), rel_tol=1e-6)

    def direction(me, other):
        return (sum(ce64(q, joint) for q in me["branches"]) + ce64(me["logits"][::transforms], labels)
                + kl64(me["logits"], other["logits"], tau)
                + sum(kl64(s, t, tau) for s, t in zip(me["branches"], other["branches"])))
    got = hsakd.mutual_losses({"a": student, "b": teacher}, labels, transforms, temperature=tau, loss_kernels=COMPOSITE)
    assert math.isclose(got["loss"].item(), (direction(student, teacher) + direction(teacher, student)).item(),
                        rel_tol=1e-6)


def test_no_gradient_reaches_the_teacher_side():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 0, 2])
    student = random_outputs(3, 3, 4, 3, generator)
    teacher = random_outputs(3, 3, 4, 3, generator)
    for tensor in [student["logits"], *student["branches"], teacher["logits"], *teacher["branches"]]:
        tensor.requires_grad_(True)
    hsakd.student_losses(student, teacher, labels, 4, temperature=3.0, loss_kernels=COMPOSITE)["loss"].backward()
    assert all(t.grad is None for t in [teacher["logits"], *teacher["branches"]])
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in [student["logits"], *student["branches"]])


@pytest.mark.parametrize("name,stages", [("resnet8", 3), ("wrn16_2", 3), ("resnet8x4", 3), ("resnet18_cifar", 4)])
def test_networks_have_one_joint_branch_per_stage(name, stages):
    torch.manual_seed(0)
    network = HsakdNetwork(build_backbone(name), num_classes=5, num_transforms=4)
    outputs = network(torch.randn(8, 3, 16, 16))
    assert outputs["logits"].shape == (8, 5)
    assert [q.shape for q in outputs["branches"]] == [(8, 20)] * stages
    outputs["branches"][0].sum().backward()  # the first branch is fed by the first stage, not the later ones
    assert all(p.grad is not None for p in network.backbone.stages[0].parameters())
    assert all(p.grad is None for p in network.backbone.stages[-1].parameters())
    pair = MutualPair(network, HsakdNetwork(build_backbone(name), 5, 4))
    assert set(pair(torch.randn(4, 3, 16, 16))) == {"a", "b"}


def test_class_scores_report_the_head_and_every_branch():
    generator = torch.Generator().manual_seed(1)
    outputs = random_outputs(2, 3, 4, 3, generator)
    scores = hsakd.class_scores(outputs, 4)
    assert set(scores) == {"SI", "branch1", "branch2", "branch3"}
    assert torch.equal(scores["SI"], outputs["logits"][::4])
    assert torch.equal(scores["branch2"], outputs["branches"][1][::4, ::4])


# Published parameter counts of the plain networks (CIFAR-100 heads as in the CRD/HSAKD tables; ImageNet
# heads for the torchvision ResNets), and how many stages (= HSAKD branches) each has.
PUBLISHED = {"wrn40_2": (2.26e6, 100, 3), "wrn40_1": (0.57e6, 100, 3), "wrn16_2": (0.70e6, 100, 3),
             "resnet56": (0.86e6, 100, 3), "resnet20": (0.28e6, 100, 3), "resnet32x4": (7.43e6, 100, 3),
             "resnet8x4": (1.23e6, 100, 3), "vgg13": (9.46e6, 100, 4), "vgg8": (3.96e6, 100, 4),
             "mobilenetv2": (0.81e6, 100, 4), "shufflenet_v1": (0.95e6, 100, 3), "shufflenet_v2": (1.36e6, 100, 3),
             "resnet50_cifar": (23.71e6, 100, 4), "resnet34": (21.80e6, 1000, 4), "resnet18": (11.69e6, 1000, 4)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_architectures_match_their_published_size_and_build_with_branches(name):
    published, classes, stages = PUBLISHED[name]
    plain = MultiHeadNetwork(build_backbone(name), [HeadSpec("class", classes, IDENTITY_VIEW)], 1)
    count = sum(p.numel() for p in plain.parameters())
    assert abs(count / published - 1) < 0.01, (name, count, published)
    side = 64 if classes == 1000 else 32
    assert plain(torch.randn(2, 3, side, side))["class"].shape == (2, classes)
    branched = HsakdNetwork(build_backbone(name), num_classes=3, num_transforms=2)
    outputs = branched(torch.randn(2, 3, side, side))
    assert outputs["logits"].shape == (2, 3) and [q.shape for q in outputs["branches"]] == [(2, 6)] * stages
