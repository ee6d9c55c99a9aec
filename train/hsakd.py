"""HSAKD losses (methods.md, "HSAKD"), on the outputs of models.hsakd.HsakdNetwork.

    teacher:  Σ_l mean_r CE(q_l[r], y[b]·M + j) + CE(p[b·M + 0], y[b])
    student:  CE(p_S[identity rows], y) + τ²·KL(p_T ‖ p_S) + Σ_l τ²·KL(q_T,l ‖ q_S,l)   (KL over all B·M rows)
    mutual:   each network's teacher loss + τ²·KL against the other's detached head and branches
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels


def teacher_losses(outputs: dict, labels: torch.Tensor, num_transforms: int, *, backbone_frozen: bool = False,
                   backend: str = "auto") -> dict[str, torch.Tensor]:
    branch_terms = [kernels.joint_cross_entropy(q, labels, num_transforms, backend=backend)
                    for q in outputs["branches"]]
    losses = {f"branch{l + 1}_ce": term for l, term in enumerate(branch_terms)}
    total = torch.stack(branch_terms).sum()
    if not backbone_frozen:  # a frozen backbone's head has nothing to learn
        losses["head_ce"] = F.cross_entropy(outputs["logits"][::num_transforms].float(), labels)
        total = total + losses["head_ce"]
    return {"loss": total, **losses}


def distillation_terms(student: dict, teacher: dict, temperature: float, backend: str = "auto") -> dict:
    """τ²·KL of the head and of every branch, the teacher's side detached."""
    terms = {"head_kl": kernels.distillation_kl(student["logits"], teacher["logits"].detach(),
                                                temperature=temperature, backend=backend)}
    for l, (q_student, q_teacher) in enumerate(zip(student["branches"], teacher["branches"])):
        terms[f"branch{l + 1}_kl"] = kernels.distillation_kl(q_student, q_teacher.detach(), temperature=temperature,
                                                            backend=backend)
    return terms


def student_losses(student: dict, teacher: dict, labels: torch.Tensor, num_transforms: int, *,
                   temperature: float = 3.0, backend: str = "auto") -> dict[str, torch.Tensor]:
    if len(student["branches"]) != len(teacher["branches"]):
        raise ValueError(f"the student has {len(student['branches'])} branches, the teacher "
                         f"{len(teacher['branches'])}; HSAKD pairs need the same number of stages")
    head_ce = F.cross_entropy(student["logits"][::num_transforms].float(), labels)
    terms = distillation_terms(student, teacher, temperature, backend)
    return {"loss": head_ce + torch.stack(list(terms.values())).sum(), "head_ce": head_ce, **terms}


def mutual_losses(outputs: dict, labels: torch.Tensor, num_transforms: int, *, temperature: float = 3.0,
                  backend: str = "auto") -> dict[str, torch.Tensor]:
    losses, total = {}, 0.0
    for me, other in (("a", "b"), ("b", "a")):
        own = teacher_losses(outputs[me], labels, num_transforms, backend=backend)
        terms = distillation_terms(outputs[me], outputs[other], temperature, backend)
        part = own["loss"] + torch.stack(list(terms.values())).sum()
        losses[f"{me}_loss"] = part
        total = total + part
    return {"loss": total, **losses}


def class_scores(outputs: dict, num_transforms: int) -> dict[str, torch.Tensor]:
    """The backbone head on the identity view (the reported metric) and each branch's SI, for inspection."""
    scores = {"SI": outputs["logits"][::num_transforms]}
    for l, q in enumerate(outputs["branches"]):
        scores[f"branch{l + 1}"] = kernels.single_view_logits(q, num_transforms)
    return scores
