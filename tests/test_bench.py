"""The benchmark commands run at tiny sizes and write one valid JSON line per measurement (no timing asserted)."""
import json

from train.bench import main


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kernel_bench_writes_json_lines(tmp_path):
    out = tmp_path / "kernels.jsonl"
    assert main(["kernels", "--batches", "3", "--classes", "5", "--repeats", "2", "--output", str(out)]) == 0
    records = read_lines(out)
    assert {r["kernel"] for r in records} == {"joint_cross_entropy", "aggregate_logits", "distillation_kl",
                                              "expand_views(rotation)"}
    assert all(r["median_ms"] > 0 for r in records)
    assert all(r["speedup_vs_eager"] == 1.0 for r in records if r["backend"] == "torch")


def test_loader_bench_measures_every_loader_against_torch(tmp_path):
    out = tmp_path / "loader.jsonl"
    assert main(["loader", "--images", "256", "--folder-images", "40", "--batch", "16", "--epochs", "1",
                 "--output", str(out)]) == 0
    records = read_lines(out)
    assert {(r["data"], r["loader"]) for r in records} == {
        (data, loader) for data in ("cifar-shaped", "jpeg-folder") for loader in ("resident", "torch", "dali", "ffcv")}
    for record in records:
        assert record["images_per_s"] > 0 and abs(record["views_per_s"] - 4 * record["images_per_s"]) < 1
        assert record["vs_torch"] == 1.0 if record["loader"] == "torch" else record["vs_torch"] > 0
