"""The CUDA-only paths, each against the CPU or the plain path it replaces (marker ``cuda``:
skipped where no CUDA device is visible; ``pytest -m cuda`` runs these and the CUDA cases of
``test_optimised_paths.py``, and ``benchmarks/gpu_check.sh`` runs that first). Tiny models
(4 frames, 32 px) and the bundled clips.

- the whole distillation loss and its gradients in float32 on CUDA (SDPA kernels, the
  scatter top-k, the losses) equal the CPU's;
- fp16 autocast with a GradScaler (CUDA without bf16, and the benchmarks' baseline): loss
  terms within 1 % of float32, and scaled steps with fused AdamW update the student;
- a one-process NCCL group from ``distributed.init_distributed_mode`` and the collectives
  the engines use;
- the scripts on CUDA: pre-training under fp16 + GradScaler and its resume from a checkpoint
  read on the CPU; fine-tuning with fused AdamW + GradScaler; its multi-view test under bf16
  on CUDA against float32 on the CPU.
"""
import copy
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import distributed as du
import engine_for_pretraining as engine
import losses
import run_class_finetuning as rcf
import run_mmkd_pretraining as rmp
from checkpoint import load_checkpoint
from conftest import VIDEOS
from deepspeed_utils import _free_port
from engine_for_finetuning import _gather_scores
from optim_factory import amp_setup, build_optimizer
from test_finetuning import DIST_CLIPS, _anno_dir, _read_predictions
from test_optimised_paths import loss_and_grads, models, tol  # noqa: F401  (models: fixture)
from test_pretraining import read_log

pytestmark = pytest.mark.cuda

PRETRAIN = ["--model", "pretrain_videomae_tiny_patch16_224", "--model_t",
            "pretrain_videomae_tiny_patch16_224", "--input_size", "32", "--num_frames", "4",
            "--sampling_rate", "2", "--batch_size", "2", "--mask_ratio", "0.5", "--num_k", "2",
            "--num_f", "4", "--warmup_epochs", "0", "--lr", "1e-3", "--save_ckpt_freq", "1",
            "--num_workers", "0"]
FINETUNE = ["--model", "vit_tiny_patch16_224", "--data_set", "UCF101", "--nb_classes", "3",
            "--data_root", VIDEOS, "--input_size", "32", "--short_side_size", "40",
            "--num_frames", "4", "--sampling_rate", "4", "--batch_size", "2",
            "--test_num_segment", "2", "--test_num_crop", "1", "--num_workers", "0",
            "--no-auto_resume"]


@pytest.fixture
def no_tf32():
    """Plain float32 matmuls and convolutions on CUDA for the test (TF32 off)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_distillation_loss_and_gradients_on_cuda_equal_the_cpu(models, no_tf32):
    """float32 on both: the loss terms and the student's gradients agree."""
    s, t, x, mask = models
    s = copy.deepcopy(s).eval()
    ref = loss_and_grads(s, t, x, mask)
    out = loss_and_grads(copy.deepcopy(s).cuda(), copy.deepcopy(t).cuda(), x.cuda(),
                         mask.cuda(), device="cuda")
    tol(out[0].cpu(), ref[0])
    assert out[1].keys() == ref[1].keys() == {"hint", "relation", "global", "local", "pixel"}
    for k in ref[1]:
        tol(out[1][k].cpu(), ref[1][k])
    assert out[2].keys() == ref[2].keys()
    for k in ref[2]:
        tol(out[2][k].cpu(), ref[2][k], atol=1e-5, rtol=1e-3)


def test_fp16_grad_scaler_step_close_to_float32(models):
    """``--amp fp16`` on CUDA: teacher and student under fp16 autocast give the float32 terms
    within 1 %, and GradScaler steps of fused AdamW (unscale, clip, step) move the student."""
    s, t, x, mask = models
    s, t = copy.deepcopy(s).cuda().eval(), copy.deepcopy(t).cuda()
    x, mask = x.cuda(), mask.cuda()
    amp, scaler = amp_setup(SimpleNamespace(amp="fp16", device="cuda"))
    assert amp == torch.float16 and isinstance(scaler, torch.amp.GradScaler)
    auto, auto_scaler = amp_setup(SimpleNamespace(amp="auto", device="cuda"))
    assert (auto == torch.bfloat16) == torch.cuda.is_bf16_supported()
    assert (auto_scaler is None) == torch.cuda.is_bf16_supported()
    _, ref_terms, _ = loss_and_grads(s, t, x, mask, device="cuda")
    s.zero_grad(set_to_none=True)
    args = SimpleNamespace(opt="adamw", lr=1e-3, lr_scaled=1e-3, weight_decay=0.05,
                           opt_eps=1e-8, opt_betas=None, momentum=0.9, device="cuda",
                           fused_opt=True)
    opt = build_optimizer(s, args)
    assert opt.defaults["fused"] is True
    before = [p.detach().clone() for p in s.parameters()]
    w = losses.LossWeights.from_args("hybrid", 0.2, 0.1, 1.0, 3.0, 1.0, 1.0)

    def forward():
        return engine.forward_losses(s, t, x, mask, weights=w, device="cuda", amp_dtype=amp,
                                     num_k=2, num_f=3, mean=(0.5,) * 3, std=(0.2,) * 3)
    loss, terms = forward()
    assert terms.keys() == ref_terms.keys()
    for k in ref_terms:
        tol(terms[k], ref_terms[k], atol=1e-4, rtol=1e-2)
    for _ in range(5):  # a step whose scaled gradients overflow is skipped, the scale halved
        engine.backward_step(s, opt, loss, True, loss_scaler=scaler, clip_grad=1.0)
        moved = any(not torch.equal(p, b) for p, b in zip(s.parameters(), before))
        if moved:
            break
        loss, _ = forward()
    assert moved and 0 < scaler.get_scale() <= 2.0 ** 16
    assert all(torch.isfinite(p).all() for p in s.parameters())


def test_one_process_nccl_group_and_the_engines_collectives(monkeypatch):
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(_free_port())).items():
        monkeypatch.setenv(key, value)  # init_distributed_mode rewrites them; undone after
    args = SimpleNamespace(device="cuda")
    du.init_distributed_mode(args)
    try:
        assert args.distributed and args.device == "cuda:0" and dist.get_backend() == "nccl"
        device = torch.device(args.device)
        assert du.all_reduce_mean({"loss": 1.5, "acc1": 0.25}, device) == {"loss": 1.5,
                                                                          "acc1": 0.25}
        assert du.all_reduce_sum(3, device) == 3
        assert du.every_rank(True, device) and not du.every_rank(False, device)
        scores = dict(video_index=torch.tensor([4]), view=torch.tensor([0]),
                      label=torch.tensor([1]), probs=torch.tensor([[0.25, 0.75]]),
                      video_ids={4: "clip"}, skipped=1)
        merged = _gather_scores(scores)  # gather_object over NCCL
        assert merged["video_ids"] == {4: "clip"} and merged["skipped"] == 1
        assert torch.equal(merged["probs"], scores["probs"])
    finally:
        du.shutdown()
    assert not du.is_dist()


def test_pretraining_script_fp16_on_cuda_and_resume(tmp_path, capsys):
    anno = tmp_path / "train.csv"
    anno.write_text("".join(f"{c} 0\n" for c in DIST_CLIPS + ["corrupted_h264.mp4"]))
    out = str(tmp_path / "kd")
    argv = [*PRETRAIN, "--data_path", str(anno), "--data_root", VIDEOS, "--device", "cuda",
            "--amp", "fp16", "--output_dir", out]
    rmp.main(rmp.get_args_parser().parse_args([*argv, "--epochs", "1"]))
    rmp.main(rmp.get_args_parser().parse_args([*argv, "--epochs", "2"]))  # resumes epoch 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "checkpoint-0.pth" in text
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    for r in log:
        for term in ("loss", "hint", "relation", "global", "local"):
            assert math.isfinite(r[f"train_{term}"]), term
        assert r["train_skipped_videos"] == 1 and r["train_clips"] == 5
    ckpt = load_checkpoint(os.path.join(out, "checkpoint-1.pth"))  # onto the CPU
    assert 0 < ckpt["scaler"]["scale"] <= 2.0 ** 16
    weights = [v for v in ckpt["model"].values() if v.is_floating_point()]
    assert {v.dtype for v in weights} == {torch.float32}
    assert {v.device.type for v in weights} == {"cpu"}


def test_finetuning_fp16_on_cuda_then_bf16_test_matches_cpu_float32(tmp_path):
    """One epoch with ``--amp fp16`` (GradScaler, fused AdamW over the layer-decay groups),
    then ``--eval`` of its checkpoint on the CPU in float32 and on CUDA under bf16."""
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS[:4], [0, 1, 2, 0])
    out = str(tmp_path / "ft")
    rcf.main(rcf.get_args_parser().parse_args(
        [*FINETUNE, "--data_path", data, "--device", "cuda", "--amp", "fp16", "--epochs", "1",
         "--warmup_epochs", "0", "--output_dir", out]))
    log = read_log(out)
    assert len(log) == 1 and math.isfinite(log[0]["train_loss"])
    assert json.load(open(os.path.join(out, "test_summary.json")))["num_views"] == 8
    preds = {}
    for device, amp in (("cpu", "none"), ("cuda", "bf16")):
        where = str(tmp_path / device)
        rcf.main(rcf.get_args_parser().parse_args(
            [*FINETUNE, "--data_path", data, "--eval", "--resume",
             os.path.join(out, "checkpoint-0.pth"), "--device", device, "--amp", amp,
             "--output_dir", where]))
        preds[device] = {r["video_id"]: r for r in _read_predictions(where)}
    assert preds["cpu"].keys() == preds["cuda"].keys() and len(preds["cpu"]) == 4
    for vid, ref in preds["cpu"].items():
        low = preds["cuda"][vid]
        assert float(low["score_1"]) == pytest.approx(float(ref["score_1"]), abs=1e-2)
        if float(ref["score_1"]) - float(ref["score_2"]) > 2e-2:  # no near-tie to flip
            assert low["pred_1"] == ref["pred_1"]
