"""DeepSpeed support: config from flags, the install hint without DeepSpeed, and (where
DeepSpeed is installed) one fine-tuning step through an engine on the CPU, whose checkpoint
our loader reads back."""
import argparse
import importlib
import sys

import pytest
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2

from checkpoint import checkpoint_kind, load_pretrained
from deepspeed_utils import (_free_port, add_deepspeed_args, build_deepspeed_config,
                             init_deepspeed, input_dtype, load_deepspeed_weights,
                             require_deepspeed)
from model_factory import create_classifier

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
