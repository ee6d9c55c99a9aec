"""`python -m train.commands.reproduce`: a grid of ordinary runs, its tables, its resume; `--transforms auto`."""
import dataclasses
import json
import math
import shutil

import pytest

from conftest import DIGITS_8PX
from train.commands import reproduce
from train.commands.reproduce_grids import Claim, Row, Table, build_table


def test_a_two_row_grid_writes_its_tables_and_a_second_call_runs_nothing(tmp_path, capsys):
    """Both claim rows search three budgets (60, 120, 240 epochs, here × 0.01); each seed's score is its best
    budget on validation."""
    out = tmp_path / "results"
    argv = ["sla", "--seeds", "1", "--out", str(out), "--rows", "baseline,sla_sd rotation", "--epochs-scale", "0.01"]
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("train/main.py --dataset digits") == 6  # each run's command line, before it runs
    records = [json.loads(line) for line in (out / "sla.jsonl").read_text().splitlines()]
    assert [r["row"] for r in records] == ["baseline", "sla_sd rotation"]
    assert set(records[1]["scores"]) == {"SI", "AG", "SD"} and all(0 <= v <= 100 for v in records[1]["scores"].values())
    for record in records:  # the budget with the best validation score, its run's test scores and views
        key = "baseline" if record["row"] == "baseline" else "sla_sd-rotation"
        budgets = {name: json.loads((out / "runs" / "sla" / f"{key}@{name}-s0" / "metrics.jsonl").read_text()
                                    .splitlines()[-1]) for name in ("60ep", "120ep", "240ep")}
        best = max(budgets, key=lambda name: budgets[name]["best_val"])
        assert record["chosen"] == best and record["val"] == budgets[best]["best_val"]
        assert record["scores"]["SI"] == budgets[best]["test"]["SI"] and record["test_images"] == 1553
        views = 4 if key == "sla_sd-rotation" else 1
        assert record["views"] == budgets[best]["steps"] * 32 * views
    table = (out / "sla.md").read_text()
    assert f"| baseline | {records[0]['scores']['SI']:.2f} (n=1) |" in table
    assert "SLA+SD (the paper's four rotations) over the baseline" in table and "epochs × 0.01" in table
    assert f"{records[0]['chosen']}×1" in table and "test images per run: 1553" in table
    assert (out / "sla.png").read_bytes()[:4] == b"\x89PNG"
    run = out / "runs" / "sla" / "baseline@60ep-s0"
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1 and config["seed"] == 0 and config["samples_per_class"] == 10
    assert config["test_split"] == "unused" and config["flip"] is False
    assert "train/main.py" in (run / "command.txt").read_text()  # the run's own command, rerunnable by hand

    # interrupted before the last run: the second call reads the others back and runs only the missing one
    metrics = (run / "metrics.jsonl").read_text()
    other = out / "runs" / "sla" / "sla_sd-rotation@240ep-s0"
    for path in other.iterdir():
        path.unlink()
    ledger = out / "sla.runs.jsonl"  # the interrupted run never reached the ledger either
    ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines() if "rotation@240ep" not in line))
    assert reproduce.main(argv) == 0
    printed = capsys.readouterr().out
    assert "baseline@60ep seed 0: finished before" in printed and printed.count("train/main.py --dataset digits") == 1
    assert (run / "metrics.jsonl").read_text() == metrics
    again = [json.loads(line) for line in (out / "sla.jsonl").read_text().splitlines()]
    assert again == records  # the rerun cell is the same run again: same seed, same scores

    # a grid whose arguments changed runs that cell again rather than read an answer to another question
    rerun = ["sla", "--seeds", "1", "--out", str(out), "--rows", "baseline", "--epochs-scale", "0.04"]
    assert reproduce.main(rerun) == 0
    assert "baseline@60ep seed 0: finished before with other arguments; running it again" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert reproduce.main(rerun) == 0
    assert "baseline@60ep seed 0: finished before, read from" in capsys.readouterr().out  # replaced once, then kept

    # a fresh clone has the committed ledger (sla.runs.jsonl) but no run directories, and may name its --out
    # otherwise (here a link to the same folder): nothing runs again
    shutil.rmtree(out / "runs")
    (tmp_path / "elsewhere").symlink_to(out)
    ledger = tmp_path / "elsewhere" / "sla.runs.jsonl"
    assert reproduce.main([*rerun[:3], "--out", str(tmp_path / "elsewhere"), *rerun[5:]]) == 0
    printed = capsys.readouterr().out
    assert "train/main.py" not in printed and printed.count(f"finished before, read from {ledger}") == 3
    assert [json.loads(line) for line in (out / "sla.jsonl").read_text().splitlines()][0]["chosen"] in budgets


def test_claim_rows_take_every_seed_and_exploratory_rows_fewer_and_jobs_wait_for_what_they_read(tmp_path, capsys):
    """--seeds for the rows a claim compares, --exploratory-seeds for the others; with --jobs 2 each run is a
    process of its own, and a run that reads another's checkpoint (a student, its teacher) starts after it."""
    table = build_table("hsakd", "small", 0.05, ["teacher resnet20", "student resnet8 alone",
                                                 "student resnet8 distilled (hsakd_student)"])
    planned = reproduce.planned_runs(table, 3, 2)
    assert [key for seed, key, _ in planned if seed == 2] == [
        "student@40ep", "student@80ep", "student@160ep", "teacher", "distilled@40ep", "distilled@80ep",
        "distilled@160ep"]  # the teacher runs for the distilled row; its own row (exploratory) stops at 2 seeds
    assert [key for seed, key, _ in planned if seed == 0][:2] == ["teacher", "student@40ep"]
    finished = {(seed, key): {"test": {"SI": 50.0 + seed}, "best_val": 1.0, "run_dir": key} for seed, key, _ in planned}
    teacher_seeds = [r["seed"] for r in reproduce.row_records(table, 3, finished, 2) if r["row"] == "teacher resnet20"]
    assert teacher_seeds == [0, 1, 2]  # exploratory, yet every seed's teacher finished for the distilled row
    order = []
    common = ("--dataset", "digits", *DIGITS_8PX, "--model", "resnet8", "--samples-per-class", "4", "--batch-size",
              "8", "--epochs", "1", "--log-every", "1000")
    first = ("first", ("--method", "baseline"))
    tiny = Table("t", "T", "setting", "small", common, (
        Row("first", (first,), {"SI": ("first", "SI")}),
        Row("second", (first, ("second", ("--method", "baseline", "--init-from", "{run:first}/best.pt"))),
            {"SI": ("second", "SI")}, variants=(("a", ("--lr", "0.1")), ("b", ("--lr", "0.01"))))))
    summaries = reproduce.run_table(tiny, 1, tmp_path, 1, order.append, exploratory_seeds=1, jobs=2)
    assert set(summaries) == {(0, "first"), (0, "second@a"), (0, "second@b")}
    assert [line.split("]")[1].split()[0] for line in order if "train/main.py" in line][0] == "first"
    first_done = json.loads((tmp_path / "runs" / "t" / "first-s0" / "metrics.jsonl").read_text()
                            .splitlines()[-1])["time"]
    for name in ("a", "b"):
        run = tmp_path / "runs" / "t" / f"second@{name}-s0"
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["time"] >= first_done
        assert json.loads((run / "config.json").read_text())["init_from"].endswith("first-s0/best.pt")

    # from the ledger alone, a run still to come needs its teacher's checkpoint: the teacher runs again, the
    # finished student is read back
    shutil.rmtree(tmp_path / "runs")
    ledger = tmp_path / "t.runs.jsonl"
    ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines() if '"second@a"' not in line))
    order.clear()
    again = reproduce.run_table(tiny, 1, tmp_path, 1, order.append, exploratory_seeds=1)
    assert [line.split("]")[1].split()[0] for line in order if "train/main.py" in line] == ["first", "second@a"]
    assert any("second@b seed 0: finished before, read from" in line for line in order)
    assert again[(0, "second@b")] == summaries[(0, "second@b")]


def test_with_several_processes_each_run_goes_through_torchrun():
    command = reproduce.command_line(["--method", "baseline"], nproc=2)
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5].endswith("train/main.py") and command[6:] == ["--method", "baseline"]
    assert reproduce.command_line(["--method", "baseline"], nproc=1)[1].endswith("train/main.py")


def test_a_table_states_mean_sample_std_and_n_and_checks_its_claims_by_a_paired_interval():
    """A claim holds when the 95% paired-t interval of its per-seed differences lies above its margin, fails when
    below, and is inconclusive otherwise; rows outside every claim are marked exploratory."""
    rows = tuple(Row(label, ((label, ()),), {"acc": (label, "SI")}) for label in "abcde")
    table = Table("t", "T", "setting", "small", (), rows,
                  (Claim("a over b by 2", ("a", "acc"), ("b", "acc"), 2.0),
                   Claim("a near the best of b and c", ("a", "acc"), ("best of: b|c", "acc"), -1.0),
                   Claim("a over d by 2", ("a", "acc"), ("d", "acc"), 2.0)))
    records = [{"row": row, "seed": seed, "scores": {"acc": value}}
               for row, values in (("a", (80.0, 81.0, 82.0)), ("b", (70.0, 71.0, 72.0)), ("c", (90.0, 91.0, 92.0)),
                                   ("d", (71.0, 79.0, 72.0)), ("e", (50.0, 50.0, 50.0)))
               for seed, value in enumerate(values)]
    text = reproduce.markdown(table, records, 3, "cmd")
    assert "| a | 81.00 ± 1.00 (n=3) |" in text and "| e (exploratory) | 50.00 ± 0.00 (n=3) |" in text
    assert ("a over b by 2: a acc − b acc, paired over 3 seeds: +10.00 points, 95% interval [+10.00, +10.00] "
            "(paired t); claim: more than +2.0: **holds**") in text
    assert "a near the best of b and c: a acc − c acc" in text and "[-10.00, -10.00]" in text and "**fails**" in text
    # a − d = 9, 2, 10: mean 7, sample sd √19, t(0.975, 2) = 4.3027: 7 ± 10.83
    half = 4.302652729911275 * math.sqrt(19) / math.sqrt(3)
    assert f"+7.00 points, 95% interval [{7 - half:+.2f}, {7 + half:+.2f}]" in text and "**inconclusive**" in text


def test_every_table_declares_runs_that_the_trainer_accepts():
    """At both scales, without training: every run's arguments parse, and every run that reads another's checkpoint
    (a probe's --pretrained, --init-from, a student's --teacher) asks for the backbone that run leaves, at its image
    size and on its data set."""
    from train.config import config_from_args
    from train.methods import build_method

    for name in reproduce.TABLES:
        for scale, data in (("small", "digits"), ("small", "mnist5k"), ("paper", "digits")):
            table = build_table(name, scale, data=data)
            configs = {}
            for seed, key, args in reproduce.planned_runs(table, 1):
                arguments = [*table.common, *reproduce.main_arguments(args, reproduce.Path("r"), name, seed)]
                configs[key], _ = config_from_args(arguments)  # parses: no unknown flag, no bad value
                assert "{" not in " ".join(arguments), (name, key, arguments)
            for seed, key, args in reproduce.planned_runs(table, 1):
                config = configs[key]
                for flag, wanted in (("--pretrained", config.model), ("--init-from", config.model),
                                     ("--teacher", config.teacher_model)):  # empty: a student takes any teacher
                    source = next((arg for previous, arg in zip(args, args[1:]) if previous == flag), None)
                    if source is None:
                        continue
                    made = configs[source[len("{run:"):source.index("}")]]
                    where = (name, scale, data, key, flag)
                    assert not wanted or build_method(made).backbone_name == wanted, where
                    assert (made.image_size, made.dataset) == (config.image_size, config.dataset), where
            for claim in table.claims:
                labels = [claim.row[0], *claim.baseline[0].removeprefix("best of: ").split("|")]
                assert all(label in {row.label for row in table.rows} for label in labels), claim
    with pytest.raises(ValueError, match="has no row 'nope'"):
        build_table("sla", "small", only_rows=["nope"])


def test_transforms_auto_trains_each_candidate_briefly_and_keeps_the_winner_on_resume(tiny_config, tmp_path, capsys):
    from train.main import train

    config = tiny_config(method="sla_sd", transforms="auto", auto_families="rotation2,color_perm3", epochs=2,
                         auto_trial_fraction=0.5, samples_per_class=10, batch_size=20, run_name="auto")
    summary = train(config)
    run = tmp_path / "runs" / "auto"
    decision = json.loads((run / "auto_transforms.json").read_text())
    assert [t["family"] for t in decision["trials"]] == ["rotation2", "color_perm3"]
    assert all(t["epochs"] == 1 and t["steps"] == 5 for t in decision["trials"])  # 100 images / 20, one epoch
    best = max(decision["trials"], key=lambda t: t["val_score"])
    assert decision["winner"] == best["family"] == summary["transforms"]
    assert summary["transform_trials"]["trial_steps"] == 10
    assert json.loads((run / "config.json").read_text())["transforms"] == decision["winner"]
    trial_metrics = {}
    for trial in decision["trials"]:  # ordinary runs in the run directory, scored on validation only
        trial_metrics[trial["family"]] = (run / "auto" / trial["family"] / "metrics.jsonl").read_text()
        assert json.loads(trial_metrics[trial["family"]].splitlines()[-1])["best_val"] == trial["val_score"]
    capsys.readouterr()
    # continuing the run reads the decision back: no trial runs again, the family stays (a resumed run's exactness
    # is the ordinary resume's, tests/test_resume.py)
    again = train(dataclasses.replace(config, resume="auto"))
    assert f"--transforms auto: {decision['winner']}, as chosen when this run started" in capsys.readouterr().out
    assert again["transforms"] == decision["winner"]
    assert all((run / "auto" / family / "metrics.jsonl").read_text() == text for family, text in trial_metrics.items())
    with pytest.raises(ValueError, match="which baseline does not use"):
        train(tiny_config(method="baseline", transforms="auto"))
    with pytest.raises(ValueError, match="unknown transformation family 'nope'"):
        train(tiny_config(method="sla", transforms="auto", auto_families="rotation,nope", run_name="bad"))


def test_from_records_rebuilds_the_tables_from_their_json_lines_alone(tmp_path, capsys):
    """--from-records trains nothing: the committed .jsonl gives back the .md (means, intervals, verdicts, the
    pixel floors of the same splits) and the .png, naming the command that regenerates the runs; a missing file is
    one line. MAXL's primary task has two classes: a floor above 50% learned something from the pixels."""
    import shutil

    from conftest import REPO

    shutil.copy(REPO / "results" / "maxl.jsonl", tmp_path / "maxl.jsonl")
    assert reproduce.main(["maxl", "--from-records", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "maxl.md").read_text()
    seeds = len({json.loads(line)["seed"] for line in (REPO / "results" / "maxl.jsonl").read_text().splitlines()})
    assert f"`python -m train.commands.reproduce maxl --seeds {seeds}`" in text
    assert "95% interval" in text and (tmp_path / "maxl.png").stat().st_size > 0
    floors = reproduce.pixel_floors(build_table("maxl", "small", 1.0, []), [0])  # the table's own splits
    assert set(floors) == {"logistic regression", "k-NN"} and all(50 < v[0] <= 100 for v in floors.values())
    assert "Floors on the raw pixels of the same splits" in text
    assert not (tmp_path / "runs").exists()
    assert reproduce.main(["sla", "--from-records", "--out", str(tmp_path)]) == 2
    assert "sla.jsonl does not exist" in capsys.readouterr().err
