"""Two gloo processes against one: the first distillation step on real clips.

Every term but MM-relation is a mean over the clips of the batch, so the mean of the two
processes' values equals the one-process value on the same global batch, and DDP's averaged
gradients give the same update. MM-relation compares the selected tokens of the batch *on
each process* (as the reference does per GPU), so it equals the mean of the one-process
values on each half.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.scheduler import CosineLRScheduler

from conftest import ROOT, VIDEOS
from datasets import VideoMAEPretrainDataset
from engine_for_pretraining import train_one_epoch
from losses import LossWeights
from masking_generator import TubeMaskingGenerator
from model_factory import create_student, create_teacher

GEOM = dict(img_size=32, num_frames=4)
CLIPS = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv", "kinetics_clip_test.avi",
         "kinetics_clip_test.mp4"]


def build(seed=0):
    """A narrower student than the teacher: its projectors, the teacher-side Linear included,
    are applied in the loss, outside DDP's forward, and must still be averaged."""
    torch.manual_seed(seed)
    teacher = create_teacher("pretrain_videomae_small_patch16_224", **GEOM)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1,
                             teacher_dim=384, num_k=2, teacher_proj=True, **GEOM)
    return student, teacher


def one_step(student, teacher, batch, alpha):
    # plain SGD, lr 1: the update is the averaged gradient itself (Adam's first step is
    # ~sign(g) and would blow up float noise in near-zero gradients)
    opt = torch.optim.SGD(student.parameters(), lr=1.0)
    sched = CosineLRScheduler(opt, t_initial=10, t_in_epochs=False)
    weights = LossWeights.from_args("hybrid", 0.2, alpha, 1.0, 3.0, 1.0, 1.0)
    stats = train_one_epoch(student, teacher, [batch], opt, "cpu", 0, weights=weights,
                            lr_scheduler=sched, wd_schedule=lambda u: 0.0, steps_per_epoch=1,
                            num_k=2, num_f=4, mean=(0.485, 0.456, 0.406),
                            std=(0.229, 0.224, 0.225))
    return stats


def worker(rank, port, batch, alpha, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    student, teacher = build()
    ddp = torch.nn.parallel.DistributedDataParallel(student)
    half = {k: v[rank * 2:(rank + 1) * 2] for k, v in batch.items()}
    stats = one_step(ddp, teacher, half, alpha)
    if rank == 0:
        torch.save({"stats": stats, "params": student.state_dict()}, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    anno = os.path.join(os.environ.get("PYTEST_TMP", "/tmp"), f"ddp_anno_{os.getpid()}.csv")
    with open(anno, "w") as f:
        f.writelines(f"{c} 0\n" for c in CLIPS)
    gen = TubeMaskingGenerator((2, 2, 2), 0.5, seed=0)
    ds = VideoMAEPretrainDataset(anno, VIDEOS, 4, 2, 32, gen)
    items = [ds[i] for i in range(len(CLIPS))]
    os.remove(anno)
    return {"video": torch.stack([it["video"] for it in items]),
            "bool_masked_pos": torch.stack([it["bool_masked_pos"] for it in items])}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_two_processes_match_one_on_the_same_global_batch(batch, alpha, tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(worker, args=(free_port(), batch, alpha, out), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    student, teacher = build()
    one = one_step(student, teacher, batch, alpha)
    for term in ("hint", "global", "local", "pixel"):
        assert two["stats"][term] == pytest.approx(one[term], rel=1e-5, abs=1e-7), term
    assert two["stats"]["clips"] == one["clips"] == 4
    if alpha == 0.0:  # every term decomposes over clips: the same update as one process
        for k, v in student.state_dict().items():
            torch.testing.assert_close(two["params"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    else:  # relation: per-process batch, so the mean of the one-process values on each half
        halves = []
        for r in range(2):
            s, t = build()
            halves.append(one_step(s, t, {k: v[r * 2:(r + 1) * 2] for k, v in batch.items()},
                                   alpha)["relation"])
        assert two["stats"]["relation"] == pytest.approx(sum(halves) / 2, rel=1e-5)
        assert two["stats"]["relation"] != pytest.approx(one["relation"], rel=1e-3)


def torchrun_pretraining(anno, out, *extra):
    """``run_mmkd_pretraining.py`` under torchrun with 2 CPU processes (gloo) on ``anno``, a
    tiny ViT-Ti pair, one epoch into ``out``; returns the finished process (rc 0 asserted)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), os.path.join(ROOT, "run_mmkd_pretraining.py"),
           "--data_path", str(anno), "--data_root", VIDEOS, "--model",
           "pretrain_videomae_tiny_patch16_224", "--model_t", "pretrain_videomae_tiny_patch16_224",
           "--input_size", "32", "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "1",
           "--mask_ratio", "0.5", "--num_k", "1", "--num_f", "2", "--epochs", "1",
           "--device", "cpu", "--num_workers", "0", "--output_dir", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_torchrun_two_process_pretraining_script(tmp_path):
    anno = tmp_path / "train.csv"
    # 6 items: no DistributedSampler padding, so each item is seen exactly once
    anno.write_text("".join(f"{c} 0\n" for c in CLIPS + ["corrupted_h264.mp4", "short_clip_part0.mp4"]))
    out = tmp_path / "kd"
    res = torchrun_pretraining(anno, out)
    assert "effective batch size 2 = 1 per process x 2 processes x 1 accumulation" in res.stdout
    log = [json.loads(line) for line in open(out / "log.json")]
    assert len(log) == 1  # rank 0 alone writes
    # 3 steps of 1 clip per rank; the step in which one rank met the corrupted clip is skipped
    # by both ranks together (no hang), so 4 of the 5 good clips train
    assert log[0]["train_skipped_videos"] == 1 and log[0]["train_clips"] == 4
    assert os.path.exists(out / "checkpoint-0.pth")
