"""Each paper's claim as a table, in one command:

    python -m train.commands.reproduce TABLE [--data digits|mnist5k] [--seeds 10] [--exploratory-seeds 3]
        [--scale small|paper] [--out DIR] [--jobs N] [--nproc-per-node N]

TABLE is sla, hsakd, maxl, ssl or all. A table is a declared grid (train/commands/reproduce_grids.py) of ordinary runs of
train/main.py: each run's command line is printed before it runs, its run directory is under
`<out>/runs/<table>/`, and a run that finished there before with the same arguments is read back instead of
run again, so an interrupted table continues where it stopped (a run made with other arguments runs again).
Each finished run is also a line of `<out>/<table>.runs.jsonl` (its arguments and summary; committed beside the
table, while run directories and their checkpoints stay out of git), so a table continues on another machine or
a fresh clone: a run found there with the same arguments is read back, unless a run still to come reads its
checkpoint.
The rows a claim compares run `--seeds` seeds, the others (exploratory) `--exploratory-seeds`. `--jobs N` runs N
runs at once, each a process of its own (a run that reads another's checkpoint waits for it). With
`--nproc-per-node N` every run goes through `torchrun --standalone --nproc_per_node=N`; otherwise, one job at a
time, each runs in this process, by the same code path.

Writes `<out>/<table>.jsonl` (one record per row and seed), `<out>/<table>.md` (mean ± sample std over seeds,
n, the claims and what the table shows) and `<out>/<table>.png` (a panel per metric, a bar per row, a dot
per seed). The default out is results/ for digits and results/<data>/ for another small data set.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `python train/commands/reproduce.py` finds the packages

from train.commands.reproduce_grids import SMALL_DATA, TABLES, Row, Table, build_table  # noqa: E402
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


def execute(arguments: list[str], nproc: int, log_path: Path, jobs: int = 1) -> None:
    """One run, its output into `log_path`; a failed run stops the table with its last lines. With `jobs` > 1 the
    run is a process of its own that computes on its share of the cores (unless OMP_NUM_THREADS says otherwise)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        if nproc > 1 or jobs > 1:
            env = dict(os.environ)
            if jobs > 1:  # torch's and Numba's pools alike: idle pool threads spin against the other runs
                share = str(max(1, len(os.sched_getaffinity(0)) // jobs))
                for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
                    env.setdefault(name, share)
            status = subprocess.run(command_line(arguments, nproc), stdout=log, stderr=subprocess.STDOUT,
                                    env=env).returncode
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


class Ledger:
    """`<out>/<table>.runs.jsonl`: one line per finished run, (seed, key) → its train/main.py arguments (paths
    under `out` written from `{out}`, so another --out naming the same files matches), summary and views seen;
    rewritten whole (a temporary file, then a rename) after each run, so a crash leaves the last one."""

    def __init__(self, path: Path, out: Path):
        self.path, self.lock, self.entries, self.out = path, threading.Lock(), {}, str(out)
        if path.is_file():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    entry = json.loads(line)
                    self.entries[(entry["seed"], entry["key"])] = entry

    def portable(self, arguments: list[str]) -> list[str]:
        return [f"{{out}}{arg[len(self.out):]}" if arg == self.out or arg.startswith(self.out + os.sep) else arg
                for arg in arguments]

    def summary(self, seed: int, key: str, arguments: list[str]) -> dict | None:
        """The run's summary (with its views_seen) when it finished with these arguments, else None."""
        entry = self.entries.get((seed, key))
        return entry["summary"] if entry is not None and entry["arguments"] == self.portable(arguments) else None

    def record(self, seed: int, key: str, arguments: list[str], summary: dict) -> None:
        entry = {"seed": seed, "key": key, "arguments": self.portable(arguments), "summary": summary}
        with self.lock:
            if self.entries.get((seed, key)) == entry:
                return
            self.entries[(seed, key)] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text("".join(json.dumps(e) + "\n" for e in self.entries.values()))
            os.replace(temporary, self.path)


def ledger_path(out: Path, table: str) -> Path:
    return out / f"{table}.runs.jsonl"


# ---------------------------------------------------------------------------------------------- the grid
def row_seeds(table: Table, row: Row, seeds: int, exploratory_seeds: int) -> int:
    """Seeds 0 … n−1 of a row: every seed for a row a claim compares, at most `exploratory_seeds` otherwise."""
    return seeds if row.label in claim_rows(table) else min(seeds, exploratory_seeds)


def row_runs(row: Row) -> list[tuple[str, tuple[str, ...]]]:
    """(key, arguments) of a row's runs, its last run once per variant (`key@variant`)."""
    if not row.variants:
        return list(row.runs)
    *before, (key, args) = row.runs
    return [*before, *((f"{key}@{name}", (*args, *extra)) for name, extra in row.variants)]


def planned_runs(table: Table, seeds: int, exploratory_seeds: int | None = None) -> list[tuple[int, str, tuple[str, ...]]]:
    """(seed, key, arguments) of every run the table needs, each once, in order (a teacher before its students)."""
    seen, runs = set(), []
    for seed in range(seeds):
        for row in table.rows:
            if seed >= row_seeds(table, row, seeds, seeds if exploratory_seeds is None else exploratory_seeds):
                continue
            for key, args in row_runs(row):
                if (seed, key) not in seen:
                    seen.add((seed, key))
                    runs.append((seed, key, args))
    return runs


def needed_keys(args: tuple[str, ...]) -> list[str]:
    """The runs whose directories `{run:KEY}` arguments read."""
    return [arg[len("{run:"):arg.index("}")] for arg in args if arg.startswith("{run:")]


def views_seen(directory: Path) -> int | None:
    """Training views of a finished run: steps × global batch × views per image (its config.json)."""
    try:
        config = json.loads((directory / "config.json").read_text())
        return int(config["total_steps"]) * int(config["batch_size"]) * int(config["views_per_image"])
    except (OSError, KeyError, ValueError):
        return None


def run_table(table: Table, seeds: int, out: Path, nproc: int, printer=print, exploratory_seeds: int | None = None,
              jobs: int = 1) -> dict[tuple[int, str], dict]:
    """Every run of the table (finished ones read back), `jobs` at a time; returns the summaries by (seed, key),
    each with the run's `views_seen`."""
    runs = planned_runs(table, seeds, exploratory_seeds)
    summaries: dict[tuple[int, str], dict] = {}
    started, ran = time.perf_counter(), [0]
    ledger = Ledger(ledger_path(out, table.name), out)

    def cell(seed: int, key: str, args: tuple[str, ...]) -> list[str]:
        directory = run_dir(out, table.name, key, seed)
        return [*table.common, *main_arguments(args, out, table.name, seed), "--seed", str(seed),
                "--out-dir", str(directory.parent), "--run-name", directory.name]

    def in_directory(seed: int, key: str, args: tuple[str, ...]) -> dict | None:
        directory = run_dir(out, table.name, key, seed)
        summary = finished_summary(directory)
        return summary if summary is not None and recorded_arguments(directory) == cell(seed, key, args) else None

    # A run known only from the ledger has no checkpoint here: it runs again where a run still to come reads it.
    here = {(seed, key) for seed, key, args in runs if in_directory(seed, key, args) is not None}
    from_ledger = {(seed, key) for seed, key, args in runs
                   if (seed, key) not in here and ledger.summary(seed, key, cell(seed, key, args)) is not None}
    to_run = {(seed, key) for seed, key, _ in runs} - here - from_ledger
    from_ledger -= {(seed, needed) for seed, key, args in runs if (seed, key) in to_run for needed in needed_keys(args)}

    def one(index: int, seed: int, key: str, args: tuple[str, ...]) -> None:
        directory = run_dir(out, table.name, key, seed)
        arguments = cell(seed, key, args)
        summary, mode = finished_summary(directory), CONTINUE
        done = f"[{table.name} {index + 1}/{len(runs)}]"
        if (seed, key) in from_ledger:
            printer(f"{done} {key} seed {seed}: finished before, read from {ledger.path}")
            summaries[(seed, key)] = ledger.summary(seed, key, arguments)
            return
        if summary is not None and recorded_arguments(directory) != arguments:  # the grid changed since
            printer(f"{done} {key} seed {seed}: finished before with other arguments; running it again")
            summary, mode = None, REPLACE
        if summary is None:
            for needed in needed_keys(args) if jobs > 1 else ():  # a teacher or a pretraining, submitted before
                pending[(seed, needed)].result()
            remaining = len(runs) - index
            eta = f", ETA {format_duration((time.perf_counter() - started) / ran[0] * remaining)}" if ran[0] else ""
            printer(f"{done} {key} seed {seed}{eta}\n    {shlex.join(command_line([*arguments, *mode], nproc))}")
            execute([*arguments, *mode], nproc, directory.parent / f"{directory.name}.log", jobs)
            ran[0] += 1
            summary = finished_summary(directory)
            if summary is None:
                raise RuntimeError(f"the run in {directory} ended without a summary (see {directory}.log)")
        else:
            printer(f"{done} {key} seed {seed}: finished before, read from {directory}")
        summaries[(seed, key)] = {**summary, "views_seen": views_seen(directory)}
        ledger.record(seed, key, arguments, summaries[(seed, key)])

    pending: dict[tuple[int, str], concurrent.futures.Future] = {}
    if jobs == 1:  # in this process's main thread, where a run's signal handlers can be installed
        for index, (seed, key, args) in enumerate(runs):
            one(index, seed, key, args)
        return summaries
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:  # FIFO: a run starts after its needs
        for index, (seed, key, args) in enumerate(runs):
            pending[(seed, key)] = pool.submit(one, index, seed, key, args)
        for future in pending.values():
            future.result()  # the first failure stops the table with its message
    return summaries


# ---------------------------------------------------------------------------------------------- the results
def chosen_variant(row: Row, seed: int, summaries: dict) -> str | None:
    """The variant of the row's last run with the best validation score for `seed` (the first of equals)."""
    if not row.variants:
        return None
    return max((name for name, _ in row.variants),
               key=lambda name: summaries[(seed, f"{row.searched}@{name}")].get("best_val", -math.inf))


def row_records(table: Table, seeds: int, summaries: dict, exploratory_seeds: int | None = None) -> list[dict]:
    """A record per row and seed: the row's seeds, and any other seed whose runs all finished anyway (an
    exploratory teacher row, whose teacher the claim rows trained at every seed)."""
    records = []
    for seed in range(seeds):
        for row in table.rows:
            if seed >= row_seeds(table, row, seeds, seeds if exploratory_seeds is None else exploratory_seeds) and \
                    not all((seed, key) in summaries for key, _ in row_runs(row)):
                continue
            chosen = chosen_variant(row, seed, summaries)
            resolve = (lambda key: f"{key}@{chosen}" if chosen and key == row.searched else key)
            keys = [resolve(key) for key, _ in row.runs]
            scores = {}
            for column, (key, score) in row.scores.items():
                value = summaries[(seed, resolve(key))]["test"].get(score)
                if value is not None:
                    scores[column] = value
            views = [summaries[(seed, key)].get("views_seen") for key in keys]
            last = summaries[(seed, keys[-1])]
            records.append({"table": table.name, "scale": table.scale, "row": row.label, "seed": seed,
                            "scores": scores, "runs": {key: summaries[(seed, key)]["run_dir"] for key in keys},
                            "chosen": chosen, "val": last.get("best_val"),
                            "views": sum(views) if None not in views else None,
                            "test_images": last["test"].get("images")})
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

    from pipeline.datasets import UNUSED_TO_TEST, build_splits
    from train.config import config_from_args

    config, _ = config_from_args(list(table.common))
    if config.dataset not in UNUSED_TO_TEST:  # the embedded sets; the papers' data sets are not read here
        return None
    floors = {"logistic regression": [], "k-NN": []}
    for seed in seeds:
        data = build_splits(config.dataset, config.data_root, config.image_size, config.val_split, seed,
                            config.samples_per_class, config.imbalance_ratio, primary_labels=config.primary_labels,
                            test_split=config.test_split)
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


def chosen_counts(records: list[dict], row: Row) -> str:
    """How often each variant won validation, e.g. "60ep×3 120ep×7"."""
    chosen = [r.get("chosen") for r in records if r["row"] == row.label]
    return " ".join(f"{name}×{chosen.count(name)}" for name, _ in row.variants if chosen.count(name))


def mean_views(records: list[dict], row: Row) -> str:
    views = [r.get("views") for r in records if r["row"] == row.label]
    return f"{statistics.fmean(views) / 1e3:,.0f}k" if views and None not in views else ""


def markdown(table: Table, records: list[dict], seeds: int, command: str,
             floors: dict[str, list[float]] | None = None) -> str:
    columns = table.columns()
    searched = any(row.variants for row in table.rows)
    header = ["row", *columns, "views seen", *(["chosen on validation"] if searched else []),
              *(["paper"] if table.scale == "paper" else [])]
    lines = [f"### {table.title}", "", table.setting, "", f"`{command}`", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    in_claims = claim_rows(table)
    for row in table.rows:
        cells = [row.label if row.label in in_claims else f"{row.label} (exploratory)"]
        for column in columns:
            stats = row_statistics(records, row, column)
            cells.append("" if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f} (n={stats[2]})"
                         if stats[2] > 1 else f"{stats[0]:.2f} (n=1)")
        cells.append(mean_views(records, row))
        if searched:
            cells.append(chosen_counts(records, row))
        if table.scale == "paper":
            cells.append(row.paper or "")
        lines.append("| " + " | ".join(cells) + " |")
    test_images = sorted({r["test_images"] for r in records if r.get("test_images")})
    lines += ["", f"Test accuracy (%), mean ± sample standard deviation over the n seeds of each row (claims' rows "
              f"{seeds}); test images per run: {', '.join(map(str, test_images)) or 'not recorded'}. Views seen: "
              "training views over all the row's runs (a distilled student's include its teacher's), mean over "
              "seeds. Chosen on validation: how many seeds took each variant of the row's last run. The claims "
              "below were fixed in the grid (train/commands/reproduce_grids.py) before the runs; an exploratory "
              "row carries no verdict.", ""]
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
    parser.add_argument("--data", choices=tuple(SMALL_DATA), default="digits",
                        help="--scale small: the data set (default digits)")
    parser.add_argument("--seeds", type=int, default=10,
                        help="seeds 0 … S−1 for the rows a claim compares (default 10)")
    parser.add_argument("--exploratory-seeds", type=int, default=3,
                        help="seeds for every other row, at most --seeds (default 3)")
    parser.add_argument("--scale", choices=("small", "paper"), default="small",
                        help="small: an embedded data set, minutes to hours on a CPU; paper: the papers' CIFAR "
                             "presets (GPUs)")
    parser.add_argument("--out", default="", help="where the tables and their runs go (default results/, and "
                                                   "results/<data>/ for a data set other than digits)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each a process of its own (default 1)")
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
        print("error: run python -m train.commands.reproduce itself as one process; --nproc-per-node N runs each run "
              "under torchrun", file=sys.stderr)
        return 2
    for flag, value in (("--seeds", options.seeds), ("--exploratory-seeds", options.exploratory_seeds),
                        ("--jobs", options.jobs)):
        if value < 1:
            print(f"error: {flag} must be at least 1, got {value}", file=sys.stderr)
            return 2
    out = Path(options.out or ("results" if options.data == "digits" else f"results/{options.data}"))
    names = list(TABLES) if options.table == "all" else [options.table]
    command = shlex.join(["python", "-m", "train.commands.reproduce", *(sys.argv[1:] if argv is None else argv)])
    for name in names:
        try:
            table = build_table(name, options.scale, options.epochs_scale,
                                [r for r in options.rows.split(",") if r], options.data)
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
            seeds = max(r["seed"] for r in records) + 1
            data = () if options.data == "digits" else ("--data", options.data)
            write_results(table, records, seeds, out, shlex.join(
                ["python", "-m", "train.commands.reproduce", name, *data, "--seeds", str(seeds)]))
            print(f"{table.name}: rebuilt from {out / (table.name + '.jsonl')}")
            continue
        summaries = run_table(table, options.seeds, out, options.nproc_per_node,
                              exploratory_seeds=options.exploratory_seeds, jobs=options.jobs)
        records = row_records(table, options.seeds, summaries, options.exploratory_seeds)
        write_results(table, records, options.seeds, out, command)
        print(f"{table.name}: {len(records)} records in {format_duration(time.perf_counter() - started)} → "
              f"{out / (table.name + '.md')}, .jsonl, .png")
        print((out / f"{table.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
