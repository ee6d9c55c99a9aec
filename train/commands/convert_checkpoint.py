"""Convert a checkpoint written before checkpoints became plain data (numpy/Python RNG states as pickled
objects) into the current format, which `--resume`, `--teacher` and `--frozen-backbone` read with torch's
safe weights_only unpickler.

    python -m train.commands.convert_checkpoint OLD.pt NEW.pt

This is the one place that unpickles a checkpoint with full trust: run it only on a file you trust,
since unpickling an untrusted file can run arbitrary code.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from train.checkpoint import atomic_save, read_checkpoint_file


def convert_rng_states(states: dict) -> dict:
    """The old tuple states (random.getstate(), np.random.get_state()) as the plain records rng_states() writes."""
    converted = dict(states)
    if isinstance(states.get("python"), tuple):
        version, python_state, gauss = states["python"]
        converted["python"] = {"version": version, "state": torch.tensor(python_state, dtype=torch.int64),
                               "gauss": gauss}
    if isinstance(states.get("numpy"), tuple):
        bit_generator, keys, position, has_gauss, cached_gaussian = states["numpy"]
        converted["numpy"] = {"bit_generator": str(bit_generator),
                              "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "position": int(position),
                              "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    return converted


def convert(payload: dict) -> dict:
    converted = dict(payload)
    if isinstance(payload.get("rng"), dict):
        converted["rng"] = convert_rng_states(payload["rng"])
    return converted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.commands.convert_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="a checkpoint you trust (it is unpickled with full trust)")
    parser.add_argument("new", help="where to write the converted checkpoint")
    arguments = parser.parse_args(argv)
    try:
        payload = torch.load(arguments.old, map_location="cpu", weights_only=False)
    except Exception as error:
        print(f"error: {arguments.old} cannot be read ({type(error).__name__}: {error})", file=sys.stderr)
        return 2
    if not isinstance(payload, dict):
        print(f"error: {arguments.old} is not a checkpoint of this trainer (a {type(payload).__name__})",
              file=sys.stderr)
        return 2
    converted = convert(payload)
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as error:
        print(f"error: {arguments.old} holds objects this converter does not know how to store as plain data "
              f"({str(error).splitlines()[-1] if str(error) else type(error).__name__})", file=sys.stderr)
        return 2
    atomic_save(converted, Path(arguments.new))
    read_checkpoint_file(arguments.new, "converted")  # the way the trainer will read it
    print(f"wrote {arguments.new}: it loads with torch.load(weights_only=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
