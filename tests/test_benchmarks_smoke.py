"""Each benchmark's small CPU mode runs as a script and prints its figures (no timing asserts:
the numbers depend on the machine and on whatever else runs on it). ``bench_pretrain_step.py``
and ``bench_eval.py``'s ViTs run in ``benchmarks/gpu_check.sh --dry-run`` (``test_gpu_check.py``)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

NUM = r"[0-9]+(?:\.[0-9]+)?"
CASES = {
    "bench_eval.py": (["--models", "tpn_r50", "--iters", "1"], [  # the ViTs: gpu_check.sh
        rf"tpn_r50 +baseline: +{NUM} views/s .* \| {NUM} GFLOP/view",
        rf"tpn_r50 ratio optimised/baseline: {NUM}x views/s"]),
    "bench_data.py": (["--limit", "3", "--pipelines", "pretrain", "test", "--prepare"], [
        r"re-encoded 3 videos",
        rf"pretrain: baseline +{NUM} clips/s \| optimised +{NUM} clips/s \| ratio {NUM}x \| "
        rf"prepared +{NUM} clips/s \| ratio {NUM}x",
        rf"test: baseline +{NUM} views/s \| optimised +{NUM} views/s \| ratio {NUM}x"]),
    "bench_scaling.py": (["--mask_ratios", "0.95", "--batch_sizes", "1",
                          "--checkpointing", "off", "on", "--warmup", "0"], [
        rf"T +S +0.95 +4 +1 +on +{NUM} +{NUM} +{NUM} \w*B",
        r"2 settings measured"]),
    "bench_topk.py": ([], [rf"global +scatter +{NUM}", rf"local +dense +{NUM}",
                           r"fastest local with 6 heads"]),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_small_mode_prints_its_figures(script, tmp_path):
    extra, patterns = CASES[script]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", script), "--small"]
    if script != "bench_data.py":
        argv += ["--device", "cpu"]
    else:
        argv += ["--tmp", str(tmp_path)]
    proc = subprocess.run(argv + extra, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for pattern in patterns:
        assert re.search(pattern, proc.stdout), f"{pattern!r} not in:\n{proc.stdout}"
