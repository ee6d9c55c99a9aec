"""Train a self-supervised label augmentation (SLA) model; the torchrun entry point.

    one process (CPU or one GPU):  torchrun --standalone --nproc_per_node=1 train/main.py
    one node, 8 GPUs:              torchrun --standalone --nproc_per_node=8 train/main.py --preset sla-cifar100-resnet32
    several nodes:                 torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:PORT --nproc_per_node=8 train/main.py ...
    plain python works too:        python train/main.py --method sla --epochs 5

Every setting is a field of train/config.py:TrainConfig (`--help` lists them).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `torchrun train/main.py` finds the packages

import numpy as np
import torch

import kernels
from pipeline.batch import LoaderSettings
from pipeline.datasets import DataError, build_splits
from pipeline.image_set import WriteError
from pipeline.loaders import LOADERS, build_loader
from pipeline.phases import phase
from pipeline.random_views import RandomViewExpander, get_recipe
from pipeline.views import ViewExpander
from train.auto_transforms import choose_transforms
from train.checkpoint import (atomic_save, checkpoint_payload, every_rank_rng_states, load_checkpoint,
                              own_rng_states, read_checkpoint_file, restore_rng_states)
from train.config import PRESETS, TrainConfig, check_settings, config_from_namespace, parse_arguments
from train.distributed import all_reduce_sum, barrier, broadcast_from_main, init_distributed, shutdown
from train.evaluate import evaluate
from train.methods import METHODS, build_method
from train.mfu import flops_per_view, peak_flops, tf32_enabled
from train.profiling import StepProfiler, breakdown_table
from train.step import NonfiniteWatch, TrainStep
from train.optim import build_ema, build_optimizer, build_scaler, build_scheduler, resolve_precision
from train.run_dir import ELASTIC_ID, RunStart, plan_run, restart_count
from train.run_log import RunLog, accuracy_line, format_duration, summary_table
from train.stopping import EXIT_DIVERGED, EXIT_PREEMPTED, PreemptionSignals, weights_are_finite
from train.throughput import TrainingClock


def plan_on_main(config: TrainConfig, context) -> RunStart:
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


def train(config: TrainConfig) -> dict:
    """One run; the process group is torn down before returning, on success and on error alike."""
    check_settings(config)
    context = init_distributed(config.device, config.dist_timeout_s)
    signals = None
    try:
        signals = PreemptionSignals(context)
        summary = run(config, context, signals)
    except BaseException:
        if signals is not None:
            signals.close()
        shutdown(context, failed=True)
        raise
    signals.close()
    shutdown(context)
    return summary


def unreadable_this_epoch(loader, split, context) -> tuple[int, list[str]]:
    """Training files a streaming loader passed over this epoch, all ranks together, and a few of this rank's."""
    indices = getattr(loader, "skipped_this_epoch", [])
    total = all_reduce_sum(torch.tensor([len(indices)], device=context.device), context)
    return int(total.item()), [split.files[i] for i in indices[:5]]


def diverged(watch: NonfiniteWatch, model, context, check_weights: bool) -> str | None:
    """"non-finite loss at step S" (or weights, where asked: before evaluation and checkpoints) on any rank, else
    None; a collective under torchrun, called by every rank at the same point."""
    first = watch.first_bad_step(context)
    if first is not None:
        return f"non-finite loss at step {first}"
    if check_weights:
        finite = torch.tensor([float(weights_are_finite(model))], device=context.device)
        if all_reduce_sum(finite, context).item() < context.world_size:
            return "non-finite weights"
    return None


def mean_losses(loss_sums: dict, loss_counts: dict) -> dict:
    """Each loss part's mean over the steps that reported it (one host read per part)."""
    return {name: round(float(total) / loss_counts[name], 5) for name, total in loss_sums.items()}


def stop_early(reason: str, config: TrainConfig, context, run_log: RunLog, method, model, optimizer, scheduler,
               scaler, ema, epoch: int, step: int, steps_per_epoch: int, best_score: float, lr: float,
               recent_losses: dict) -> dict:
    """A preemption signal: last.pt at this step (mid-epoch: the epoch and the batches done in it), one line, and
    `--resume auto` continues exactly. A non-finite loss: the last finite last.pt and best.pt stay as they are,
    and the summary says why the run ended."""
    summary = {"completed": False, "stopped_by": reason, "step": step, "epoch": epoch,
               "run_dir": str(run_log.run_dir)}
    if reason.startswith("non-finite"):
        shown = ", ".join(f"{name} {value:.4g}" for name, value in recent_losses.items())
        run_log.record("summary", **summary, lr=lr, recent_losses=recent_losses, exit_status=EXIT_DIVERGED)
        run_log.print(f"stopped: {reason} (epoch {epoch + 1}, lr {lr:.4g}; mean losses over the last logged "
                      f"steps: {shown or 'none'}); last.pt and best.pt are the last finite ones, so lower --lr or "
                      "clip gradients (--grad-clip-norm) and continue with --resume auto")
        return summary
    rank_rng = every_rank_rng_states(context)  # a collective: every rank's own random streams
    if context.is_main:
        atomic_save(checkpoint_payload(config, model, optimizer, scheduler, scaler, ema, epoch, step, best_score,
                                       method.provenance(), method.backbone_name, rank_rng, method.state_dict()),
                    run_log.run_dir / "last.pt")
    barrier(context)
    run_log.record("stopped", **summary, batches_done_in_epoch=step - epoch * steps_per_epoch,
                   exit_status=EXIT_PREEMPTED)
    run_log.print(f"stopped by {reason} at epoch {epoch + 1} step {step}; continue with --resume auto")
    return summary


def run(config: TrainConfig, context, signals: PreemptionSignals) -> dict:
    device = context.device
    start = plan_on_main(config, context)
    run_log = RunLog(start.run_dir, enabled=context.is_main)
    if start.note:
        run_log.print(start.note)
    auto_decision = None
    if config.transforms == "auto":  # short trials of every family, scored on validation (train/auto_transforms.py)
        config, auto_decision = choose_transforms(config, start.run_dir, lambda trial: run(trial, context, signals),
                                                  run_log.print, lambda value: broadcast_from_main(value, context),
                                                  context.is_main)
        if "stopped" in auto_decision:
            return auto_decision["stopped"]

    method = build_method(config)  # its settings fail fast, before data

    # ---- data: uint8 images stay whole (or, for large folders, are streamed from their files);
    # views are made on the device, per batch
    cache_dir = config.beton_dir or str(Path(config.data_root) / "ffcv")
    splits = build_splits(config.dataset, config.data_root, config.image_size, config.val_split, config.seed,
                          config.samples_per_class, config.imbalance_ratio, config.strict_images,
                          config.primary_labels, config.data_in_memory, cache_dir)
    num_classes = splits.num_classes
    method.see_data(splits)
    skipped_images = sorted(set(splits.train.skipped_files) | set(splits.test.skipped_files))  # unreadable files
    family = kernels.get_family(method.transform_family)
    kernels.check_family_fits(family, *splits.train.image_shape)
    num_transforms = family.num_transforms
    precision = resolve_precision(config, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark  # the shapes are fixed for the run
    input_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if config.loader not in LOADERS:
        raise ValueError(f"unknown loader {config.loader!r}; valid: {', '.join(LOADERS)}")
    expander = ViewExpander(family, splits.mean, splits.std, input_dtype if device.type == "cuda" else torch.float32,
                            config.channels_last, config.kernels)
    shared = dict(expander=expander, device=device, rank=context.rank, world_size=context.world_size,
                  seed=config.seed, crop_padding=config.crop_padding, workers=config.loader_workers,
                  cache_dir=cache_dir, strict_images=config.strict_images)
    recipe = method.training_view_recipe()  # contrastive methods: random views instead of the family's
    views_per_image = num_transforms
    flop_views_per_image = float(num_transforms)  # full-size views' worth of compute (multi-crop's are smaller)
    train_shared = shared
    if recipe is not None:
        random_expander = RandomViewExpander(get_recipe(recipe), splits.train.image_shape[0], splits.mean,
                                             splits.std, expander.out_dtype, config.channels_last, config.seed,
                                             context.rank)
        train_shared = dict(shared, expander=random_expander, crop_padding=-1,  # the recipe crops and flips
                            dali_views=config.dali_views)
        views_per_image = random_expander.num_views
        flop_views_per_image = random_expander.full_size_equivalent_views
    train_loader = build_loader(config.loader, splits.train, LoaderSettings(
        global_batch=config.batch_size, train=True, **train_shared), split_name=f"{config.dataset}-train")
    bank_loader = None  # k-NN evaluation: the training split in order, identity views, whole on every rank
    if method.needs_training_features:
        bank_loader = build_loader(config.loader, splits.train, LoaderSettings(
            global_batch=config.eval_batch_size, train=False, **dict(shared, rank=0, world_size=1)),
            split_name=f"{config.dataset}-train")
    val_loader, test_loader = (build_loader(config.loader, split, LoaderSettings(
        global_batch=config.eval_batch_size * context.world_size, train=False, **shared),
        split_name=f"{config.dataset}-{part}") for part, split in (("val", splits.val), ("test", splits.test)))

    if device.type == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        run_log.print("warning: OMP_WAIT_POLICY=passive makes every parallel region wait for the scheduler; "
                      "on a loaded CPU that can slow a step many times over (measure it: python -m train.bench step "
                      "--background-load 1)")

    # ---- model, identical on every rank (DDP also broadcasts rank 0's weights)
    torch.manual_seed(config.seed)
    model = method.build_model(config.model, num_classes, family, device, config.channels_last)  # binds M, backend
    steps_per_epoch = len(train_loader) * method.passes_per_epoch
    total_steps = config.iterations or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, total_steps)
    scaler = build_scaler(precision, device)
    ema = build_ema(config, model)

    # ---- resume: every state that decides the next step comes back
    start_epoch, step, best_score, best_state, payload = 0, 0, -math.inf, None, None
    if start.resume_from:
        payload = load_checkpoint(start.resume_from, config)
        method.check_resume(payload)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload["scaler"]:
            scaler.load_state_dict(payload["scaler"])
        if ema is not None and payload["ema"]:
            ema.load_state_dict(payload["ema"])
        start_epoch, step, best_score = payload["epoch"], payload["step"], payload["best_score"]
        restore_rng_states(own_rng_states(payload, context.rank, context.world_size))
        best_file = run_log.run_dir / "best.pt"
        if best_file.exists():
            best_state = read_checkpoint_file(str(best_file), "best")["model"]
    else:
        torch.manual_seed(config.seed + context.rank)  # per-rank streams for anything random in the step
        np.random.seed((config.seed + context.rank) % 2**32)

    train_model = model
    if context.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if config.compile:
        train_model = torch.compile(train_model)
    eval_model = ema.module if ema is not None else model
    step_context = lambda: torch.autocast(device.type, dtype=input_dtype, enabled=precision != "fp32")  # noqa: E731
    train_step = method.make_step(TrainStep(train_model, model, method, optimizer, scheduler, scaler, ema,
                                            step_context, config.grad_clip_norm), total_steps)
    if payload is not None:
        method.load_state_dict(payload.get("method_state", {}))  # e.g. MAXL's generator, its optimizer and schedule
    # MFU: FLOPs of one view counted once for the model (and a frozen teacher), against the device's peak
    height, width, channels = splits.train.image_shape
    sample_views = torch.zeros(num_transforms, channels, height, width, device=device, dtype=expander.out_dtype)
    if config.channels_last:
        sample_views = sample_views.contiguous(memory_format=torch.channels_last)
    try:  # the model's first forward pass: where an image too small for its downsampling shows
        with step_context():
            view_flops = flops_per_view(model, sample_views, getattr(method, "teacher", None))
    except RuntimeError as error:
        if "size" not in str(error):
            raise
        raise ValueError(f"--image-size {height} is too small for --model {config.model}: its forward pass fails "
                         f"({str(error).splitlines()[0]}); use larger images or a model that downsamples less") from None
    device_peak, peak_source = peak_flops(device, precision)
    profiler = StepProfiler(config.profile, device, run_log.run_dir, context.rank)

    run_log.write_manifest(config, {"world_size": context.world_size, "device": str(device), "precision": precision,
                                    "num_classes": num_classes, "num_transforms": num_transforms,
                                    "views_per_image": views_per_image, "view_recipe": recipe,
                                    "train_images": len(splits.train), "val_images": len(splits.val),
                                    "test_images": len(splits.test), "total_steps": total_steps,
                                    "flops_per_view": view_flops, "peak_flops": device_peak, "peak_source": peak_source,
                                    "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
                                    "tf32": tf32_enabled() if device.type == "cuda" else None,
                                    "skipped_images": skipped_images, "streamed": splits.train.streaming,
                                    "elastic_run_id": os.environ.get(ELASTIC_ID), "restarts": restart_count(),
                                    **method.provenance()})
    run_log.print(f"{config.method} on {config.dataset} ({len(splits.train)} train / {len(splits.val)} val / "
                  f"{len(splits.test)} test, {num_classes} classes), {method.transform_family} "
                  f"M={num_transforms}, {config.model}, {precision} on {device} ×{context.world_size}, "
                  f"{total_steps} steps, run dir {run_log.run_dir}")
    run_log.print(f"MFU is measured against {device_peak / 1e12:.2f} TFLOP/s per device ({peak_source}); "
                  f"{view_flops / 1e6:,.1f} MFLOP per view, forward and backward")

    # ---- training
    images_per_step = config.batch_size  # source images, all ranks together
    batches_done = step - start_epoch * steps_per_epoch  # a run stopped mid-epoch continues at its next batch
    watch = NonfiniteWatch(device, step)
    stopped_by = None
    recent_losses: dict = {}  # the last progress line's, for the line that reports a non-finite loss
    run_start = time.perf_counter()
    clock = TrainingClock(device)
    steps_this_run = 0
    last_val: dict = {}
    loss_sums: dict[str, torch.Tensor] = {}  # since the last progress line, which may lie in the previous epoch
    loss_counts: dict[str, int] = {}  # steps that reported each part (MAXL's two passes report different parts)
    data_time = 0.0
    unreadable = 0  # streamed folders: training files passed over in the last epoch, all ranks
    for epoch in range(start_epoch, epochs):
        model.train()
        clock.resume()
        batches = method.epoch_batches(train_loader, epoch)  # reshuffled per epoch (per pass for MAXL)
        for _ in range(batches_done if epoch == start_epoch else 0):  # the same order and draws, read and dropped
            next(batches)
        while step < total_steps:
            profiler.begin_step(steps_this_run)
            # data time: the host's wait for the loader. No loader waits for the device (tests/test_host_syncs.py),
            # so on a GPU this is not the previous step's backlog; the profile window splits every phase exactly.
            fetch_start = time.perf_counter()
            with phase("data"):
                batch = next(batches, None)
            if batch is None:
                break
            data_time += time.perf_counter() - fetch_start
            losses = train_step(batch)
            watch.update(losses["loss"])  # on the device: no sync
            profile = profiler.end_step(steps_this_run)
            if profile is not None and context.is_main:
                run_log.record("profile", step=step + 1, **profile)
                run_log.print(breakdown_table(profile))
            step += 1
            steps_this_run += 1
            clock.step_done()
            stopped_by = signals.poll(step) if step < total_steps else None  # a signal after the last step: finish
            for name, value in losses.items():  # summed on the device: no host sync per step
                loss_sums[name] = loss_sums.get(name, 0.0) + value.detach().float()
                loss_counts[name] = loss_counts.get(name, 0) + 1

            if step % config.log_every == 0 or step == total_steps:
                interval_steps, elapsed = clock.interval()  # synchronised on a GPU
                method.check_deferred_errors()  # what the kernels flagged without a sync (bad labels on CUDA)
                stopped_by = stopped_by or diverged(watch, model, context, check_weights=False)
                means = recent_losses = mean_losses(loss_sums, loss_counts)
                images_per_second = interval_steps * images_per_step / elapsed
                mfu = view_flops * images_per_second * flop_views_per_image / (device_peak * context.world_size)
                eta = clock.all_seconds / steps_this_run * (total_steps - step)
                lr = scheduler.get_last_lr()[0]
                run_log.record("step", epoch=epoch, step=step, lr=lr, images_per_s=round(images_per_second, 2),
                               views_per_s=round(images_per_second * views_per_image, 2), mfu=round(mfu, 5),
                               data_time_s=round(data_time, 4), compute_time_s=round(elapsed - data_time, 4),
                               **means)
                parts = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
                run_log.print(f"epoch {epoch + 1}/{epochs} step {step}/{total_steps} loss {means['loss']:.4f}"
                              f"{' (' + parts + ')' if parts else ''} lr {lr:.4g} {images_per_second:,.0f} img/s "
                              f"MFU {100 * mfu:.1f}% data {100 * data_time / elapsed:.0f}% ETA {format_duration(eta)}")
                loss_sums, loss_counts, data_time = {}, {}, 0.0
            if stopped_by:
                break

        clock.pause()  # evaluation and checkpoints are not training time
        stopped_by = stopped_by or diverged(watch, model, context, check_weights=True)
        if stopped_by:
            return stop_early(stopped_by, config, context, run_log, method, model, optimizer, scheduler, scaler, ema,
                              epoch, step, steps_per_epoch, best_score, scheduler.get_last_lr()[0],
                              mean_losses(loss_sums, loss_counts) or recent_losses)
        unreadable, examples = unreadable_this_epoch(train_loader, splits.train, context)  # streamed folders
        if unreadable:
            run_log.record("unreadable", epoch=epoch + 1, step=step, count=unreadable, examples=examples)
            run_log.print(f"epoch {epoch + 1}: {unreadable} unreadable training images skipped "
                          f"(e.g. {examples[0] if examples else 'on another rank'}; --strict-images fails instead)")
        finished = step >= total_steps
        stopping = finished or epoch + 1 - start_epoch == config.stop_after_epochs
        if (epoch + 1) % config.eval_every == 0 or finished:
            method.before_evaluation(eval_model, bank_loader, step_context)  # e.g. the k-NN bank
            last_val = evaluate(eval_model, method, val_loader, num_classes, context, step_context)
            score = last_val[method.primary_score]
            improved = score > best_score
            if improved:
                best_score = score
                best_state = copy.deepcopy(eval_model.state_dict())
                if context.is_main:
                    atomic_save({"model": best_state, "epoch": epoch + 1, "score": score,
                                 "config": dataclasses.asdict(config), "backbone": method.backbone_name,
                                 "provenance": method.provenance()},
                                run_log.run_dir / "best.pt")
            run_log.record("epoch", epoch=epoch + 1, step=step, split="val", skipped_images=len(skipped_images),
                           **last_val)
            run_log.print(f"epoch {epoch + 1}/{epochs} val {accuracy_line(last_val)}{'  (best)' if improved else ''}")
        if (epoch + 1) % config.checkpoint_every == 0 or stopping:
            rank_rng = every_rank_rng_states(context)  # a collective: every rank's own random streams
            if context.is_main:
                atomic_save(checkpoint_payload(config, model, optimizer, scheduler, scaler, ema, epoch + 1, step,
                                               best_score, method.provenance(), method.backbone_name, rank_rng,
                                               method.state_dict()),
                            run_log.run_dir / "last.pt")
        if stopping:
            break
    barrier(context)
    wall_time = time.perf_counter() - run_start
    if step < total_steps:  # --stop-after-epochs: the test split waits for the end of training
        run_log.record("paused", epoch=epoch + 1, step=step, wall_time_s=round(wall_time, 2))
        run_log.print(f"stopped after epoch {epoch + 1} at step {step}/{total_steps}; continue with "
                      f"--resume {run_log.run_dir / 'last.pt'}")
        return {"completed": False, "step": step, "run_dir": str(run_log.run_dir)}

    # ---- test, once, with the weights that scored best on validation
    if best_state is not None:
        eval_model.load_state_dict(best_state)
    method.before_evaluation(eval_model, bank_loader, step_context)
    test = evaluate(eval_model, method, test_loader, num_classes, context, step_context)
    run_log.record("test", split="test", **test)
    images_per_second, throughput_note = clock.images_per_second(images_per_step)
    summary = {"completed": True, "method": config.method, "dataset": config.dataset, "model": config.model,
               "transforms": family.name, "num_transforms": num_transforms, "steps": step,
               "wall_time_s": round(wall_time, 2), "training_time_s": round(clock.all_seconds, 2),
               "images_per_s": round(images_per_second, 2), "images_per_s_counts": throughput_note,
               "mfu": round(view_flops * images_per_second * flop_views_per_image / (device_peak * context.world_size),
                            5),
               "best_val": best_score, "primary_score": method.primary_score,
               "skipped_images": len(skipped_images) or unreadable,
               "val": {k: v for k, v in last_val.items() if "per_class" not in k},
               "test": {k: v for k, v in test.items() if "per_class" not in k},
               "test_per_class": test.get(f"{method.primary_score}_per_class"), "run_dir": str(run_log.run_dir)}
    if auto_decision is not None:
        summary["transform_trials"] = {k: auto_decision[k] for k in ("winner", "trial_steps", "trial_wall_time_s")}
    run_log.record("summary", **summary)
    rows = [("method / model", f"{config.method} / {config.model}, {family.name} (M={num_transforms})"),
            ("data", f"{config.dataset}: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test"
                     + (f", {len(skipped_images)} unreadable images skipped" if skipped_images else "")
                     + (f", {unreadable} unreadable training images skipped per epoch" if unreadable else "")
                     + (", streamed from its files" if splits.train.streaming else "")),
            ("steps", f"{step} ({format_duration(wall_time)} this run, {summary['images_per_s']:,.0f} img/s "
                      f"in training steps, MFU {100 * summary['mfu']:.1f}%)"),
            (f"best val {method.primary_score}", f"{best_score:.2f}%")]
    if auto_decision is not None:
        rows.insert(1, ("transforms", f"auto: {auto_decision['winner']} (trials: {auto_decision['trial_steps']} "
                                      f"steps, {format_duration(auto_decision['trial_wall_time_s'])}, not counted above)"))
    rows += [(f"test {score}", f"{test[score]:.2f}%  (per-class mean {np.mean(test[score + '_per_class']):.2f}%)")
             for score in method.score_names() if not score.startswith("branch")]
    if "teacher" in method.provenance():
        rows.append(("teacher", f"{method.provenance()['teacher_model']} from {method.provenance()['teacher']}"))
    rows.append(("run directory", str(run_log.run_dir)))
    run_log.print(summary_table(rows))
    return summary


def main(argv: list[str] | None = None) -> int:
    namespace = parse_arguments(argv)
    try:
        config = config_from_namespace(namespace)
        if namespace.list_presets:
            print("\n".join(sorted(PRESETS)))
            return 0
        if namespace.list_methods:
            print("\n".join(METHODS))
            return 0
        summary = train(config)
        stopped_by = summary.get("stopped_by", "")
        return EXIT_DIVERGED if stopped_by.startswith("non-finite") else EXIT_PREEMPTED if stopped_by else 0
    except (ValueError, DataError, FileNotFoundError, WriteError) as error:
        # A bad setting, bad data or a file that cannot be written is the user's to fix: one line, no traceback.
        if namespace.debug_errors:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
