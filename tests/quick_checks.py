"""Run under `torchrun --nproc_per_node=2`: the two-rank checks of several test files in one launch (a launch
costs seconds of imports on each rank, FFCV's Numba compilation more, both more than most of these checks take),
then the two-rank trainings of tests/two_rank_runs.py in the same group; rank 0 writes one JSON verdict, {check
name: that check's verdict, "runs": {run name: [exit status on each rank]}}. The tests read their part through
conftest's `quick_torchrun_verdicts`, which makes the work directory (the argument after the verdict's path), the
JPEG folder in it and the runs' teacher file first."""
import sys
from pathlib import Path

from torchrun_check import gather_objects, run_check  # also puts the repository on sys.path

import distributed_check  # noqa: E402
import negatives_check  # noqa: E402
import rng_check  # noqa: E402
import shard_check  # noqa: E402
import shuffle_bn_check  # noqa: E402
import sinkhorn_check  # noqa: E402
import streaming_shard_check  # noqa: E402
import two_rank_runs  # noqa: E402

if __name__ == "__main__":
    from ffcv_interpreted import interpreted
    from pipeline.ffcv_loader import FfcvLoader

    FfcvLoader._build = interpreted(FfcvLoader._build)  # these checks are about rows and ranks, not FFCV's decoding
    work = Path(sys.argv[2])  # the work directory, after the verdict's path
    # the one-process references, before the group exists
    negatives = negatives_check.one_process_loss()
    whole_batch_codes = sinkhorn_check.sinkhorn(sinkhorn_check.prototype_scores())
    checks = {"distributed": distributed_check.check,
              "negatives": lambda context: negatives_check.check(context, *negatives),
              "rng": rng_check.check,
              "shuffle_bn": shuffle_bn_check.check,
              "sinkhorn": lambda context: sinkhorn_check.check(context, whole_batch_codes),
              "shards": lambda context: shard_check.check(context, str(work / "betons")),
              "streaming_shards": lambda context: streaming_shard_check.check(context, str(work / "jpegs"),
                                                                              str(work / "cache"))}

    def checks_then_runs(context, _work) -> dict:
        verdict = {name: check(context) for name, check in checks.items()}
        statuses = gather_objects(two_rank_runs.train_every_run(context.rank, work / "runs"))
        verdict["runs"] = {name: [status[name] for status in statuses] for name in statuses[0]}
        return verdict

    run_check(checks_then_runs)
