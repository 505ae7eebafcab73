"""Repeated sampling in pre-training (``--num_sample S``, VideoMAE V2): one decode per video,
``S`` clips with their own crop and mask, flattened into the batch, counted by the effective
batch; a run killed after a checkpoint and resumed is bit-identical to one straight through.
Run for each of the three pre-training scripts on the bundled clips."""
import json
import os

import pytest
import torch

import engine_for_pretraining as engine
import run_mmkd_pretraining as rmp
import run_mvd_pretraining as mvd
from conftest import VIDEOS, killed_after_saving
from datasets.guard import CorruptedVideoGuard
from datasets.transforms import PretrainTransform
from test_mvd import TINY as MVD_TINY

# 64 px: a 4 x 4 patch grid, so two tube masks of ratio 0.5 coincide with chance 1 / 12870
SHAPE = ["--input_size", "64", "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "1",
         "--device", "cpu", "--num_workers", "0", "--warmup_epochs", "0", "--mask_ratio", "0.5",
         "--save_ckpt_freq", "1", "--epochs", "2", "--num_sample", "2", "--lr", "1e-3"]
VIT = ["--model", "pretrain_videomae_tiny_patch16_224"]
SCRIPTS = {  # parser, build, flags, --update_freq
    "videomae": (lambda: rmp.get_args_parser(teacher=False), rmp.build_models,
                 VIT + ["--decoder_depth", "1"], 1),
    "mmkd": (rmp.get_args_parser, rmp.build_models,
             VIT + ["--model_t", "pretrain_videomae_tiny_patch16_224", "--num_k", "2",
                    "--num_f", "4"], 1),
    "mvd": (mvd.get_args_parser, mvd.build_models,
            MVD_TINY[:MVD_TINY.index("--input_size")] + ["--teacher_input_size", "64"], 2),
}


@pytest.fixture(scope="module")
def anno(tmp_path_factory):
    path = tmp_path_factory.mktemp("anno") / "train.csv"
    path.write_text("arm_wrestling_demo.mp4 0\nflipping_a_pancake.mkv 0\n")
    return str(path)


def _run(name, anno, out):
    parser, build, flags, update_freq = SCRIPTS[name]
    args = parser().parse_args(flags + SHAPE + ["--update_freq", str(update_freq), "--data_path",
                                                anno, "--data_root", VIDEOS, "--output_dir", out])
    rmp.main(args, build=build)
    return args


def _log(out):
    with open(os.path.join(out, "log.json")) as f:
        return {r["epoch"]: r for r in map(json.loads, f)}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_num_sample_2_one_decode_two_crops_and_masks_resume_exact(name, anno, tmp_path,
                                                                  monkeypatch, capsys,
                                                                  two_block_tiny):
    decodes, crops, steps = [], [], []
    load, transform, forward = (CorruptedVideoGuard.load, PretrainTransform.__call__,
                                engine.forward_losses)

    def spy_load(self, *a, **k):
        decodes.append(load(self, *a, **k))
        return decodes[-1]

    def spy_transform(self, frames, rng):
        crops.append((frames, transform(self, frames, rng)))
        return crops[-1][1]

    def spy_forward(student, teacher, videos, mask, **k):
        steps.append((videos.clone(), mask.clone()))
        return forward(student, teacher, videos, mask, **k)

    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    with monkeypatch.context() as m:
        m.setattr(CorruptedVideoGuard, "load", spy_load)
        m.setattr(PretrainTransform, "__call__", spy_transform)
        m.setattr(engine, "forward_losses", spy_forward)
        args = _run(name, anno, straight)
    update_freq = SCRIPTS[name][3]
    text = capsys.readouterr().out
    assert (f"effective batch size {2 * update_freq} = 1 per process x 2 clips per video x 1 "
            f"processes x {update_freq} accumulation") in text
    assert args.total_batch_size == 2 * update_freq
    assert args.lr_scaled == pytest.approx(1e-3 * 2 * update_freq / 256)
    # 2 epochs x 2 videos: one decode each, two crops of the very same frames per decode
    assert len(decodes) == 4 and len(crops) == 8 and len(steps) == 4
    for i, frames in enumerate(decodes):
        (f0, c0), (f1, c1) = crops[2 * i], crops[2 * i + 1]
        assert f0 is frames and f1 is frames
        assert not torch.equal(c0, c1)  # another crop (and so other pixels)
        videos, mask = steps[i]  # batch of one video -> its two clips, in order, own masks
        assert videos.shape == (2, 3, 4, 64, 64) and mask.shape == (2, 32)
        assert torch.equal(videos[0], c0) and torch.equal(videos[1], c1)
        assert not torch.equal(mask[0], mask[1])
        assert mask.sum(1).tolist() == [16, 16]

    with killed_after_saving(0), pytest.raises(KeyboardInterrupt):
        _run(name, anno, resumed)
    _run(name, anno, resumed)  # auto-resumes at epoch 1
    assert "resumed from" in capsys.readouterr().out
    a, b = _log(straight), _log(resumed)
    assert sorted(a) == [0, 1] and sorted(b) == [1]
    assert b[1]["train_loss"] == a[1]["train_loss"]
    sa, sb = (torch.load(os.path.join(d, "checkpoint-1.pth"), weights_only=True)["model"]
              for d in (straight, resumed))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_processes_num_sample_2(tmp_path):
    """torchrun, 2 processes: every clip of every rank's decodes trains, the corrupted video
    is skipped by both ranks together, and the effective batch counts clips."""
    from test_ddp import torchrun_pretraining
    anno = tmp_path / "train.csv"  # 4 items: 2 steps of 1 video per rank
    anno.write_text("arm_wrestling_demo.mp4 0\ncorrupted_h264.mp4 0\nflipping_a_pancake.mkv 0\n"
                    "short_clip_part0.mp4 0\n")
    out = tmp_path / "mmkd"
    res = torchrun_pretraining(anno, out, "--num_sample", "2")
    assert ("effective batch size 4 = 1 per process x 2 clips per video x 2 processes x 1 "
            "accumulation") in res.stdout
    (log,) = [json.loads(line) for line in open(out / "log.json")]
    # the step in which one rank met the corrupted video is skipped by both: 1 step of 2 x 2
    assert log["train_skipped_videos"] == 1 and log["train_clips"] == 4
