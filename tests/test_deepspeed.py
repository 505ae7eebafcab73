"""DeepSpeed support: config from flags, the install hint without DeepSpeed, and (where
DeepSpeed is installed) one fine-tuning step through an engine on the CPU, whose checkpoint
our loader reads back, and a ``run_class_finetuning.py --enable_deepspeed`` run end to end."""
import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2

import run_class_finetuning as rcf
from checkpoint import load_checkpoint
from deepspeed_utils import (_free_port, add_deepspeed_args, build_deepspeed_config,
                             init_deepspeed, input_dtype, load_deepspeed_weights,
                             require_deepspeed)
from model_factory import create_classifier
from test_finetuning import DIST_CLIPS, ENV, ROOT, VIDEOS, _anno_dir
from weights import checkpoint_kind, load_pretrained

GEOM = dict(img_size=32, num_frames=4)


def test_config_from_flags():
    c = build_deepspeed_config(8, update_freq=2, world_size=4, amp_dtype=torch.float16,
                               zero_stage=2, clip_grad=1.0)
    assert (c["train_batch_size"], c["train_micro_batch_size_per_gpu"],
            c["gradient_accumulation_steps"]) == (64, 8, 2)
    assert c["zero_optimization"]["stage"] == 2 and c["gradient_clipping"] == 1.0
    assert c["fp16"]["enabled"] and not c["bf16"]["enabled"] and input_dtype(c) == torch.float16
    c = build_deepspeed_config(4, amp_dtype=torch.bfloat16)
    assert c["bf16"]["enabled"] and c["gradient_clipping"] == 0.0 and input_dtype(c) == torch.bfloat16
    assert input_dtype(build_deepspeed_config(4)) == torch.float32
    with pytest.raises(ValueError, match="zero_stage 3"):
        build_deepspeed_config(4, zero_stage=3)
    args = add_deepspeed_args(argparse.ArgumentParser()).parse_args(["--enable_deepspeed", "--zero_stage", "1"])
    assert args.enable_deepspeed and args.zero_stage == 1


def test_missing_deepspeed_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    with pytest.raises(ImportError, match="pip install deepspeed"):
        require_deepspeed()
    model = create_classifier("vit_tiny_patch16_224", num_classes=3, **GEOM)
    with pytest.raises(ImportError, match="--enable_deepspeed needs DeepSpeed"):
        init_deepspeed(model, torch.optim.SGD(model.parameters(), lr=0.1), build_deepspeed_config(2))
    args = rcf.get_args_parser().parse_args(["--data_path", "nowhere", "--device", "cpu",
                                             "--enable_deepspeed"])
    with pytest.raises(SystemExit) as e:  # before any data is read
        rcf.main(args)
    msg = str(e.value.code)
    assert msg.startswith("error: --enable_deepspeed needs DeepSpeed") and "\n" not in msg
    assert "pip install deepspeed" in msg


def test_one_finetuning_step_and_checkpoint(tmp_path, monkeypatch, zero_stage=2):
    """ZeRO-2 (gradients and optimizer state partitioned); stages 0 and 1 and bf16 run the
    same way here, but DeepSpeed keeps process-group state across engines, so one engine per
    test process."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    # DeepSpeed JIT-compiles a CPU shared-memory all-reduce op on first use (~45 s); one
    # process does not need it
    monkeypatch.setattr(importlib.import_module("deepspeed.comm.torch"), "build_shm_op", lambda: None)
    # what init_deepspeed would set for a single process, set here so that it is undone after
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(key, value)
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch16_224", num_classes=3, **GEOM)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    groups = len(optimizer.param_groups)
    config = build_deepspeed_config(2, amp_dtype=None, zero_stage=zero_stage, clip_grad=1.0)
    try:
        engine, ds_optimizer = init_deepspeed(model, optimizer, config)
        assert len(ds_optimizer.param_groups) == groups  # layer-decay groups kept
        before = {k: v.clone() for k, v in model.state_dict().items()}
        x = torch.randn(2, 3, 4, 32, 32).to(input_dtype(config))
        loss = torch.nn.functional.cross_entropy(engine(x), torch.tensor([0, 2]))
        engine.backward(loss)
        engine.step()
        assert engine.global_steps == 1 and torch.isfinite(loss)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert "blocks.0.attn.q_bias" in changed and "head.weight" in changed
        engine.save_checkpoint(str(tmp_path), tag="checkpoint-0",
                               client_state={"epoch": 0, "args": {"lr": 1e-3}})
    finally:
        dist.destroy_process_group()
    state = load_deepspeed_weights(str(tmp_path))  # follows the 'latest' tag
    assert checkpoint_kind(state) == "finetune"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    fresh = create_classifier("vit_tiny_patch16_224", num_classes=3, **GEOM)
    load_pretrained(fresh, str(tmp_path / "checkpoint-0"), "deepspeed", strict=True)
    assert torch.equal(fresh.head.weight, model.head.weight)


# DeepSpeed JIT-compiles its CPU shared-memory all-reduce op on first use (~45 s); one process
# does not need it. This launcher runs the script with that build switched off.
# (``import deepspeed.comm.torch as t`` would bind the torch package, which deepspeed.comm
# re-exports under that name.)
_NO_SHM = ("import importlib, runpy, sys; "
           "importlib.import_module('deepspeed.comm.torch').build_shm_op = lambda: None; "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_finetuning_script_with_deepspeed_zero2_then_eval(tmp_path):
    """One epoch of ``--enable_deepspeed --zero_stage 2`` on real clips (two micro-batches
    accumulated into one update), a DeepSpeed checkpoint directory, the multi-view test; then
    ``--eval`` reads that checkpoint (auto-resume from --output_dir, and --finetune of the tag
    directory) and gets the same test result; a second epoch resumes through the engine."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS, [0, 1, 2, 0, 1])
    out = str(tmp_path / "ds")
    argv = ["--model", "vit_tiny_patch16_224", "--data_set", "UCF101", "--nb_classes", "3",
            "--data_path", data, "--data_root", VIDEOS, "--input_size", "32",
            "--short_side_size", "40", "--num_frames", "4", "--sampling_rate", "4",
            "--batch_size", "2", "--update_freq", "2", "--epochs", "1", "--warmup_epochs", "0",
            "--clip_grad", "1.0", "--test_num_segment", "2", "--test_num_crop", "1",
            "--num_workers", "0", "--device", "cpu", "--output_dir", out]
    def run(*extra):
        res = subprocess.run([sys.executable, "-c", _NO_SHM,
                              os.path.join(ROOT, "run_class_finetuning.py"), *argv,
                              "--enable_deepspeed", "--zero_stage", "2", *extra],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res

    res = run()
    assert "DeepSpeed ZeRO-2" in res.stdout and "1 updates per epoch" in res.stdout
    assert "shm_comm_op built" not in res.stdout
    assert open(os.path.join(out, "latest")).read().strip() == "checkpoint-0"
    assert os.path.isfile(os.path.join(out, "checkpoint-0",
                                       "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    ckpt = load_checkpoint(out)  # weights_only=True through the 'latest' tag
    assert ckpt["epoch"] == 0 and ckpt["args"]["enable_deepspeed"] and ckpt["global_steps"] == 1
    assert checkpoint_kind(ckpt) == "finetune" and ckpt["module"]["head.weight"].shape == (3, 192)
    log = [json.loads(line) for line in open(os.path.join(out, "log.json"))]
    assert len(log) == 1 and torch.isfinite(torch.tensor(log[0]["train_loss"]))
    assert log[0]["val_num_videos"] == 5
    summary = json.load(open(os.path.join(out, "test_summary.json")))
    assert summary["num_videos"] == 5 and summary["num_views"] == 10
    os.remove(os.path.join(out, "test_summary.json"))
    rcf.main(rcf.get_args_parser().parse_args([*argv, "--eval"]))  # auto-resumes out/
    assert json.load(open(os.path.join(out, "test_summary.json"))) == summary
    other = str(tmp_path / "eval")
    rcf.main(rcf.get_args_parser().parse_args(
        [*argv, "--eval", "--no-auto_resume", "--finetune", os.path.join(out, "checkpoint-0"),
         "--output_dir", other]))
    assert json.load(open(os.path.join(other, "test_summary.json"))) == summary
    res = run("--epochs", "2")  # engine.load_checkpoint of out/latest, then epoch 1 only
    assert "resumed from" in res.stdout and "epoch 0 done" in res.stdout
    assert [r["epoch"] for r in map(json.loads, open(os.path.join(out, "log.json")))] == [0, 1]
    assert open(os.path.join(out, "latest")).read().strip() == "checkpoint-1"
