"""Fine-tuning: multi-view aggregation, layer decay, loading pre-trained checkpoints, Mixup on
clips, the demo splits, the (distributed) multi-view test and an end-to-end run on real clips."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler

import run_class_finetuning as rcf
from checkpoint import save_checkpoint
from conftest import ROOT, VIDEOS
from engine_for_finetuning import (NonFiniteLossError, average_views, flatten_repeated,
                                   mix_clips, multiview_metrics, topk_correct, train_one_epoch)
from model_factory import create_classifier, create_student
from pos_embed import resize_pos_embed
from pos_embed import sinusoid_table
from tools.make_demo_splits import decode_resized, make_demo_splits, segment_ranges
from weights import load_pretrained

TINY = dict(img_size=32, num_frames=4)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
DIST_CLIPS = ["arm_wrestling_demo.mp4", "ava_style_demo.mp4", "flipping_a_pancake.mkv",
              "kinetics_clip_test.avi", "short_clip_part0.mp4"]  # 5 videos: odd on 2 processes


# --------------------------------------------------------------------------------------------
# multi-view aggregation on hand-made scores
# --------------------------------------------------------------------------------------------

def test_average_views_by_hand_with_duplicates_and_three_classes():
    rows = [  # (video, view, probs); labels: v0 -> 0, v1 -> 1, v2 -> 1, v3 -> 2
        (0, 0, [0.6, 0.3, 0.1]), (0, 1, [0.4, 0.5, 0.1]),
        (1, 0, [0.1, 0.3, 0.6]), (1, 1, [0.1, 0.5, 0.4]), (1, 2, [0.1, 0.4, 0.5]),
        (1, 0, [0.0, 1.0, 0.0]),  # (1, 0) again, e.g. from a padding sampler: must be ignored
        (2, 0, [0.2, 0.7, 0.1]),
        (3, 0, [0.2, 0.3, 0.5])]
    perm = [2, 7, 0, 3, 6, 1, 4, 5]  # shuffled; the duplicate after its first occurrence
    video = torch.tensor([rows[p][0] for p in perm])
    view = torch.tensor([rows[p][1] for p in perm])
    probs = torch.tensor([rows[p][2] for p in perm])
    videos, mean, num_views = average_views(video, view, probs)
    assert videos.tolist() == [0, 1, 2, 3] and num_views.tolist() == [2, 3, 1, 1]
    expected = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.4, 0.5], [0.2, 0.7, 0.1], [0.2, 0.3, 0.5]],
                            dtype=torch.float64)
    torch.testing.assert_close(mean, expected)
    m = multiview_metrics(mean, torch.tensor([0, 1, 1, 2]))
    # v1 is wrong (0.5 for class 2); per class: 1/1, 1/2, 1/1 -> 83.33
    assert m["top1"] == pytest.approx(75.0) and m["mean_class_acc"] == pytest.approx(250 / 3)
    assert m["topk_used"] == 3 and m["top5"] == 100.0 and m["num_videos"] == 4


def test_top5_misses_a_sixth_ranked_label():
    mean = torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.10, 0.00],
                         [0.30, 0.25, 0.20, 0.15, 0.10, 0.00]], dtype=torch.float64)
    m = multiview_metrics(mean, torch.tensor([5, 4]))
    assert (m["top1"], m["top5"], m["topk_used"]) == (0.0, 50.0, 5)
    assert m["mean_class_acc"] == 0.0
    assert topk_correct(torch.tensor([[0.2, 0.8]]), torch.tensor([0]), 5).tolist() == [True]
    assert topk_correct(torch.tensor([[0.2, 0.8]]), torch.tensor([0]), 1).tolist() == [False]


def test_shard_sampler_covers_every_item_once():
    shards = [list(rcf.ShardSampler(15, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(15)) and len(shards[0]) == 8


# --------------------------------------------------------------------------------------------
# training pieces
# --------------------------------------------------------------------------------------------

def test_layer_decay_groups_and_scaled_lr(tmp_path):
    args = rcf.get_args_parser().parse_args(
        ["--data_path", str(tmp_path), "--model", "vit_tiny_patch16_224", "--batch_size", "32",
         "--update_freq", "2", "--layer_decay", "0.75", "--lr", "1e-3", "--warmup_lr", "0"])
    args.nb_classes, args.distributed, args.eval = 5, False, False
    model = create_classifier(args.model, num_classes=5, **TINY)
    rcf.resolve_args(args, model)
    assert args.lr_scaled == pytest.approx(1e-3 * 64 / 256)
    optimizer, scheduler, mixup_fn, criterion, _ = rcf.build_training(args, model, 10)
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    depth = model.get_num_layers()
    for name, p in names.items():
        layer = (0 if name.startswith("patch_embed") else int(name.split(".")[1]) + 1
                 if name.startswith("blocks.") else depth + 1)
        assert scale_of[id(p)] == pytest.approx(0.75 ** (depth + 1 - layer)), name
    assert len(optimizer.param_groups) == 2 * (depth + 2)  # decay / no decay per layer
    assert len({round(g["lr_scale"], 8) for g in optimizer.param_groups}) == depth + 2
    scheduler.step_update(20)  # 20 of the 5 x 10 warm-up updates, from --warmup_lr 0
    top = max(optimizer.param_groups, key=lambda g: g["lr_scale"])
    assert top["lr"] == pytest.approx(args.lr_scaled * 20 / 50)
    assert isinstance(mixup_fn, Mixup) and type(criterion).__name__ == "SoftTargetCrossEntropy"


def test_repeated_augmentation_and_spatial_cutmix():
    videos = torch.arange(2 * 2 * 3).float().view(2, 2, 3, 1, 1, 1).expand(2, 2, 3, 4, 8, 8)
    flat, labels = flatten_repeated(videos.contiguous(), torch.tensor([7, 9]))
    assert flat.shape == (4, 3, 4, 8, 8) and labels.tolist() == [7, 7, 9, 9]
    assert torch.equal(flat[1], videos[0, 1]) and torch.equal(flat[2], videos[1, 0])
    torch.manual_seed(0)
    np.random.seed(0)
    cutmix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=2)
    clips = torch.cat([torch.zeros(1, 3, 4, 8, 8), torch.ones(1, 3, 4, 8, 8)])
    mixed, targets = mix_clips(cutmix, clips, torch.tensor([0, 1]))
    box = mixed[0, 0]  # [T, H, W]: ones where clip 1 was pasted
    assert all(torch.equal(box[t], box[0]) for t in range(4))  # the same box in every frame
    area = box[0].mean().item()
    assert 0 < area < 1 and targets[0, 1].item() == pytest.approx(area)


def test_non_finite_loss_raises():
    class NaNModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.w * x.mean(dim=(1, 2, 3, 4))[:, None].expand(-1, 3) * float("nan")

    model = NaNModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = CosineLRScheduler(opt, t_initial=2, t_in_epochs=False)
    batch = {"video": torch.rand(2, 3, 4, 8, 8), "label": torch.tensor([0, 1]), "num_skipped": 0}
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 3, step 0"):
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), [batch], opt, "cpu", 3,
                        lr_scheduler=sched, steps_per_epoch=1)
    assert model.w.item() == 1.0  # no step taken


# --------------------------------------------------------------------------------------------
# pre-trained checkpoints
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1,
                             teacher_dim=384, **TINY)
    path = str(tmp_path_factory.mktemp("pt") / "student.pth")
    save_checkpoint(path, {"model": student.state_dict()})
    return path, student


@pytest.mark.parametrize("geometry", [TINY, dict(img_size=48, num_frames=8)])
def test_student_checkpoint_loads_into_classifier(student_ckpt, geometry):
    path, student = student_ckpt
    model = create_classifier("vit_tiny_patch16_224", num_classes=3, **geometry)
    missing, unexpected = load_pretrained(model, path, path)
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "norm.bias", "mask_token"} <= set(unexpected)
    assert all(k.startswith(("norm.", "decoder.", "projector.", "encoder_to_decoder.",
                             "mask_token")) for k in unexpected)
    enc = student.encoder.state_dict()
    own = model.state_dict()
    shared = [k for k in own if k not in missing]
    assert len(shared) == len(enc) - 2
    for k in shared:
        assert torch.equal(own[k], enc[k]), k
    torch.testing.assert_close(model.pos_embed,  # rebuilt for this geometry, not loaded
                               sinusoid_table(model.patch_embed.num_patches, 192))


def test_shape_mismatch_is_an_error_and_position_tables_follow_the_grid(student_ckpt, tmp_path):
    path, student = student_ckpt
    state = student.state_dict()
    state["encoder.blocks.3.mlp.fc1.weight"] = state["encoder.blocks.3.mlp.fc1.weight"][:10]
    bad = str(tmp_path / "bad.pth")
    save_checkpoint(bad, {"model": state})
    model = create_classifier("vit_tiny_patch16_224", num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"wrong shape \(1\): blocks\.3\.mlp\.fc1\.weight"):
        load_pretrained(model, bad, bad)
    with pytest.raises(ValueError, match="wrong shape .*patch_embed.proj.weight"):
        load_pretrained(create_classifier("vit_small_patch16_224", num_classes=3, **TINY), path,
                        path)
    fixed = dict(student.state_dict(), **{"encoder.pos_embed": sinusoid_table(16, 192)})
    save_checkpoint(str(tmp_path / "fixed.pth"), {"model": fixed})
    load_pretrained(model, str(tmp_path / "fixed.pth"), "fixed")  # fixed table, other size
    torch.testing.assert_close(model.pos_embed, sinusoid_table(8, 192))  # rebuilt, grid 2x2x2
    learned = torch.randn(1, 16, 192)  # a learned table of grid (4, 2, 2) -> resized to (2, 2, 2)
    save_checkpoint(str(tmp_path / "learned.pth"),
                    {"model": dict(fixed, **{"encoder.pos_embed": learned})})
    load_pretrained(model, str(tmp_path / "learned.pth"), "learned")
    torch.testing.assert_close(model.pos_embed, resize_pos_embed(learned, (4, 2, 2), (2, 2, 2)))


# --------------------------------------------------------------------------------------------
# bad input through main(): one clear error before training
# --------------------------------------------------------------------------------------------

def _anno_dir(root, clips, labels):
    root.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{c} {y}\n" for c, y in zip(clips, labels))
    for name in ("train.csv", "val.csv", "test.csv"):
        (root / name).write_text(lines)
    return str(root)


def _main_error(argv):
    with pytest.raises(SystemExit) as e:
        rcf.main(rcf.get_args_parser().parse_args(argv))
    return str(e.value.code)


def test_bad_input_errors(tmp_path, capsys, student_ckpt):
    base = ["--data_set", "UCF101", "--data_root", VIDEOS, "--device", "cpu", "--model",
            "vit_tiny_patch16_224", "--input_size", "32", "--short_side_size", "32",
            "--num_frames", "4", "--num_workers", "0", "--no-auto_resume"]
    data = _anno_dir(tmp_path / "a", DIST_CLIPS[:2], [0, 9])
    msg = _main_error(["--data_path", data, "--nb_classes", "5", *base])
    assert msg.startswith("error: ") and "line 2: label 9 outside [0, 5)" in msg
    assert "\n" not in msg
    ok = _anno_dir(tmp_path / "b", DIST_CLIPS[:2], [0, 1])
    msg = _main_error(["--data_path", ok, "--nb_classes", "5", "--finetune", "nope.pth", *base])
    assert msg.startswith("error: ") and "'nope.pth' does not exist" in msg
    small = [("vit_small_patch16_224" if a == "vit_tiny_patch16_224" else a) for a in base]
    msg = _main_error(["--data_path", ok, "--nb_classes", "5", "--finetune", student_ckpt[0],
                       *small])
    assert msg.startswith("error: checkpoint") and "wrong shape" in msg
    assert "blocks.0.attn.qkv.weight: checkpoint (576, 192) vs model (1152, 384)" in msg
    for flag, value in (("--data_set", "Kinetics-700"), ("--test_num_crop", "2")):
        with pytest.raises(SystemExit) as e:
            rcf.get_args_parser().parse_args(["--data_path", ok, flag, value])
        assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# demo splits, the (distributed) multi-view test and an end-to-end run on real clips
# --------------------------------------------------------------------------------------------

def test_segment_ranges_split_60_40():
    train, test = segment_ranges(100)
    assert train == [(0, 30), (10, 40), (20, 50), (30, 60)] and test == [(60, 80), (80, 100)]
    with pytest.raises(ValueError, match="too few"):
        segment_ranges(4)


@pytest.fixture(scope="module")
def demo_splits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    clips = [os.path.join(VIDEOS, c) for c in
             ("arm_wrestling_demo.mp4", "corrupted_h264.mp4", "kinetics_clip_test.avi",
              "short_clip_part0.mp4")]
    with pytest.warns(RuntimeWarning, match="corrupted_h264"):
        manifest = make_demo_splits(clips, out, short_side=64)
    return out, manifest


def test_demo_splits_cut_train_and_test_frames_apart(demo_splits):
    out, manifest = demo_splits
    assert [line.split()[0] for line in open(os.path.join(out, "classes.csv"))] == ["0", "1", "2"]
    assert open(os.path.join(out, "val.csv")).read() == open(os.path.join(out, "test.csv")).read()
    train_lines = open(os.path.join(out, "train.csv")).read().splitlines()
    assert len(train_lines) == 12 and sum(m["split"] == "test" for m in manifest) == 6
    source, _ = decode_resized(os.path.join(VIDEOS, "arm_wrestling_demo.mp4"), 64)  # 280 frames
    for m in manifest:
        split = int(0.6 * {0: 280, 1: 164, 2: 32}[m["label"]])
        assert (m["end"] <= split) if m["split"] == "train" else (m["start"] >= split)
        frames, _ = decode_resized(os.path.join(out, m["path"]), 64)
        assert len(frames) == m["end"] - m["start"] and min(frames.shape[1:3]) == 64
        if m["label"] == 0 and m["split"] == "test":  # the pixels of the right source frames
            err = np.abs(frames[0].astype(float) - source[m["start"]]).mean()
            assert err < 8 and err < np.abs(frames[0].astype(float) - source[0]).mean()


def _run(argv, nproc=1):
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    res = subprocess.run(launcher + [os.path.join(ROOT, "run_class_finetuning.py"), *argv],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _read_predictions(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return list(csv.DictReader(f))


def test_distributed_multiview_test_equals_one_process(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch16_224", num_classes=7, **TINY)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # scores that differ between videos
    ckpt = str(tmp_path / "ft.pth")
    save_checkpoint(ckpt, {"model": model.state_dict()})
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS, [0, 1, 2, 3, 4])
    common = ["--eval", "--finetune", ckpt, "--data_set", "UCF101", "--nb_classes", "7",
              "--data_path", data, "--data_root", VIDEOS, "--model", "vit_tiny_patch16_224",
              "--input_size", "32", "--short_side_size", "40", "--num_frames", "4",
              "--sampling_rate", "4", "--test_num_segment", "3", "--test_num_crop", "1",
              "--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--no-auto_resume"]
    results = {}
    for nproc in (1, 2):
        out = str(tmp_path / f"out{nproc}")
        _run([*common, "--output_dir", out], nproc)
        results[nproc] = (json.load(open(os.path.join(out, "test_summary.json"))),
                          _read_predictions(out))
    (s1, p1), (s2, p2) = results[1], results[2]
    assert s1["num_videos"] == s2["num_videos"] == 5 and s1["num_views"] == s2["num_views"] == 15
    for key in ("top1", "top5", "mean_class_acc"):
        assert s1[key] == s2[key]
    assert sorted(r["video_id"] for r in p2) == sorted(DIST_CLIPS)
    assert {r["video_id"]: r["pred_1"] for r in p1} == {r["video_id"]: r["pred_1"] for r in p2}
    assert all(r["num_views"] == "3" for r in p2)
    by_id = lambda rows: sorted(rows, key=lambda r: r["video_id"])  # noqa: E731
    for a, b in zip(by_id(p1), by_id(p2)):
        assert float(a["score_1"]) == pytest.approx(float(b["score_1"]), abs=1e-5)


def test_bf16_multiview_test_close_to_float32(tmp_path):
    """``--amp bf16`` on a CPU: the multi-view test under bf16 autocast gives the float32
    predictions, scores within bf16 precision."""
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch16_224", num_classes=7, **TINY)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # unsaturated scores
    ckpt = str(tmp_path / "ft.pth")
    save_checkpoint(ckpt, {"model": model.state_dict()})
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS[:3], [0, 1, 2])
    preds = {}
    for amp in ("none", "bf16"):
        out = str(tmp_path / amp)
        rcf.main(rcf.get_args_parser().parse_args([
            "--eval", "--finetune", ckpt, "--data_set", "UCF101", "--nb_classes", "7",
            "--data_path", data, "--data_root", VIDEOS, "--model", "vit_tiny_patch16_224",
            "--input_size", "32", "--short_side_size", "40", "--num_frames", "4",
            "--sampling_rate", "4", "--test_num_segment", "2", "--test_num_crop", "1",
            "--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--no-auto_resume",
            "--amp", amp, "--output_dir", out]))
        preds[amp] = {r["video_id"]: r for r in _read_predictions(out)}
    assert preds["none"].keys() == preds["bf16"].keys() and len(preds["none"]) == 3
    for vid, ref in preds["none"].items():
        low = preds["bf16"][vid]
        assert low["pred_1"] == ref["pred_1"]
        assert float(low["score_1"]) == pytest.approx(float(ref["score_1"]), abs=1e-2)
    # and bf16 did run: each video's top-5 scores (6 decimals) differ from float32 somewhere
    scores = lambda r: [r[f"score_{j}"] for j in range(1, 6)]  # noqa: E731
    assert all(scores(preds["bf16"][v]) != scores(r) for v, r in preds["none"].items())


def test_end_to_end_finetune_on_demo_splits(demo_splits, tmp_path):
    data, _ = demo_splits
    out = str(tmp_path / "ft")
    argv = ["--model", "vit_tiny_patch16_224", "--data_set", "UCF101", "--nb_classes", "3",
                "--data_path", data, "--data_root", data, "--input_size", "32",
                "--short_side_size", "40", "--num_frames", "4", "--sampling_rate", "2",
                "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--num_sample", "2",
                "--test_num_segment", "2", "--test_num_crop", "3", "--num_workers", "0",
                "--device", "cpu", "--output_dir", out]
    res = _run([*argv, "--no-auto_resume"])
    assert "multi-view test (2x3 views) of 6 videos" in res.stdout
    ckpt = torch.load(os.path.join(out, "checkpoint-0.pth"), weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["model"]["head.weight"].shape == (3, 192)
    assert len(ckpt["rng_states"]) == 1  # Mixup's numpy stream and drop path's, for a resume
    assert ckpt["args"]["lr_scaled"] == pytest.approx(1e-3 * 4 / 256)
    assert ckpt["args"]["pos_embed"] == "sincos_1d"  # the table is recorded, for reloading
    summary = json.load(open(os.path.join(out, "test_summary.json")))
    assert summary["num_videos"] == 6 and summary["num_views"] == 36
    assert summary["topk_used"] == 3 and summary["top5"] == 100.0
    assert 0 <= summary["top1"] <= 100 and summary["views_per_video"] == 6
    preds = _read_predictions(out)
    assert len(preds) == 6 and {r["label"] for r in preds} == {"0", "1", "2"}
    assert all(sorted([r["pred_1"], r["pred_2"], r["pred_3"]]) == ["0", "1", "2"] for r in preds)
    log = [json.loads(line) for line in open(os.path.join(out, "log.json"))]
    assert len(log) == 1 and np.isfinite(log[0]["train_loss"]) and log[0]["val_num_videos"] == 6
    # --eval auto-resumes checkpoint-0.pth from --output_dir: the same test result again
    os.remove(os.path.join(out, "test_summary.json"))
    rcf.main(rcf.get_args_parser().parse_args([*argv, "--eval", "--auto_resume"]))
    assert json.load(open(os.path.join(out, "test_summary.json"))) == summary
