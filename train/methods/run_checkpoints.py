"""Checkpoints that a run builds on: an HSAKD teacher for a student (`--teacher`), a pretrained
backbone to freeze under a teacher's branches (`--frozen-backbone`) or to start or probe any method
from (`--init-from`, `--pretrained`). All are this trainer's own
run checkpoints (best.pt or last.pt), which carry the configuration they were trained with."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from kernels import get_family
from models import build_backbone
from models.hsakd import HsakdNetwork
from pipeline.hashing import file_digest
from train.checkpoint import read_checkpoint_file

BRANCHED_METHODS = ("hsakd_teacher", "hsakd_online")  # their checkpoints hold per-stage joint branches
CLASS_HEAD_PREFIXES = ("head.", "heads.class.", "heads.sd.")  # N-way heads, HSAKD's first, then baseline/da/mt, SD


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def read_run_checkpoint(path: str, flag: str) -> dict:
    payload = read_checkpoint_file(path, flag)
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ValueError(f"{flag} checkpoint {path} is not a run checkpoint of this trainer (no model and config); "
                         "pass a run's best.pt or last.pt")
    return payload


def network_state(payload: dict) -> dict[str, torch.Tensor]:
    """The state of one network; an online pair's first network ("a")."""
    state = payload["model"]
    if payload["config"].get("method") == "hsakd_online":
        state = {key[2:]: value for key, value in state.items() if key.startswith("a.")}
    return state


def load_teacher(path: str, num_classes: int, family, expected_model: str = "") -> tuple[HsakdNetwork, dict]:
    """The teacher network, frozen (eval mode, no gradients), on the CPU, and its provenance record. `family`
    None: a student that reads only the teacher's class head (plain KD), whatever views its branches learned."""
    payload = read_run_checkpoint(path, "--teacher")
    config = payload["config"]
    method, model_name = config.get("method"), config.get("model")
    if method not in BRANCHED_METHODS:
        raise ValueError(f"--teacher checkpoint {path} was trained with --method {method}; an HSAKD teacher needs "
                         f"per-stage joint branches: train it with --method hsakd_teacher")
    if expected_model and model_name != expected_model:
        raise ValueError(f"--teacher checkpoint {path} is a {model_name}, but --teacher-model is {expected_model}")
    state = network_state(payload)
    teacher_classes = state["head.weight"].shape[0]
    if teacher_classes != num_classes:
        raise ValueError(f"--teacher checkpoint {path} was trained for {teacher_classes} classes, "
                         f"but this run's data has {num_classes}")
    if family is not None and config.get("transforms") != family.name:
        raise ValueError(f"--teacher checkpoint {path} was trained with --transforms {config.get('transforms')}, "
                         f"but this run uses {family.name} (M={family.num_transforms}); the joint label spaces differ")
    teacher = HsakdNetwork(build_backbone(model_name), num_classes, get_family(config.get("transforms")).num_transforms)
    teacher.load_state_dict(state)
    teacher.requires_grad_(False)
    teacher.eval()
    record = {"teacher": str(Path(path).resolve()), "teacher_sha256": file_sha256(path), "teacher_model": model_name,
              "teacher_method": method, "teacher_val_score": payload.get("score", payload.get("best_score"))}
    return teacher, record


def pretrained_backbone(path: str, flag: str, model_name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone weights of a run checkpoint trained with `model_name` (--frozen-backbone, --init-from,
    --pretrained), and the checkpoint's payload."""
    payload = read_run_checkpoint(path, flag)
    made_with = payload.get("backbone", payload["config"].get("model"))
    if made_with != model_name:
        raise ValueError(f"{flag} checkpoint {path} holds a {made_with} backbone, but this run's --model is "
                         f"{model_name}")
    backbone = {key[len("backbone."):]: value for key, value in network_state(payload).items()
                if key.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"{flag} checkpoint {path} holds no backbone (its method is "
                         f"{payload['config'].get('method')})")
    return backbone, payload


def load_frozen_backbone(network: HsakdNetwork, path: str, model_name: str) -> dict:
    """Load a pretrained backbone and its N-way head into `network` and freeze them; returns the provenance."""
    backbone, payload = pretrained_backbone(path, "--frozen-backbone", model_name)
    network.backbone.load_state_dict(backbone)
    state = network_state(payload)
    head_shape = tuple(network.head.weight.shape)
    for prefix in CLASS_HEAD_PREFIXES:
        if tuple(state.get(prefix + "weight", torch.empty(0)).shape) == head_shape:
            network.head.load_state_dict({"weight": state[prefix + "weight"], "bias": state[prefix + "bias"]})
            break
    else:
        raise ValueError(f"--frozen-backbone checkpoint {path} has no {head_shape[0]}-way class head "
                         f"(its method {payload['config'].get('method')} has none or another class count); "
                         "use a baseline, da, mt, sla_sd or hsakd_teacher run")
    network.freeze_backbone()
    return {"frozen_backbone": str(Path(path).resolve()), "frozen_backbone_sha256": file_sha256(path)}


def load_backbone(backbone: nn.Module, path: str, flag: str, model_name: str) -> dict:
    """Copy a run checkpoint's backbone weights into `backbone` (same architecture, every tensor); returns
    the provenance record (path, SHA-256, the method that trained it)."""
    state, payload = pretrained_backbone(path, flag, model_name)
    backbone.load_state_dict(state)
    key = flag.lstrip("-").replace("-", "_")
    return {key: str(path), f"{key}_sha256": file_sha256(path), f"{key}_method": payload["config"].get("method")}
