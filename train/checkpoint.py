"""Atomic checkpoints (temporary file, flush, fsync, rename) and exact resumption."""
from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import io
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.image_set import write_error

if TYPE_CHECKING:
    from .config import TrainConfig



def atomic_save(payload: dict, path: Path) -> None:
    """A reader sees the old file or the new one, never a half-written one. The payload is serialised in memory
    first, so that a full disk is an OSError of the plain write (named in one line, WriteError), not an error
    from inside torch's zip writer; the previous file stays as it was."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(descriptor, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            kept = f"the previous {path.name} is kept as it was" if path.exists() else f"no {path.name} was written"
            raise write_error(path, error, kept) from error
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def rng_states() -> dict:
    """Every RNG state, in types torch's weights_only unpickler accepts (tensors, ints, floats, str, lists)."""
    version, python_state, gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    states = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's own device (torch.cuda.set_device)
    return states


def every_rank_rng_states(context) -> list[dict]:
    """Every rank's `rng_states()`, in rank order (a collective: every rank calls it). Each rank draws its own
    streams (seeded by rank, each on its own GPU), so a resume gives each rank back its own."""
    import torch.distributed as dist

    states = rng_states()
    if not context.initialised or context.world_size == 1:
        return [states]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, states)
    return gathered


def restore_rng_states(states: dict) -> None:
    """`states` from rng_states(), or a checkpoint's "rng" (rank 0's streams when it holds no "rank_rng")."""
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]  # a list of every visible device's in checkpoints of older versions: take ours
        own = cuda[torch.cuda.current_device()] if isinstance(cuda, list) else cuda
        torch.cuda.set_rng_state(own)


def own_rng_states(payload: dict, rank: int, world_size: int) -> dict:
    """This rank's RNG states from a checkpoint: its own where the checkpoint has every rank's."""
    per_rank = payload.get("rank_rng") or []
    if len(per_rank) == world_size:
        return per_rank[rank]
    if world_size > 1:
        import warnings

        warnings.warn(f"the checkpoint holds the random streams of {len(per_rank) or 1} rank(s), this run has "
                      f"{world_size}: every rank resumes from rank 0's streams, so the run does not repeat exactly")
    return payload["rng"]


def read_checkpoint_file(path: str, flag: str) -> dict:
    """The payload of a checkpoint named by a command-line `flag`, read with torch's weights_only unpickler:
    a checkpoint is data and loading one never runs code. A missing, damaged or unsafe file is a one-line error."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{flag} checkpoint {file} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
        if not refused:  # damaged bytes, not a refused object
            detail = next((line.strip() for line in str(error).splitlines() if line.startswith("Unsupported")), "")
            raise ValueError(f"{flag} checkpoint {file} cannot be read: not a torch checkpoint or damaged "
                             f"({detail or 'UnpicklingError'})") from None
        raise ValueError(
            f"{flag} checkpoint {file} holds Python objects that a safe load refuses ({refused}); "
            f"it was written by an older version of this trainer or is not one of its checkpoints. If you trust "
            f"the file, convert it once: python -m train.commands.convert_checkpoint {file} NEW.pt") from None
    except Exception as error:  # torch raises many types for a damaged file
        raise ValueError(f"{flag} checkpoint {file} cannot be read ({type(error).__name__}: {error})") from None


def load_checkpoint(path: str, config: TrainConfig) -> dict:
    from .config import RESUME_MUST_MATCH, TrainConfig  # the config imports the methods, which read checkpoints

    file = Path(path)
    payload = read_checkpoint_file(path, "--resume")
    saved = payload.get("config", {})
    defaults = {spec.name: spec.default for spec in dataclasses.fields(TrainConfig)}
    for name in RESUME_MUST_MATCH:
        made_with = saved.get(name, defaults[name])  # a setting newer than the checkpoint had its default then
        if made_with != getattr(config, name):
            raise ValueError(f"--resume checkpoint {file} was made with {name}={made_with!r}, "
                             f"but this run has {name}={getattr(config, name)!r}")
    return payload


def checkpoint_payload(config: TrainConfig, model, optimizer, scheduler, scaler, ema, epoch: int, step: int,
                       best_score: float, provenance: dict, backbone: str, rank_rng: list[dict],
                       method_state: dict | None = None) -> dict:
    return {
        "config": dataclasses.asdict(config),
        "backbone": backbone,  # the --model a run that starts from this backbone names (train/methods/run_checkpoints.py)
        "provenance": provenance,  # the files the run builds on (a teacher checkpoint) and their hashes
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "method_state": method_state or {},  # what a method keeps beyond the model (MAXL: its generator)
        "epoch": epoch,  # epochs completed
        "step": step,  # optimizer steps completed
        "best_score": best_score,
        "rng": rank_rng[0],  # rank 0's random streams (what readers of older versions restore)
        "rank_rng": rank_rng,  # every rank's, in rank order (every_rank_rng_states)
    }
