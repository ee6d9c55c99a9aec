"""FFCV's pipelines run by Python instead of compiled by Numba (FFCV's own switch, ffcv.pipeline.compiler.Compiler).
For the tests of what this project does around FFCV on a few hundred images (which rows each rank reads, rows
skipped for unreadable files, reading past the page cache, which .beton a split may read): there, compiling each
loader's pipeline took most of the test, 2–4 s a loader. The tests of FFCV's output itself (the batch contract,
views equal to the resident loader's, crops against PIL, a training run) keep it compiled."""
import functools


def interpreted(build):
    """`build` (FfcvLoader._build) with FFCV's compiler off while it makes its Loader, which compiles there."""
    @functools.wraps(build)
    def build_interpreted(*args, **kwargs):
        from ffcv.pipeline.compiler import Compiler

        Compiler.set_enabled(False)
        try:
            return build(*args, **kwargs)
        finally:
            Compiler.set_enabled(True)

    return build_interpreted
