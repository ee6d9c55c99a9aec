"""One way to wire a run: `build(config, context) → Run`, which train/loop.py's `fit` trains.

`build_training` makes the parts a training step needs (method, views, loader, model, optimizer, schedule,
scaler, EMA, the step itself); the benchmarks call it alone, swapping one part through a documented argument
(the papers' data loader, the unfused optimizer). `build` adds what a whole run has besides: the data splits,
the evaluation loaders, the run directory and its log, the resumed state, the manifest, the profiler and the
FLOPs MFU is counted against.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import kernels
from pipeline.batch import LoaderSettings
from pipeline.datasets import build_splits, resolve_flip
from pipeline.image_set import DatasetSplits
from pipeline.loaders import LOADERS, build_loader
from pipeline.random_views import RandomViewExpander, get_recipe
from pipeline.sharding import STEP_STREAM, derived_seed
from pipeline.views import ViewExpander
from train.checkpoint import load_checkpoint, own_rng_states, read_checkpoint_file, restore_rng_states
from train.config import TrainConfig
from train.distributed import DistributedContext, broadcast_from_main
from train.graph_step import GraphedStep, graph_refusal, resolve_cuda_graph
from train.methods import Method, build_method
from train.mfu import flops_per_view, peak_flops, tf32_enabled
from train.optim import (PRECISION_DTYPES, autocast, autocast_context, build_ema, build_optimizer, build_scaler,
                         build_scheduler, resolve_precision)
from train.profiling import StepProfiler
from train.run_dir import ELASTIC_ID, RunStart, plan_run, restart_count
from train.run_log import RunLog
from train.step import TrainStep


@dataclass
class Progress:
    """Where training stands: what a checkpoint restores and the loop advances."""
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    best_score: float = -math.inf
    best_state: dict | None = None  # the evaluated model's weights when it scored best on validation


@dataclass
class Run:
    config: TrainConfig
    context: DistributedContext
    method: Method  # bound to its transformation family, kernel backend and the run's DistributedContext
    family: kernels.TransformFamily
    data: DatasetSplits
    precision: str  # fp32, bf16 or fp16: what autocast computes in
    expander: ViewExpander  # the family's M views (evaluation's too; contrastive training draws random views)
    train_loader: object
    model: torch.nn.Module  # the plain trained network (checkpoints, EMA, clipping)
    train_model: torch.nn.Module  # what the step calls: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    ema: torch.nn.Module | None
    step: object  # train.step.TrainStep, the method's own step around it (MAXL), or its CUDA-graph replay
    steps_per_epoch: int
    total_steps: int
    views_per_image: int  # views a training image becomes (M, or a random-view recipe's count)
    flop_views_per_image: float  # full-size views' worth of compute (multi-crop's small views count less)
    progress: Progress = field(default_factory=Progress)
    # ---- a whole run only (build); None where only a step was built (build_training)
    run_log: RunLog | None = None
    val_loader: object = None
    test_loader: object = None
    bank_loader: object = None  # the training split in order, identity views: the k-NN monitor's bank
    signals: object = None  # train.stopping.PreemptionSignals
    profiler: StepProfiler | None = None  # --profile's window, None without one
    view_flops: float = 0.0  # forward and backward FLOPs of one view
    device_peak: float = 1.0  # FLOP/s MFU is measured against
    peak_source: str = ""
    transform_trials: dict | None = None  # --transforms auto's decision
    last_val: dict = field(default_factory=dict)  # the last validation's scores
    cuda_graph: bool = False  # the step is a captured CUDA graph's replay (train/graph_step.py)
    graph_note: str = ""  # the header's line on it: on, or why not

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def skipped_images(self) -> list[str]:
        """The unreadable image files left out of the training and test splits."""
        return sorted(set(self.data.train.skipped_files) | set(self.data.test.skipped_files))

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def autocast(self):
        return autocast(self.precision, self.device)


def build_training(config: TrainConfig, context: DistributedContext, data: DatasetSplits, *,
                   method: Method | None = None, train_loader=None, fused_optimizer: bool = True) -> Run:
    """The parts of a training step, wired once. A bench may pass its own `train_loader` (the papers' per-sample
    DataLoader) or `fused_optimizer=False` (torch's default optimizer loop, as the papers run it)."""
    device = context.device
    kernels.follow_torch_threads()  # a Numba kernel leaves torch's thread count as it found it
    method = method or build_method(config)
    method.see_data(data)
    family = kernels.get_family(method.transform_family)
    kernels.check_family_fits(family, *data.train.image_shape)
    precision = resolve_precision(config, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark  # the shapes are fixed for the run
    if config.loader not in LOADERS:
        raise ValueError(f"unknown loader {config.loader!r}; valid: {', '.join(LOADERS)}")
    view_dtype = PRECISION_DTYPES[precision] if device.type == "cuda" else torch.float32
    expander = ViewExpander(family, data.mean, data.std, view_dtype, config.channels_last, config.kernels)
    settings = loader_settings(config, context, expander, config.batch_size, train=True)
    views_per_image, flop_views_per_image = family.num_transforms, float(family.num_transforms)
    recipe = method.training_view_recipe()  # contrastive methods: random views instead of the family's
    if recipe is not None:
        specs = get_recipe(recipe)
        if not settings.flip:  # the data set's recipe mirrors nothing (--flip)
            specs = tuple(replace(spec, flip_p=0.0) for spec in specs)
        random_expander = RandomViewExpander(specs, data.train.image_shape[0], data.mean, data.std,
                                             view_dtype, config.channels_last, config.seed, context.rank)
        settings = replace(settings, expander=random_expander, crop_padding=-1, dali_views=config.dali_views)
        views_per_image, flop_views_per_image = random_expander.num_views, random_expander.full_size_equivalent_views
    if train_loader is None:
        train_loader = build_loader(config.loader, data.train, settings, split_name=f"{config.dataset}-train")

    torch.manual_seed(config.seed)  # the model is identical on every rank (DDP also broadcasts rank 0's)
    method.attach(context, even_rows=not data.train.streaming)
    model = method.build_model(config.model, data.num_classes, family, device, config.channels_last)
    steps_per_epoch = len(train_loader) * method.passes_per_epoch
    total_steps = config.iterations or config.epochs * steps_per_epoch
    optimizer = build_optimizer(config, model, fused=fused_optimizer)
    scheduler = build_scheduler(config, optimizer, total_steps)
    scaler, ema = build_scaler(precision, device), build_ema(config, model)
    train_model = model
    if context.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(  # gradients live in DDP's buckets: no copy
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    if config.compile:
        train_model = torch.compile(train_model)
    step = method.make_step(TrainStep(train_model, model, method, optimizer, scheduler, scaler, ema,
                                      autocast_context(precision, device), config.grad_clip_norm), total_steps)
    refusal = graph_refusal(config, method, step, device, context.world_size, scaler)
    graphed, graph_note = resolve_cuda_graph(config.cuda_graph, refusal)
    if graphed:
        step = GraphedStep(step, device)
    run = Run(config, context, method, family, data, precision, expander, train_loader, model, train_model, optimizer,
              scheduler, scaler, ema, step, steps_per_epoch, total_steps, views_per_image, flop_views_per_image)
    run.cuda_graph, run.graph_note = graphed, graph_note
    return run


def bench_data(split) -> DatasetSplits:
    """One image set as a run's data (the benchmarks train on it and evaluate nothing), with its own statistics."""
    from pipeline.datasets import channel_statistics

    mean, std = channel_statistics(split.images[:1024])
    return DatasetSplits(split, split, split, mean, std)


def one_process(device: torch.device) -> DistributedContext:
    return DistributedContext(0, 1, device)


def cache_dir(config: TrainConfig) -> str:
    return config.beton_dir or str(Path(config.data_root) / "ffcv")


def loader_settings(config: TrainConfig, context: DistributedContext, expander, global_batch: int,
                    train: bool) -> LoaderSettings:
    """What every loader of the run is built from: the training loader's and the evaluation loaders'."""
    return LoaderSettings(expander=expander, device=context.device, global_batch=global_batch, train=train,
                          rank=context.rank, world_size=context.world_size, seed=config.seed,
                          crop_padding=config.crop_padding, flip=resolve_flip(config.flip, config.dataset),
                          workers=config.loader_workers,
                          cache_dir=cache_dir(config), strict_images=config.strict_images)


def plan_on_main(config: TrainConfig, context: DistributedContext) -> RunStart:
    """Rank 0 decides where the run writes and whether it continues (train/run_dir.py); every rank gets that
    decision, or the same refusal."""
    decision = None
    if context.is_main:
        try:
            decision = plan_run(config)
        except ValueError as refusal:
            decision = str(refusal)
    decision = broadcast_from_main(decision, context)
    if isinstance(decision, str):
        raise ValueError(decision)
    return decision


def build(config: TrainConfig, context: DistributedContext, start: RunStart, signals,
          transform_trials: dict | None = None) -> Run:
    """A whole run, ready for `fit`: data, the training parts, evaluation loaders, the resumed state, the log."""
    run_log = RunLog(start.run_dir, enabled=context.is_main)
    if start.note:
        run_log.print(start.note)
    method = build_method(config)  # its settings fail fast, before data
    data = build_splits(config.dataset, config.data_root, config.image_size, config.val_split, config.seed,
                        config.samples_per_class, config.imbalance_ratio, config.strict_images, config.primary_labels,
                        config.data_in_memory, cache_dir(config), config.test_split)
    run = build_training(config, context, data, method=method)
    run.run_log, run.signals, run.transform_trials = run_log, signals, transform_trials
    evaluation = loader_settings(config, context, run.expander, config.eval_batch_size * context.world_size,
                                 train=False)
    run.val_loader, run.test_loader = (build_loader(config.loader, split, evaluation,
                                                    split_name=f"{config.dataset}-{part}")
                                       for part, split in (("val", data.val), ("test", data.test)))
    if method.needs_training_features:  # k-NN evaluation: the whole training split on every rank
        whole_split = replace(evaluation, global_batch=config.eval_batch_size, rank=0, world_size=1)
        run.bank_loader = build_loader(config.loader, data.train, whole_split, split_name=f"{config.dataset}-train")
    step_seed = derived_seed(config.seed, context.rank, STEP_STREAM)  # per-rank streams for anything random in a step
    torch.manual_seed(step_seed)
    np.random.seed(step_seed % 2**32)
    if start.resume_from:
        resume(run, start.resume_from)
    if context.device.type == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        run_log.print("warning: OMP_WAIT_POLICY=passive makes every parallel region wait for the scheduler; "
                      "on a loaded CPU that can slow a step many times over (measure it: python -m train.commands.bench step "
                      "--background-load 1)")
    count_flops(run)
    if config.profile:  # otherwise no step calls into the profiler
        run.profiler = StepProfiler(config.profile, context.device, run_log.run_dir, context.rank)
    write_manifest(run)
    return run


def resume(run: Run, checkpoint_path: str) -> None:
    """Every state that decides the next step comes back, this rank's random streams included."""
    payload = load_checkpoint(checkpoint_path, run.config)
    run.method.check_resume(payload)
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    if run.scaler is not None and payload["scaler"]:
        run.scaler.load_state_dict(payload["scaler"])
    if run.ema is not None and payload["ema"]:
        run.ema.load_state_dict(payload["ema"])
    run.method.load_state_dict(payload.get("method_state", {}))  # e.g. MAXL's generator, its optimizer, schedule
    run.progress = Progress(payload["epoch"], payload["step"], payload["best_score"])
    restore_rng_states(own_rng_states(payload, run.context.rank, run.context.world_size))
    best_file = run.run_log.run_dir / "best.pt"
    if best_file.exists():
        run.progress.best_state = read_checkpoint_file(str(best_file), "best")["model"]


def count_flops(run: Run) -> None:
    """MFU's two figures: FLOPs of one view (counted once for the model and a frozen teacher) and the peak."""
    height, width, channels = run.data.train.image_shape
    sample = torch.zeros(run.family.num_transforms, channels, height, width, device=run.device,
                         dtype=run.expander.out_dtype)
    if run.config.channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    try:  # the model's first forward pass: where an image too small for its downsampling shows
        with run.autocast():
            run.view_flops = flops_per_view(run.model, sample, getattr(run.method, "teacher", None))
    except RuntimeError as error:
        if "size" not in str(error):
            raise
        raise ValueError(f"--image-size {height} is too small for --model {run.config.model}: its forward pass "
                         f"fails ({str(error).splitlines()[0]}); use larger images or a model that downsamples "
                         "less") from None
    run.device_peak, run.peak_source = peak_flops(run.device, run.precision)


def write_manifest(run: Run) -> None:
    config, context, data, device = run.config, run.context, run.data, run.device
    recipe = run.method.training_view_recipe()
    run.run_log.write_manifest(config, {
        "world_size": context.world_size, "device": str(device), "precision": run.precision,
        "num_classes": data.num_classes, "num_transforms": run.family.num_transforms,
        "flip": resolve_flip(config.flip, config.dataset),
        "views_per_image": run.views_per_image, "view_recipe": recipe, "train_images": len(data.train),
        "val_images": len(data.val), "test_images": len(data.test), "total_steps": run.total_steps,
        "flops_per_view": run.view_flops, "peak_flops": run.device_peak, "peak_source": run.peak_source,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
        "cuda_graph": run.cuda_graph,
        "tf32": tf32_enabled() if device.type == "cuda" else None, "skipped_images": run.skipped_images,
        "streamed": data.train.streaming, "elastic_run_id": os.environ.get(ELASTIC_ID), "restarts": restart_count(),
        **run.method.provenance()})
    run.run_log.print(f"{config.method} on {config.dataset} ({len(data.train)} train / {len(data.val)} val / "
                      f"{len(data.test)} test, {data.num_classes} classes), {run.method.transform_family} "
                      f"M={run.family.num_transforms}, {config.model}, {run.precision} on {device} "
                      f"×{context.world_size}, {run.total_steps} steps, run dir {run.run_log.run_dir}")
    run.run_log.print(f"MFU is measured against {run.device_peak / 1e12:.2f} TFLOP/s per device ({run.peak_source}); "
                      f"{run.view_flops / 1e6:,.1f} MFLOP per view, forward and backward")
    run.run_log.print(run.graph_note)

