"""Each paper's claim as a table, in one command:

    python -m train.commands.reproduce TABLE [--seeds 3] [--scale digits|paper] [--out results/] [--nproc-per-node N]

TABLE is sla, hsakd, maxl, ssl or all. A table is a declared grid (train/commands/reproduce_grids.py) of ordinary runs of
train/main.py: each run's command line is printed before it runs, its run directory is under
`<out>/runs/<table>/`, and a run that finished there before with the same arguments is read back instead of
run again, so an interrupted table continues where it stopped (a run made with other arguments runs again).
With `--nproc-per-node N` every run goes through `torchrun --standalone --nproc_per_node=N`; otherwise each runs
in this process, by the same code path.

Writes `<out>/<table>.jsonl` (one record per row and seed), `<out>/<table>.md` (mean ± sample std over seeds,
n, the claims and what the table shows) and `<out>/<table>.png` (a panel per metric, a bar per row, a dot
per seed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `python train/commands/reproduce.py` finds the packages

from train.commands.reproduce_grids import TABLES, Row, Table, build_table  # noqa: E402
from train.run_log import format_duration  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- running the runs
def run_dir(out: Path, table: str, key: str, seed: int) -> Path:
    return out / "runs" / table / f"{key}-s{seed}"


def finished_summary(directory: Path) -> dict | None:
    """The summary record of a finished run in `directory`, or None."""
    try:
        lines = (directory / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    summaries = [json.loads(line) for line in lines if '"kind": "summary"' in line]
    return summaries[-1] if summaries and summaries[-1].get("completed") else None


# How a cell's run starts: continue its directory (an interrupted run), or replace a run made by other arguments.
CONTINUE, REPLACE = ["--resume", "auto"], ["--overwrite"]


def recorded_arguments(directory: Path) -> list[str] | None:
    """The train/main.py arguments the run in `directory` was started with (its command.txt), less how it started
    (CONTINUE or REPLACE), so that a run replaced once compares equal to its cell afterwards."""
    try:
        words = shlex.split((directory / "command.txt").read_text())
    except OSError:
        return None
    script = next((i for i, word in enumerate(words) if word.endswith("main.py")), None)
    if script is None:
        return None
    arguments = words[script + 1:]
    for mode in (CONTINUE, REPLACE):
        if arguments[-len(mode):] == mode:
            return arguments[:-len(mode)]
    return arguments


def main_arguments(args: tuple[str, ...], out: Path, table: str, seed: int) -> list[str]:
    """A run's train/main.py arguments: `{seed}` and `{run:KEY}` (another run's directory) filled in."""
    filled = []
    for arg in args:
        arg = arg.replace("{seed}", str(seed))
        if arg.startswith("{run:"):
            key, _, rest = arg[len("{run:"):].partition("}")
            arg = str(run_dir(out, table, key, seed)) + rest
        filled.append(arg)
    return filled


def command_line(arguments: list[str], nproc: int) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                str(REPO / "train" / "main.py"), *arguments]
    return [sys.executable, str(REPO / "train" / "main.py"), *arguments]


def execute(arguments: list[str], nproc: int, log_path: Path) -> None:
    """One run, its output into `log_path`; a failed run stops the table with its last lines."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        if nproc > 1:
            status = subprocess.run(command_line(arguments, nproc), stdout=log, stderr=subprocess.STDOUT).returncode
        else:
            from train.main import main

            argv, sys.argv = sys.argv, [str(REPO / "train" / "main.py"), *arguments]  # command.txt: the run's own
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    status = main(arguments)
            finally:
                sys.argv = argv
    if status != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"a run failed (status {status}); its log {log_path} ends with:\n{tail}")


# ---------------------------------------------------------------------------------------------- the grid
def planned_runs(table: Table, seeds: int) -> list[tuple[int, str, tuple[str, ...]]]:
    """(seed, key, arguments) of every run the table needs, each once, in order (a teacher before its students)."""
    seen, runs = set(), []
    for seed in range(seeds):
        for row in table.rows:
            for key, args in row.runs:
                if (seed, key) not in seen:
                    seen.add((seed, key))
                    runs.append((seed, key, args))
    return runs


def run_table(table: Table, seeds: int, out: Path, nproc: int, printer=print) -> dict[tuple[int, str], dict]:
    """Every run of the table (finished ones read back); returns the summaries by (seed, key)."""
    runs = planned_runs(table, seeds)
    summaries: dict[tuple[int, str], dict] = {}
    started, ran = time.perf_counter(), 0
    for index, (seed, key, args) in enumerate(runs):
        directory = run_dir(out, table.name, key, seed)
        cell = [*table.common, *main_arguments(args, out, table.name, seed), "--seed", str(seed),
                "--out-dir", str(directory.parent), "--run-name", directory.name]
        summary, mode = finished_summary(directory), CONTINUE
        done = f"[{table.name} {index + 1}/{len(runs)}]"
        if summary is not None and recorded_arguments(directory) != cell:  # the grid changed since
            printer(f"{done} {key} seed {seed}: finished before with other arguments; running it again")
            summary, mode = None, REPLACE
        arguments = [*cell, *mode]
        if summary is None:
            remaining = len(runs) - index
            eta = f", ETA {format_duration((time.perf_counter() - started) / ran * remaining)}" if ran else ""
            printer(f"{done} {key} seed {seed}{eta}\n    {shlex.join(command_line(arguments, nproc))}")
            execute(arguments, nproc, directory.parent / f"{directory.name}.log")
            ran += 1
            summary = finished_summary(directory)
            if summary is None:
                raise RuntimeError(f"the run in {directory} ended without a summary (see {directory}.log)")
        else:
            printer(f"{done} {key} seed {seed}: finished before, read from {directory}")
        summaries[(seed, key)] = summary
    return summaries


# ---------------------------------------------------------------------------------------------- the results
def row_records(table: Table, seeds: int, summaries: dict) -> list[dict]:
    records = []
    for seed in range(seeds):
        for row in table.rows:
            scores = {}
            for column, (key, score) in row.scores.items():
                value = summaries[(seed, key)]["test"].get(score)
                if value is not None:
                    scores[column] = value
            records.append({"table": table.name, "scale": table.scale, "row": row.label, "seed": seed,
                            "scores": scores, "runs": {key: summaries[(seed, key)]["run_dir"] for key, _ in row.runs}})
    return records


def mean_and_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def row_statistics(records: list[dict], row: Row, column: str) -> tuple[float, float, int] | None:
    values = [r["scores"][column] for r in records if r["row"] == row.label and column in r["scores"]]
    if not values:
        return None
    mean, std = mean_and_std(values)
    return mean, std, len(values)


def seed_scores(records: list[dict], label: str, column: str) -> dict[int, float]:
    return {r["seed"]: r["scores"][column] for r in records if r["row"] == label and column in r["scores"]}


def claimed(table: Table, records: list[dict], label: str, column: str) -> tuple[str, float] | None:
    """(the row's label, its mean) for a claim's side; "best of: a|b" is the row among those with the best mean."""
    labels = label[len("best of: "):].split("|") if label.startswith("best of: ") else [label]
    found = [(row.label, stats[0]) for row in table.rows if row.label in labels
             for stats in [row_statistics(records, row, column)] if stats is not None]
    return max(found, key=lambda pair: pair[1]) if found else None


CONFIDENCE = 0.95


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided 95% Student-t interval of the mean of paired per-seed differences."""
    from scipy import stats

    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, -math.inf, math.inf
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(differences) - 1) * statistics.stdev(differences) / math.sqrt(
        len(differences))
    return mean, mean - half, mean + half


def verdict(low: float, high: float, margin: float) -> str:
    """holds: the whole interval above the margin; fails: the whole interval below it; else inconclusive."""
    return "holds" if low > margin else "fails" if high < margin else "inconclusive"


def claim_lines(table: Table, records: list[dict]) -> list[str]:
    """Each claim, fixed in the grid before any run: the paired difference (same seed, same split) of its row
    and its baseline, its 95% interval, and the verdict by the interval rule."""
    lines = []
    for claim in table.claims:
        ours, theirs = claimed(table, records, *claim.row), claimed(table, records, *claim.baseline)
        if ours is None or theirs is None:
            continue
        mine, other = seed_scores(records, ours[0], claim.row[1]), seed_scores(records, theirs[0], claim.baseline[1])
        seeds = sorted(set(mine) & set(other))
        mean, low, high = paired_interval([mine[s] - other[s] for s in seeds])
        lines.append(f"- {claim.text}: {ours[0]} {claim.row[1]} − {theirs[0]} {claim.baseline[1]}, paired over "
                     f"{len(seeds)} seeds: {mean:+.2f} points, 95% interval [{low:+.2f}, {high:+.2f}] (paired t); "
                     f"claim: more than {claim.margin:+.1f}: **{verdict(low, high, claim.margin)}**.")
    return lines


def claim_rows(table: Table) -> set[str]:
    labels = set()
    for claim in table.claims:
        for label, _ in (claim.row, claim.baseline):
            labels.update(label[len("best of: "):].split("|") if label.startswith("best of: ") else [label])
    return labels


FLOOR_C = (0.01, 0.1, 1.0, 10.0)  # logistic regression's inverse regularisation, chosen on validation
FLOOR_K = (1, 3, 5, 9)  # k-NN's neighbours, chosen on validation


def pixel_floors(table: Table, seeds: list[int]) -> dict[str, list[float]] | None:
    """Logistic regression and k-NN on the raw pixels of each seed's splits (the table's data settings), each
    with its hyper-parameter chosen on the validation split: test accuracy (%) that needs no training of ours.
    None for the papers' data sets (not read here)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from pipeline.datasets import build_splits
    from train.config import config_from_args

    config, _ = config_from_args(list(table.common))
    if config.dataset != "digits":
        return None
    floors = {"logistic regression": [], "k-NN": []}
    for seed in seeds:
        data = build_splits(config.dataset, config.data_root, config.image_size, config.val_split, seed,
                            config.samples_per_class, config.imbalance_ratio, primary_labels=config.primary_labels)
        pixels = {name: (getattr(data, name).images.reshape(len(getattr(data, name)), -1) / 255.0,
                         getattr(data, name).labels) for name in ("train", "val", "test")}
        for name, models in (("logistic regression", [LogisticRegression(C=c, max_iter=3000) for c in FLOOR_C]),
                             ("k-NN", [KNeighborsClassifier(n_neighbors=min(k, len(pixels["train"][1])))
                                       for k in FLOOR_K])):
            fitted = [model.fit(*pixels["train"]) for model in models]
            best = max(fitted, key=lambda model: model.score(*pixels["val"]))  # the first of equals
            floors[name].append(100 * best.score(*pixels["test"]))
    return floors


def floor_line(floors: dict[str, list[float]] | None) -> list[str]:
    if floors is None:
        return []
    parts = [f"{name} {mean:.2f} ± {std:.2f}" for name, values in floors.items()
             for mean, std in [mean_and_std(values)]]
    return [f"Floors on the raw pixels of the same splits (scikit-learn; C and k chosen on validation; n="
            f"{len(next(iter(floors.values())))}): {', '.join(parts)}.", ""]


def markdown(table: Table, records: list[dict], seeds: int, command: str,
             floors: dict[str, list[float]] | None = None) -> str:
    columns = table.columns()
    header = ["row", *columns, *(["paper"] if table.scale == "paper" else [])]
    lines = [f"### {table.title}", "", table.setting, "", f"`{command}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    in_claims = claim_rows(table)
    for row in table.rows:
        cells = [row.label if row.label in in_claims else f"{row.label} (exploratory)"]
        for column in columns:
            stats = row_statistics(records, row, column)
            cells.append("" if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f} (n={stats[2]})"
                         if stats[2] > 1 else f"{stats[0]:.2f} (n=1)")
        if table.scale == "paper":
            cells.append(row.paper or "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Test accuracy (%), mean ± sample standard deviation over {seeds} seed(s). The claims below were "
              "fixed in the grid (train/commands/reproduce_grids.py) before the runs; an exploratory row carries no "
              "verdict.", ""]
    lines += floor_line(floors)
    lines += claim_lines(table, records)
    if table.notes:
        lines += ["", *table.notes]
    return "\n".join(lines) + "\n"


def plot(table: Table, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = table.columns()
    figure, axes = plt.subplots(1, len(columns), figsize=(4 + 0.45 * len(table.rows) * len(columns), 4.5),
                                squeeze=False)
    for axis, column in zip(axes[0], columns):
        rows = [row for row in table.rows if row_statistics(records, row, column) is not None]
        means = [row_statistics(records, row, column)[0] for row in rows]
        axis.bar(range(len(rows)), means, color="#9ecae1", edgecolor="#3182bd")
        for position, row in enumerate(rows):
            values = [r["scores"][column] for r in records if r["row"] == row.label and column in r["scores"]]
            axis.scatter([position] * len(values), values, color="#08306b", s=12, zorder=3)
        axis.set_xticks(range(len(rows)), [row.label for row in rows], rotation=60, ha="right", fontsize=8)
        axis.set_title(column)
        axis.set_ylabel("test accuracy (%)")
        low = min((r["scores"][column] for r in records if column in r["scores"]), default=0)
        axis.set_ylim(max(0, low - 10), 100)
    figure.suptitle(table.title)
    figure.tight_layout()
    temporary = path.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"--from-records: {path} does not exist (run the table first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_results(table: Table, records: list[dict], seeds: int, out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{table.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    floors = pixel_floors(table, sorted({r["seed"] for r in records}))
    (out / f"{table.name}.md").write_text(markdown(table, records, seeds, command, floors))
    plot(table, records, out / f"{table.name}.png")


# ---------------------------------------------------------------------------------------------- the command
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.commands.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=[*TABLES, "all"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … S−1 for every row (default 3)")
    parser.add_argument("--scale", choices=("digits", "paper"), default="digits",
                        help="digits: the embedded data, minutes on a CPU; paper: the papers' CIFAR presets (GPUs)")
    parser.add_argument("--out", default="results", help="where the tables and their runs go (default results/)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="run every run under torchrun with N processes")
    parser.add_argument("--rows", default="", help="only these rows (comma-separated labels), e.g. for a quick look")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every run's epochs (e.g. 0.1 for a smoke test; the tables note it)")
    parser.add_argument("--from-records", action="store_true",
                        help="train nothing: rebuild each table's .md and .png from its --out/<table>.jsonl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    if "RANK" in os.environ:
        print("error: run python -m train.commands.reproduce itself as one process; --nproc-per-node N runs each run under "
              "torchrun", file=sys.stderr)
        return 2
    if options.seeds < 1:
        print(f"error: --seeds must be at least 1, got {options.seeds}", file=sys.stderr)
        return 2
    out = Path(options.out)
    names = list(TABLES) if options.table == "all" else [options.table]
    command = shlex.join(["python", "-m", "train.commands.reproduce", *(sys.argv[1:] if argv is None else argv)])
    for name in names:
        try:
            table = build_table(name, options.scale, options.epochs_scale,
                                [r for r in options.rows.split(",") if r])
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        started = time.perf_counter()
        if options.from_records:  # the runs' command, for a reader to regenerate them
            try:
                records = read_records(out / f"{table.name}.jsonl")
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            seeds = len({r["seed"] for r in records})
            write_results(table, records, seeds, out, shlex.join(
                ["python", "-m", "train.commands.reproduce", name, "--seeds", str(seeds)]))
            print(f"{table.name}: rebuilt from {out / (table.name + '.jsonl')}")
            continue
        summaries = run_table(table, options.seeds, out, options.nproc_per_node)
        records = row_records(table, options.seeds, summaries)
        write_results(table, records, options.seeds, out, command)
        print(f"{table.name}: {len(records)} records in {format_duration(time.perf_counter() - started)} → "
              f"{out / (table.name + '.md')}, .jsonl, .png")
        print((out / f"{table.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
