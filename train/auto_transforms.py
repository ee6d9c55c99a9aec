"""`--transforms auto`: choose the transformation family by short trials, then train with the winner.

The SLA paper leaves the family to the user and names choosing it automatically as future work. Here each
candidate family (`--auto-families`, by default every family with more than one view) trains the run's method for `--auto-trial-fraction`
of its epochs (at least one) on the train split and is scored on the validation split by the method's
primary score; the test split is never read for the choice. The trials are ordinary runs under
`<run dir>/auto/<family>/`, the decision is `<run dir>/auto_transforms.json`, and the log states what the
trials cost against the run's own steps. A resumed run reads the decision back instead of trialling again.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import kernels
from pipeline.image_set import write_error
from train.config import TrainConfig

DECISION_FILE = "auto_transforms.json"


def candidate_families(config: TrainConfig) -> list[str]:
    """`--auto-families`, or every family with more than one view."""
    if not config.auto_families:
        return [name for name, family in kernels.FAMILIES.items() if family.num_transforms > 1]
    names = [name.strip() for name in config.auto_families.split(",") if name.strip()]
    for name in names:
        kernels.get_family(name)  # an unknown name fails here, listing the valid ones
    return names


def trial_config(config: TrainConfig, run_dir: Path, family: str) -> TrainConfig:
    epochs = max(1, math.ceil(config.epochs * config.auto_trial_fraction))
    return dataclasses.replace(config, transforms=family, epochs=epochs, iterations=0, out_dir=str(run_dir / "auto"),
                               run_name=family, resume="", overwrite=True, stop_after_epochs=0, profile="")


def choose_transforms(config: TrainConfig, run_dir: Path, run_trial, log, share, is_main: bool
                      ) -> tuple[TrainConfig, dict]:
    """The config with the winning family and the decision record. `run_trial(config)` trains one trial on this
    process group and returns its summary; `log` prints on rank 0; `share(value)` gives every rank rank 0's."""
    from train.methods import METHODS

    method = METHODS.get(config.method)
    if method is not None and not method.uses_transforms:
        raise ValueError(f"--transforms auto chooses among transformation families, which {config.method} does "
                         "not use")
    decision_path = run_dir / DECISION_FILE
    decision = share(json.loads(decision_path.read_text()) if is_main and decision_path.exists() else None)
    if decision is not None:  # a resumed run keeps the family it started with
        log(f"--transforms auto: {decision['winner']}, as chosen when this run started ({decision_path})")
        return dataclasses.replace(config, transforms=decision["winner"]), decision
    trials, candidates = [], candidate_families(config)
    for family in candidates:
        trial = trial_config(config, run_dir, family)
        log(f"--transforms auto: trial {len(trials) + 1}/{len(candidates)}, {family}, "
            f"{trial.epochs} epoch(s)")
        started = time.perf_counter()
        summary = run_trial(trial)
        if not summary.get("completed"):  # a preemption signal or a non-finite loss ended the trial: so the run
            return config, {"stopped": summary}
        trials.append({"family": family, "epochs": trial.epochs, "steps": summary["steps"],
                       "val_score": summary["best_val"], "score_name": summary["primary_score"],
                       "wall_time_s": round(time.perf_counter() - started, 2), "run_dir": summary["run_dir"]})
    winner = share(max(trials, key=lambda t: t["val_score"]))  # the first listed wins a tie; rank 0's decides
    decision = {"winner": winner["family"], "trials": trials, "trial_fraction": config.auto_trial_fraction,
                "trial_steps": sum(t["steps"] for t in trials),
                "trial_wall_time_s": round(sum(t["wall_time_s"] for t in trials), 2)}
    if is_main:
        try:
            decision_path.write_text(json.dumps(decision, indent=2) + "\n")
        except OSError as error:
            raise write_error(decision_path, error) from error
    ranking = ", ".join(f"{t['family']} {t['val_score']:.2f}" for t in sorted(trials, key=lambda t: -t["val_score"]))
    log(f"--transforms auto: {winner['family']} wins on validation {winner['score_name']} ({ranking}); the trials "
        f"took {decision['trial_steps']} steps and {decision['trial_wall_time_s']:.0f} s")
    return dataclasses.replace(config, transforms=winner["family"]), decision
