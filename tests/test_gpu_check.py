"""``benchmarks/gpu_check.sh --dry-run``: the plan, and every part a CPU can run, at tiny sizes,
ok, with its figures in the summary. The step and evaluation benchmarks' ``--small`` modes are
checked here (their figures), not in ``test_benchmarks_smoke.py``."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
NUM = r"[0-9]+(?:\.[0-9]+)?"
PARTS = ["cuda_tests", "mmkd_bf16_vs_fp32", "mvd_bf16_vs_fp32", "step_B_B_32", "step_S_B_32", "eval",
         "torchrun_nccl", "deepspeed_step"]
FIGURES = {  # part: lines its section of the summary shows
    "cuda_tests": [r"SKIPPED \[\d+\] tests/test_cuda.py: needs a CUDA device",
                   r"\d+ skipped, \d+ deselected"],
    "mmkd_bf16_vs_fp32": [rf"relation +{NUM}e[-+]\d+ +{NUM}e[-+]\d+ +{NUM}%",
                          r"MMKD bf16 vs float32: ok"],
    "mvd_bf16_vs_fp32": [rf"img_feat +{NUM}e[-+]\d+ +{NUM}e[-+]\d+ +{NUM}%",
                         r"MVD bf16 vs float32: ok"],
    "step_B_B_32": [rf"baseline: +{NUM} ms/step .* {NUM} clips/s",
                    rf"optimised: +{NUM} ms/step .* {NUM} clips/s .*TFLOP/s",
                    rf"analytic FLOPs per clip: .* = {NUM} GFLOP",
                    rf"ratio optimised/baseline: {NUM}x clips/s"],
    "eval": [rf"ViT-S +baseline: +{NUM} views/s", rf"ViT-S optimised: +{NUM} views/s",
             rf"ViT-S ratio optimised/baseline: {NUM}x views/s"],
    "torchrun_nccl": [r"distributed: rank 0 of 1, gloo on cpu",
                      r"effective batch size 2 = 2 per process x 1 processes",
                      r"epoch 0: loss=[0-9.]+ hint=", r"checkpoint: .*checkpoint-0\.pth"],
    "deepspeed_step": [r"DeepSpeed ZeRO-2, torch\.float32", r"epoch 0: loss [0-9.]+",
                       r"multi-view test \(1x1 views\) of 2 videos"],
}


def test_gpu_limits_add_up_to_eight_minutes():
    limits = re.findall(r"^part (\w+) (\d+) ", open(SCRIPT).read(), re.M)
    assert [name for name, _ in limits] == PARTS
    assert sum(int(limit) for _, limit in limits) == 480


def section(summary, name):
    """The summary's lines from ``== name:`` to the next blank line."""
    m = re.search(rf"^== {name}: .*?(?=\n\n|\Z)", summary, re.M | re.S)
    assert m, f"no section {name} in:\n{summary}"
    return m.group(0)


def test_dry_run_plans_every_part_and_runs_the_cpu_ones(tmp_path):
    deepspeed = importlib.util.find_spec("deepspeed") is not None  # else that part is skipped
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", SCRIPT, "--dry-run", str(out)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    summary = (out / "gpu_check.txt").read_text()
    assert res.returncode == 0, summary + res.stderr[-2000:]
    assert res.stdout == summary  # what it prints is what it keeps
    plan = summary.split("\nplan: ")[1].split("\n\n")[0]
    for name in PARTS:
        assert re.search(rf"^  {name} +\d+ s  \S", plan, re.M), name
    assert re.search(r"^== setup: ok .*\n   python: \$PYTHON = ", summary, re.M)
    results = summary.split("\nresults:\n")[1]
    skipped = {"step_S_B_32": r"skipped \(dry run: the same script as step_B_B_32"}
    if not deepspeed:
        skipped["deepspeed_step"] = r"skipped \(needs deepspeed, missing"
    for name in ["setup"] + PARTS:
        assert re.search(rf"^  {name} +\d+ s  {skipped.get(name, 'ok$')}", results, re.M), name
    assert re.search(rf"^total: {len(PARTS) + 1 - len(skipped)} ok, 0 failed, 0 timed out, {len(skipped)} "
                     r"skipped", results, re.M)
    for name, patterns in FIGURES.items():
        if name in skipped:
            continue
        text = section(summary, name)
        for pattern in patterns:
            assert re.search(pattern, text), f"{pattern!r} not in:\n{text}"
    logs = (out / "gpu_check_logs.txt").read_text()
    for name in ["setup"] + [p for p in PARTS if p not in skipped]:
        assert f"===== {name}" in logs, name
    assert sorted(os.listdir(out)) == ["gpu_check.txt", "gpu_check_logs.txt"]


@pytest.mark.parametrize("argv, message", [
    ([], "error: OUT_DIR missing"),
    (["--fast", "out"], "error: unknown option --fast"),
    (["out", "evaluation"], "error: no part 'evaluation'; parts: cuda_tests "),
])
def test_usage_errors(tmp_path, argv, message):
    res = subprocess.run(["bash", SCRIPT, *argv], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stderr.startswith(message), res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, argv, failed, printed", [
    ("mmkd", [], "loss, hint, relation", ["relation"]),  # --method mmkd: the default
    ("mvd", ["--method", "mvd", "--teachers", "T"], r"loss, img_feat, vid_feat\)",
     [r"img_feat +\d\.\d+e[-+]\d+ +\d\.\d+e[-+]\d+ +\d+\.\d+%",
      r"student gradients: cosine similarity 0\.99\d+"]),
], ids=["mmkd", "mvd"])
def test_check_bf16_fails_beyond_its_tolerance(method, argv, failed, printed, monkeypatch,
                                               capsys):
    """The bf16 check's verdict follows its tolerance (the dry run above shows it passing),
    for MMKD's step and MVD's (``--small``: ViT-T students): it prints the terms in both
    precisions and the gradients' cosine (bf16 really ran: the terms differ)."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import check_bf16
    verdict = rf"{method.upper()} bf16 vs float32: FAILED \(terms beyond 1e-07 %: {failed}"
    with pytest.raises(SystemExit, match=verdict):
        check_bf16.main([*argv, "--small", "--device", "cpu", "--rtol", "1e-9"])
    out = capsys.readouterr().out
    for pattern in printed:
        assert re.search(pattern, out), out
