"""The benchmark commands run at tiny sizes and write one valid JSON line per measurement (no timing asserted)."""
import json

from train.commands.bench import main
from train.optim import cpu_has_native_bf16


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def fixed_step_times(monkeypatch, seconds_per_step: dict, wait_share: float = 0.25):
    """Every timed round of path p takes `seconds_per_step[p]` per step, a `wait_share` of it in the loader:
    the figures a bench reports can then be checked against known times instead of against each other."""
    from train.commands.bench import common

    def time_round(self, steps):
        self.start_round()
        for _ in range(steps):
            self.step(next(self.stream))
        self.end_round()
        self.seconds.append(steps * seconds_per_step[self.path])
        self.waits.append(wait_share * steps * seconds_per_step[self.path])
        self.page_faults.append(0)

    monkeypatch.setattr(common.TimedRounds, "time_round", time_round)


def test_kernel_bench_writes_json_lines(tmp_path):
    out = tmp_path / "kernels.jsonl"
    assert main(["kernels", "--batches", "3", "--classes", "5", "--repeats", "2", "--output", str(out)]) == 0
    records = read_lines(out)
    assert {r["kernel"] for r in records} == {"joint_cross_entropy", "aggregate_logits", "distillation_kl",
                                              "expand_views(rotation)", "gather_views(rotation)"}
    assert all(r["median_ms"] > 0 for r in records)
    # host and device time per call apart (a CPU's host time is the call's time)
    assert all(r["host_us"] > 0 and abs(r["device_us"] - r["median_ms"] * 1e3) <= 0.11 for r in records)
    eager = {r["kernel"]: r["median_ms"] for r in records if r["backend"] == "torch"}
    for r in records:  # each ratio is against the eager time of the same case, measured in the same run
        assert abs(r["speedup_vs_eager"] - eager[r["kernel"]] / r["median_ms"]) <= 1e-2 * r["speedup_vs_eager"] + 1e-3


def test_kernel_bench_counts_the_bytes_of_the_family_it_runs(tmp_path):
    out = tmp_path / "kernels.jsonl"
    assert main(["kernels", "--batches", "2", "--classes", "3", "--num-transforms", "6", "--repeats", "1",
                 "--output", str(out)]) == 0
    (views,) = {r["kernel"]: r for r in read_lines(out) if r["kernel"].startswith("expand_views")
                and r["backend"] == "torch"}.values()
    assert views["kernel"] == "expand_views(color_perm)" and views["num_transforms"] == 6
    expected_bytes = 2 * 32 * 32 * 3 * (1 + 4 * 6)  # uint8 read once, six float32 views written
    assert abs(views["gb_per_s"] - expected_bytes / (views["median_ms"] / 1e3) / 1e9) <= 0.02 * views["gb_per_s"] + 0.011


def test_loader_bench_measures_loaders_against_torch(tmp_path):
    """FFCV is left out here only for time (its first pass compiles for ~20 s); its loader has its own tests."""
    out = tmp_path / "loader.jsonl"
    assert main(["loader", "--images", "256", "--folder-images", "40", "--batch", "16", "--epochs", "1",
                 "--loaders", "resident,torch,dali", "--output", str(out)]) == 0
    records = read_lines(out)
    assert {(r["data"], r["loader"]) for r in records} == {
        (data, loader) for data in ("cifar-shaped", "jpeg-folder") for loader in ("resident", "torch", "dali")}
    for record in records:
        assert record["images_per_s"] > 0 and abs(record["views_per_s"] - 4 * record["images_per_s"]) < 1
        reference = next(r for r in records if r["data"] == record["data"] and r["loader"] == "torch")
        assert abs(record["vs_torch"] - record["images_per_s"] / reference["images_per_s"]) <= 0.01 * record["vs_torch"] + 0.01


def test_step_bench_compares_the_trainer_with_the_paper_path(tmp_path, monkeypatch):
    fixed_step_times(monkeypatch, {"trainer": 0.5, "paper": 2.0})
    out = tmp_path / "step.jsonl"
    assert main(["step", "--models", "resnet8", "--data", "synthetic", "--steps", "2", "--warmup", "1",
                 "--batch", "8", "--images", "64", "--workers", "1", "--output", str(out)]) == 0
    records = read_lines(out)
    assert {(r["path"], r["num_transforms"]) for r in records} == {(p, m) for p in ("trainer", "paper") for m in (1, 4)}
    for record in records:
        seconds_per_step = 0.5 if record["path"] == "trainer" else 2.0
        assert record["images_per_s"] == 8 / seconds_per_step and record["ms_per_step"] == 1e3 * seconds_per_step
        assert record["views_per_s"] == record["num_transforms"] * 8 / seconds_per_step
        assert record["loader_wait_share"] == 0.25
        assert record["vs_paper"] == (4.0 if record["path"] == "trainer" else 1.0)
        expected_mfu = record["flops_per_view"] * record["views_per_s"] / record["peak_flops"]
        assert record["flops_per_view"] > 0 and abs(record["mfu"] - expected_mfu) <= 1e-5
    paper = [r for r in records if r["path"] == "paper"]
    assert all(r["loader"] == "torch" and r["precision"] == "fp32" and not r["channels_last"] for r in paper)
    trainer = [r for r in records if r["path"] == "trainer"]
    assert all(r["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32") for r in trainer)


def test_step_bench_can_pin_the_trainer_precision(tmp_path):
    out = tmp_path / "step.jsonl"
    assert main(["step", "--models", "resnet8", "--num-transforms", "4", "--data", "synthetic", "--steps", "1",
                 "--warmup", "1", "--batch", "4", "--images", "16", "--workers", "1", "--paths", "trainer",
                 "--trainer-precision", "fp32", "--output", str(out)]) == 0
    (record,) = read_lines(out)
    assert record["precision"] == "fp32" and record["channels_last"]


def test_step_bench_reports_the_teacher_share_of_a_student_step(tmp_path):
    out = tmp_path / "student.jsonl"
    assert main(["step", "--method", "hsakd_student", "--models", "resnet8", "--teacher-model", "resnet20",
                 "--num-transforms", "4", "--data", "synthetic", "--steps", "2", "--warmup", "1", "--batch", "8",
                 "--images", "64", "--workers", "1", "--paths", "trainer", "--output", str(out)]) == 0
    (record,) = read_lines(out)
    assert record["method"] == "hsakd_student" and record["teacher_model"] == "resnet20"
    assert 0 < record["teacher_share"] < 1 and record["teacher_share"] == record["phase_share"]["teacher"]
    assert abs(sum(record["phase_share"].values()) - 1) < 0.05  # the phases account for the step



def test_step_bench_alternates_rounds_under_a_background_load(tmp_path, monkeypatch):
    import subprocess

    from train.commands.bench import common

    spawned = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        spawned.append(real_popen(*args, **kwargs))
        return spawned[-1]

    monkeypatch.setattr(common.subprocess, "Popen", recording_popen)
    opened = []  # each opening of a reference loader's round stream: its workers forked afresh
    real_open = common.RoundStream.open
    monkeypatch.setattr(common.RoundStream, "open", lambda self: opened.append(self) or real_open(self))
    out = tmp_path / "rounds.jsonl"
    assert main(["step", "--models", "resnet8", "--num-transforms", "4", "--data", "synthetic", "--steps", "1",
                 "--warmup", "1", "--batch", "4", "--images", "16", "--workers", "1", "--rounds", "3",
                 "--background-load", "1", "--output", str(out)]) == 0
    assert len(spawned) == 1 and spawned[0].poll() is not None  # the load ran and was stopped
    trainer, paper = sorted(read_lines(out), key=lambda r: r["path"], reverse=True)
    assert trainer["path"] == "trainer" and paper["path"] == "paper"
    for record in (trainer, paper):
        assert record["rounds"] == 3 and record["background_load"] == 1 and len(record["round_images_per_s"]) == 3
        rates = sorted(record["round_images_per_s"])
        assert abs(record["images_per_s"] - rates[1]) <= 0.01 * rates[1] + 0.1  # the median round is reported
    expected = [t / p for t, p in zip(trainer["round_images_per_s"], paper["round_images_per_s"])]
    assert all(abs(r - e) <= 0.01 * e + 0.01 for r, e in zip(trainer["round_vs_paper"], expected))
    # only the paper path's torch loader gets fresh workers: the warm-up, each of 3 rounds, the phase shares
    assert len(opened) == 5 and len(set(map(id, opened))) == 1 and opened[0].stream is None  # closed at the end


def test_a_round_stream_forks_its_workers_afresh_and_stops_them_at_the_round_s_end():
    from train.commands.bench.common import RoundStream

    events = []

    def batches():  # stands in for a DataLoader's iterator: its workers start and stop with it
        events.append("fork")
        try:
            index = 0
            while True:
                yield index
                index += 1
        finally:
            events.append("shutdown")

    rounds = RoundStream(batches, lambda current: events.append(f"untimed {current}"))
    for _ in range(2):
        stream = rounds.open()
        assert next(stream) == 1  # the untimed step took batch 0
        rounds.close()
    assert events == ["fork", "untimed 0", "shutdown"] * 2


def test_step_bench_times_maxls_two_updates_against_the_official_way(tmp_path, monkeypatch):
    from train.commands.bench import common

    opened = []
    real_open = common.RoundStream.open
    monkeypatch.setattr(common.RoundStream, "open", lambda self: opened.append(self) or real_open(self))
    out = tmp_path / "maxl.jsonl"
    assert main(["step", "--method", "maxl", "--models", "resnet8", "--data", "synthetic", "--steps", "1",
                 "--warmup", "1", "--batch", "6", "--images", "24", "--workers", "1", "--rounds", "2",
                 "--output", str(out)]) == 0
    records = read_lines(out)
    assert {(r["update"], r["path"]) for r in records} == {(u, p) for u in ("learner", "meta")
                                                           for p in ("trainer", "paper")}
    for record in records:
        paper = next(r for r in records if r["path"] == "paper" and r["update"] == record["update"])
        ratio = record["images_per_s"] / paper["images_per_s"]  # of two figures rounded to 0.05, vs_paper to 0.005
        rounding = ratio * (0.05 / record["images_per_s"] + 0.05 / paper["images_per_s"]) + 0.005
        assert abs(record["vs_paper"] - ratio) <= rounding + 1e-9
    assert all(r["precision"] == "fp32" and not r["channels_last"] for r in records if r["path"] == "paper")
    assert len(opened) == 3 and len(set(map(id, opened))) == 1  # the official way's loader: warm-up and 2 rounds


def test_step_bench_compares_contrastive_steps_with_per_sample_pil_views(tmp_path, monkeypatch):
    fixed_step_times(monkeypatch, {"trainer": 0.25, "paper": 1.0})
    out = tmp_path / "simclr.jsonl"
    assert main(["step", "--method", "simclr", "--models", "resnet8", "--data", "synthetic", "--steps", "1",
                 "--warmup", "1", "--batch", "8", "--images", "32", "--workers", "1", "--rounds", "2",
                 "--output", str(out)]) == 0
    trainer, paper = sorted(read_lines(out), key=lambda r: r["path"], reverse=True)
    assert (trainer["path"], paper["path"]) == ("trainer", "paper") and paper["precision"] == "fp32"
    assert trainer["vs_paper"] == 4.0 and trainer["round_images_per_s"] == [32.0, 32.0]
    assert paper["images_per_s"] == 8.0 and trainer["loader_wait_share"] == paper["loader_wait_share"] == 0.25
    # MFU: both paths share the reference step's model FLOPs, each over its own time and precision's peak
    assert trainer["flops_per_step"] == paper["flops_per_step"] > 0
    for record, seconds_per_step in ((trainer, 0.25), (paper, 1.0)):
        expected = record["flops_per_step"] / seconds_per_step / record["peak_flops"]
        assert abs(record["mfu"] - expected) <= 0.01 * expected + 1e-5
    if trainer["precision"] == "bf16":  # the ceiling: the reference's step time over a step's FLOPs at the bf16 peak
        ceiling = 1.0 / (trainer["flops_per_step"] / trainer["peak_flops"])
        assert abs(trainer["vs_paper_at_peak"] - ceiling) <= 0.01 * ceiling + 0.01


def test_loader_bench_times_the_random_view_pass(tmp_path):
    out = tmp_path / "views.jsonl"
    assert main(["loader", "--views", "simclr", "--images", "64", "--folder-images", "0", "--batch", "16",
                 "--epochs", "1", "--loaders", "resident,torch", "--output", str(out)]) == 0
    records = read_lines(out)
    assert {r["loader"] for r in records} == {"resident", "torch"}
    assert all(r["view_recipe"] == "simclr" and abs(r["views_per_s"] - 2 * r["images_per_s"]) < 1 for r in records)


def test_streaming_loader_bench_reports_speed_and_peak_memory(tmp_path):
    out = tmp_path / "stream.jsonl"
    assert main(["loader", "--data", "jpeg-folder", "--images", "40", "--image-size", "32", "--batch", "8",
                 "--steps", "2", "--loaders", "torch,dali", "--cache", str(tmp_path / "bench"), "--output",
                 str(out)]) == 0
    records = read_lines(out)
    assert [r["loader"] for r in records] == ["torch", "dali"] and records[0]["vs_torch"] == 1.0
    assert all(r["images_per_s"] > 0 and 0 < r["peak_memory_gb"] < 4 and r["files"] == 40 for r in records)
    assert (tmp_path / "bench" / "jpeg-folder-40" / "train" / "class_0000").is_dir()
