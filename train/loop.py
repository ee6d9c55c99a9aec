"""`fit(run)`: the training loop, read top to bottom. train/run.py builds the Run; this file trains it, evaluates
each epoch, keeps best.pt and last.pt, stops cleanly on a preemption signal or a non-finite loss, and ends with
the test split and a summary."""
from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch

from pipeline import phases
from train.checkpoint import atomic_save, checkpoint_payload, every_rank_rng_states
from train.distributed import all_reduce_sum, barrier
from train.evaluate import evaluate
from train.run import Run
from train.run_log import accuracy_line, format_duration, summary_table
from train.step import LossMeter, NonfiniteWatch
from train.stopping import EXIT_DIVERGED, EXIT_PREEMPTED, weights_are_finite
from train.throughput import TrainingClock


def fit(run: Run) -> dict:
    """Train `run` to its last step (or its --stop-after-epochs pause, a signal, a non-finite loss) and return the
    summary; every rank runs this in lockstep."""
    config, progress, log = run.config, run.progress, run.run_log
    clock, losses, watch = TrainingClock(run.device), LossMeter(), NonfiniteWatch(run.device, progress.step)
    stopped_by, first_epoch, epoch, unreadable = None, progress.epoch, progress.epoch, 0
    for epoch in range(first_epoch, run.epochs):
        run.model.train()
        clock.resume()
        batches = run.method.epoch_batches(run.train_loader, epoch)  # reshuffled per epoch (per pass for MAXL)
        for _ in range(progress.step - epoch * run.steps_per_epoch if epoch == first_epoch else 0):
            next(batches)  # a run stopped mid-epoch continues at its next batch: the same order and draws
        while progress.step < run.total_steps and not stopped_by:
            if run.profiler:
                run.profiler.begin_step(clock.steps)
            fetch_start = time.perf_counter()
            with phases.phase("data"):  # the host's wait for the loader (no loader waits for the device)
                batch = next(batches, None)
            if batch is None:
                break
            clock.data_seconds += time.perf_counter() - fetch_start
            step_losses = run.step(batch)
            watch.update(step_losses["loss"])  # on the device: no sync
            losses.add(step_losses)
            if run.profiler:
                record_profile(run, run.profiler.end_step(clock.steps), progress.step + 1)
            progress.step += 1
            clock.step_done()
            stopped_by = run.signals.poll(progress.step) if progress.step < run.total_steps else None
            if progress.step % config.log_every == 0 or progress.step == run.total_steps:
                stopped_by = stopped_by or log_progress(run, epoch, clock, losses, watch)
        clock.pause()  # evaluation and checkpoints are not training time
        stopped_by = stopped_by or divergence(run, watch, check_weights=True)
        if stopped_by:
            return stop_early(run, stopped_by, epoch, losses.means() or losses.last_means)
        unreadable = report_unreadable(run, epoch)
        finished = progress.step >= run.total_steps
        pausing = finished or epoch + 1 - first_epoch == config.stop_after_epochs
        if (epoch + 1) % config.eval_every == 0 or finished:
            validate(run, epoch)
        if (epoch + 1) % config.checkpoint_every == 0 or pausing:
            save_last(run, epoch + 1)
        if pausing:
            break
    barrier(run.context)
    if progress.step < run.total_steps:  # --stop-after-epochs: the test split waits for the end of training
        log.record("paused", epoch=epoch + 1, step=progress.step, wall_time_s=round(clock.wall_seconds, 2))
        log.print(f"stopped after epoch {epoch + 1} at step {progress.step}/{run.total_steps}; continue with "
                  f"--resume {log.run_dir / 'last.pt'}")
        return {"completed": False, "step": progress.step, "run_dir": str(log.run_dir)}
    return test_and_summarise(run, clock, unreadable)


def record_profile(run: Run, profile: dict | None, step: int) -> None:
    if profile is not None and run.context.is_main:
        from train.profiling import breakdown_table

        run.run_log.record("profile", step=step, **profile)
        run.run_log.print(breakdown_table(profile))


def log_progress(run: Run, epoch: int, clock: TrainingClock, losses: LossMeter, watch: NonfiniteWatch) -> str | None:
    """The progress line and its JSON record (the interval's synchronisation point); a non-finite loss seen
    since the last one stops the run."""
    interval_steps, elapsed = clock.interval()  # synchronised on a GPU
    run.method.check_deferred_errors()  # what the kernels flagged without a sync (bad labels on CUDA)
    stopped_by = divergence(run, watch, check_weights=False)
    means, data_seconds = losses.take(), clock.take_data_seconds()
    images_per_second = interval_steps * run.config.batch_size / elapsed
    mfu = mfu_of(run, images_per_second)
    eta = clock.all_seconds / max(clock.steps, 1) * (run.total_steps - run.progress.step)
    lr = float(run.scheduler.get_last_lr()[0])  # a device tensor under --cuda-graph: read where the loop syncs
    run.run_log.record("step", epoch=epoch, step=run.progress.step, lr=lr, images_per_s=round(images_per_second, 2),
                       views_per_s=round(images_per_second * run.views_per_image, 2), mfu=round(mfu, 5),
                       data_time_s=round(data_seconds, 4), compute_time_s=round(elapsed - data_seconds, 4), **means)
    parts = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
    run.run_log.print(f"epoch {epoch + 1}/{run.epochs} step {run.progress.step}/{run.total_steps} loss "
                      f"{means['loss']:.4f}{' (' + parts + ')' if parts else ''} lr {lr:.4g} "
                      f"{images_per_second:,.0f} img/s MFU {100 * mfu:.1f}% data {100 * data_seconds / elapsed:.0f}% "
                      f"ETA {format_duration(eta)}")
    return stopped_by


def mfu_of(run: Run, images_per_second: float) -> float:
    return (run.view_flops * images_per_second * run.flop_views_per_image
            / (run.device_peak * run.context.world_size))


def divergence(run: Run, watch: NonfiniteWatch, check_weights: bool) -> str | None:
    """"non-finite loss at step S" (or weights, where asked: before evaluation and checkpoints) on any rank, else
    None; a collective under torchrun, called by every rank at the same point."""
    first = watch.first_bad_step(run.context)
    if first is not None:
        return f"non-finite loss at step {first}"
    if check_weights:
        finite = torch.tensor([float(weights_are_finite(run.model))], device=run.device)
        if all_reduce_sum(finite, run.context).item() < run.context.world_size:
            return "non-finite weights"
    return None


def stop_early(run: Run, reason: str, epoch: int, recent_losses: dict) -> dict:
    """A preemption signal: last.pt at this step (mid-epoch: `epoch` counts the epochs completed before it), one
    line, and `--resume auto` continues exactly. A non-finite loss: the last finite last.pt and best.pt stay as
    they are, and the summary says why the run ended."""
    log, step = run.run_log, run.progress.step
    summary = {"completed": False, "stopped_by": reason, "step": step, "epoch": epoch, "run_dir": str(log.run_dir)}
    if reason.startswith("non-finite"):
        lr = float(run.scheduler.get_last_lr()[0])  # a device tensor under --cuda-graph: read where the loop syncs
        shown = ", ".join(f"{name} {value:.4g}" for name, value in recent_losses.items())
        log.record("summary", **summary, lr=lr, recent_losses=recent_losses, exit_status=EXIT_DIVERGED)
        log.print(f"stopped: {reason} (epoch {epoch + 1}, lr {lr:.4g}; mean losses over the last logged steps: "
                  f"{shown or 'none'}); last.pt and best.pt are the last finite ones, so lower --lr or clip "
                  "gradients (--grad-clip-norm) and continue with --resume auto")
        return summary
    save_last(run, epoch)
    barrier(run.context)
    log.record("stopped", **summary, batches_done_in_epoch=step - epoch * run.steps_per_epoch,
               exit_status=EXIT_PREEMPTED)
    log.print(f"stopped by {reason} at epoch {epoch + 1} step {step}; continue with --resume auto")
    return summary


def report_unreadable(run: Run, epoch: int) -> int:
    """Training files a streaming loader passed over this epoch, all ranks together (a collective)."""
    indices = getattr(run.train_loader, "skipped_this_epoch", [])
    total = int(all_reduce_sum(torch.tensor([len(indices)], device=run.device), run.context).item())
    if total:
        examples = [run.data.train.files[i] for i in indices[:5]]
        run.run_log.record("unreadable", epoch=epoch + 1, step=run.progress.step, count=total, examples=examples)
        run.run_log.print(f"epoch {epoch + 1}: {total} unreadable training images skipped (e.g. "
                          f"{examples[0] if examples else 'on another rank'}; --strict-images fails instead)")
    return total


def validate(run: Run, epoch: int) -> None:
    """Validation scores; best.pt holds the evaluated weights whenever the primary score improves."""
    progress, method, eval_model = run.progress, run.method, run.eval_model
    method.before_evaluation(eval_model, run.bank_loader, run.autocast)  # e.g. the k-NN bank
    scores = evaluate(eval_model, method, run.val_loader, run.data.num_classes, run.context, run.autocast)
    improved = scores[method.primary_score] > progress.best_score
    if improved:
        progress.best_score = scores[method.primary_score]
        progress.best_state = copy.deepcopy(eval_model.state_dict())
        if run.context.is_main:
            atomic_save({"model": progress.best_state, "epoch": epoch + 1, "score": progress.best_score,
                         "config": dataclasses.asdict(run.config), "backbone": method.backbone_name,
                         "provenance": method.provenance()}, run.run_log.run_dir / "best.pt")
    run.run_log.record("epoch", epoch=epoch + 1, step=progress.step, split="val",
                       skipped_images=len(run.skipped_images), **scores)
    run.run_log.print(f"epoch {epoch + 1}/{run.epochs} val {accuracy_line(scores)}{'  (best)' if improved else ''}")
    run.last_val = scores


def save_last(run: Run, epochs_done: int) -> None:
    """last.pt: every state and every rank's random streams (a collective), written atomically by rank 0."""
    rank_rng = every_rank_rng_states(run.context)
    if run.context.is_main:
        method = run.method
        atomic_save(checkpoint_payload(run.config, run.model, run.optimizer, run.scheduler, run.scaler, run.ema,
                                       epochs_done, run.progress.step, run.progress.best_score, method.provenance(),
                                       method.backbone_name, rank_rng, method.state_dict()),
                    run.run_log.run_dir / "last.pt")


def test_and_summarise(run: Run, clock: TrainingClock, unreadable: int) -> dict:
    """The test split, once, with the weights that scored best on validation; the summary record and table."""
    config, method, data, eval_model = run.config, run.method, run.data, run.eval_model
    if run.progress.best_state is not None:
        eval_model.load_state_dict(run.progress.best_state)
    method.before_evaluation(eval_model, run.bank_loader, run.autocast)
    test = evaluate(eval_model, method, run.test_loader, data.num_classes, run.context, run.autocast)
    run.run_log.record("test", split="test", **test)
    images_per_second, throughput_note = clock.images_per_second(config.batch_size)
    skipped = run.skipped_images
    summary = {"completed": True, "method": config.method, "dataset": config.dataset, "model": config.model,
               "transforms": run.family.name, "num_transforms": run.family.num_transforms, "steps": run.progress.step,
               "wall_time_s": round(clock.wall_seconds, 2), "training_time_s": round(clock.all_seconds, 2),
               "images_per_s": round(images_per_second, 2), "images_per_s_counts": throughput_note,
               "mfu": round(mfu_of(run, images_per_second), 5), "best_val": run.progress.best_score,
               "primary_score": method.primary_score, "skipped_images": len(skipped) or unreadable,
               "val": {k: v for k, v in run.last_val.items() if "per_class" not in k},
               "test": {k: v for k, v in test.items() if "per_class" not in k},
               "test_per_class": test.get(f"{method.primary_score}_per_class"), "run_dir": str(run.run_log.run_dir)}
    trials = run.transform_trials
    if trials is not None:
        summary["transform_trials"] = {k: trials[k] for k in ("winner", "trial_steps", "trial_wall_time_s")}
    run.run_log.record("summary", **summary)
    rows = [("method / model", f"{config.method} / {config.model}, {run.family.name} (M={run.family.num_transforms})"),
            ("data", f"{config.dataset}: {len(data.train)} train, {len(data.val)} val, {len(data.test)} test"
                     + (f", {len(skipped)} unreadable images skipped" if skipped else "")
                     + (f", {unreadable} unreadable training images skipped per epoch" if unreadable else "")
                     + (", streamed from its files" if data.train.streaming else "")),
            ("steps", f"{run.progress.step} ({format_duration(clock.wall_seconds)} this run, "
                      f"{summary['images_per_s']:,.0f} img/s in training steps, MFU {100 * summary['mfu']:.1f}%)"),
            (f"best val {method.primary_score}", f"{run.progress.best_score:.2f}%")]
    if trials is not None:
        rows.insert(1, ("transforms", f"auto: {trials['winner']} (trials: {trials['trial_steps']} steps, "
                                      f"{format_duration(trials['trial_wall_time_s'])}, not counted above)"))
    rows += [(f"test {score}", f"{test[score]:.2f}%  (per-class mean {np.mean(test[score + '_per_class']):.2f}%)")
             for score in method.score_names() if not score.startswith("branch")]
    if "teacher" in method.provenance():
        rows.append(("teacher", f"{method.provenance()['teacher_model']} from {method.provenance()['teacher']}"))
    rows.append(("run directory", str(run.run_log.run_dir)))
    run.run_log.print(summary_table(rows))
    return summary
