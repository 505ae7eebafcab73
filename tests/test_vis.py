"""run_vis.py on a real clip with tiny models, tools/plot_curves.py on synthetic logs."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import losses
import run_vis
import vis_figures
from conftest import VIDEOS
from masking_generator import build_masking_generator
from model_factory import create_student, create_teacher
from tools import plot_curves

CLIP = os.path.join(VIDEOS, "arm_wrestling_demo.mp4")
NUM_K = 3
# 64 px, 4 frames: a 2 x 4 x 4 token grid; tube mask 0.5 keeps 8 tokens per slice.
TINY = ["--model", "pretrain_videomae_tiny_patch16_224", "--model_t",
        "pretrain_videomae_tiny_patch16_224", "--input_size", "64", "--num_frames", "4",
        "--sampling_rate", "2", "--mask_ratio", "0.5", "--num_k", str(NUM_K), "--seed", "1"]
GRID = (2, 4, 4)


def vis(argv):
    return run_vis.main(run_vis.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A student checkpoint (with a projector and a 1-block pixel decoder, as MMKD with a
    decoder writes it) and a teacher checkpoint, of random weights."""
    d = tmp_path_factory.mktemp("ckpt")
    geometry = dict(img_size=64, num_frames=4)
    torch.manual_seed(123)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1,
                             teacher_dim=384, **geometry)
    teacher = create_teacher("pretrain_videomae_tiny_patch16_224", **geometry)
    torch.save({"model": student.state_dict(), "epoch": 0}, d / "student.pth")
    torch.save({"model": {f"encoder.{k}": v for k, v in teacher.encoder.state_dict().items()}},
               d / "teacher.pth")
    return str(d / "student.pth"), str(d / "teacher.pth"), teacher


@pytest.fixture(scope="module")
def run(ckpts, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vis"))
    # --idx 6 of slice 1 is visible under the seed-1 tube mask (hidden per slice: 0 2 4 5 8 11
    # 12 15), so the run keeps the asked token; the hidden case has its own test below.
    summary = vis(TINY + ["--idx", "6", "--idx_f", "1", "--path_t", ckpts[1], CLIP, out, ckpts[0]])
    return out, summary


def test_writes_every_file(run):
    out, summary = run
    assert set(summary["files"]) == set(run_vis.FILES)  # decoder depth 1 read from the checkpoint
    for name in run_vis.FILES:
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "vis.json")) as f:
        assert json.load(f)["query"] == summary["query"]


def test_images_have_their_sizes_and_are_not_blank(run):
    out, _ = run
    t = GRID[0]
    expected = {"attention_global.png": (2, t, 1.3), "attention_local.png": (2, t, 1.3),
                "mask.png": (1, t, 0.0), "reconstruction.png": (3, t, 0.45),
                "frames.png": (1, 4, 0.0)}
    for name, (rows, cols, extra_w) in expected.items():
        image = np.asarray(Image.open(os.path.join(out, name)).convert("RGB"), dtype=float)
        width = vis_figures.figure_size(rows, cols, extra_w)[0]
        assert image.shape[1] == round(width * vis_figures.DPI), name
        assert image.shape[0] >= rows * vis_figures.PANEL_IN * vis_figures.DPI, name
        assert image.var() > 100, name  # not blank
        assert (image.min(-1) < 200).mean() > 0.2, name  # mostly drawing, not white space
    gif = Image.open(os.path.join(out, "frames.gif"))
    assert gif.size == (64, 64) and gif.n_frames == 4
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=float))
    assert all(f.var() > 100 for f in frames)
    assert np.abs(frames[0] - frames[-1]).mean() > 1  # real motion between sampled frames


def test_query_is_visible_and_as_requested(run):
    _, summary = run
    q = summary["query"]
    hidden = set(summary["hidden_tokens"])
    assert q["token"] not in hidden
    assert not q["moved"]
    assert (q["slice"], q["idx"]) == (1, 6) and q["token"] == 1 * 16 + 6


def test_topk_boxes_equal_num_k_and_are_the_largest(run):
    _, summary = run
    hidden = set(summary["hidden_tokens"])
    visible = [n for n in range(int(np.prod(GRID))) if n not in hidden]
    for who in ("teacher", "student"):
        g = summary["attention"]["global"][who]
        assert g["boxes_drawn"] == NUM_K and len(set(g["kept_tokens"])) == NUM_K
        p = dict(zip(visible, g["probabilities"]))
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)
        assert min(p[k] for k in g["kept_tokens"]) >= max(
            v for k, v in p.items() if k not in g["kept_tokens"])
        loc = summary["attention"]["local"][who]
        assert loc["boxes_drawn"] == NUM_K * GRID[0]
        for s, kept in enumerate(loc["kept_tokens"]):
            assert len(set(kept)) == NUM_K and all(k // 16 == s and k not in hidden for k in kept)
            in_slice = {k: v for k, v in zip(visible, loc["probabilities"]) if k // 16 == s}
            assert sum(in_slice.values()) == pytest.approx(1.0, abs=1e-5)


def test_teacher_attention_matches_an_independent_computation(run, ckpts):
    """The drawn teacher row equals softmax(q k^T * scale) of the last block, recomputed here
    from the block's weights on the same clip and mask."""
    _, summary = run
    teacher = ckpts[2]
    x, _, _ = run_vis.load_clip(CLIP, 4, 2, 64)
    mask = build_masking_generator("tube", GRID, 0.5, seed=1)()
    assert np.flatnonzero(mask).tolist() == summary["hidden_tokens"]
    enc = teacher.encoder
    with torch.no_grad():
        tokens = (enc.patch_embed(x) + enc.pos_embed)[:, torch.from_numpy(~mask)]  # [1, N_vis, D]
        for blk in enc.blocks[:-1]:
            tokens = blk(tokens)
        attn, d = enc.blocks[-1].attn, enc.embed_dim
        y = enc.blocks[-1].norm1(tokens)
        q = F.linear(y, attn.qkv.weight[:d], attn.q_bias).view(1, -1, attn.num_heads, attn.head_dim)
        k = F.linear(y, attn.qkv.weight[d:2 * d]).view(1, -1, attn.num_heads, attn.head_dim)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scale
    row = int(np.searchsorted(np.flatnonzero(~mask), summary["query"]["token"]))
    expected = logits.softmax(-1).mean(1)[0, row]
    got = torch.tensor(summary["attention"]["global"]["teacher"]["probabilities"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_global_topk_is_the_support_of_the_loss_topk_softmax():
    """With identical heads, the boxed entries are exactly those MM-hidden keeps."""
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 12, 12).expand(1, 3, 12, 12)
    _, kept = run_vis.global_attention(logits[0], 4, 1.0, 5)
    support = losses._topk_softmax(logits, 5, 1.0)[0, 0, 4].nonzero().squeeze(1)
    assert sorted(kept.tolist()) == sorted(support.tolist())


def test_hidden_query_moves_to_the_nearest_visible_token():
    grid = (2, 3, 3)
    mask = np.zeros(18, dtype=bool)
    mask[[4, 13, 1, 10]] = True  # a tube mask hiding patches 1 and 4
    assert run_vis.resolve_query(mask, grid, 1, 0) == (9, False)
    token, moved = run_vis.resolve_query(mask, grid, 1, 4)  # the centre: hidden
    assert moved and token in (12, 14, 16) and not mask[token]  # a neighbour, same slice
    with pytest.raises(ValueError, match="--idx 9"):
        run_vis.resolve_query(mask, grid, 0, 9)
    with pytest.raises(ValueError, match="--idx_f -1"):
        run_vis.resolve_query(mask, grid, -1, 0)


def test_unnormalize_inverts_the_normalised_pixel_target():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 32, 32)
    mask = torch.from_numpy(build_masking_generator("tube", (2, 2, 2), 0.5, seed=0)())[None]
    args = (2, 16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    norm = losses.pixel_targets(x, mask, *args, normalize=True)[0]
    raw = losses.pixel_targets(x, mask, *args, normalize=False)[0]
    torch.testing.assert_close(run_vis.unnormalize_patches(norm, raw), raw, atol=1e-4, rtol=1e-4)


def test_reconstruction_keeps_the_visible_patches():
    torch.manual_seed(0)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, img_size=32,
                             num_frames=4).eval()
    x, shown, _ = run_vis.load_clip(CLIP, 4, 2, 32)
    mask = build_masking_generator("tube", (2, 2, 2), 0.5, seed=0)()
    frames, mse = run_vis.reconstruct(student, x, torch.from_numpy(mask)[None], True)
    assert frames.shape == shown.shape and np.isfinite(mse)
    visible = ~mask.reshape(2, 1, 2, 1, 2, 1).repeat(2, 1).repeat(16, 3).repeat(16, 5)
    visible = visible.reshape(4, 32, 32)  # per pixel of each frame
    np.testing.assert_allclose(frames[visible], shown[visible], atol=1e-5)
    assert np.abs(frames[~visible] - shown[~visible]).mean() > 1e-3  # hidden ones predicted


@pytest.mark.parametrize("extra, message", [
    (["--idx", "16"], "--idx 16 is outside [0, 15]"),
    (["--idx_f", "2"], "--idx_f 2 is outside [0, 1]"),
    (["--num_k", "9"], "--num_k 9 must be in [1, 8]"),
])
def test_bad_flags_fail_in_one_line(extra, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        vis(TINY + extra + [CLIP, str(tmp_path)])
    assert str(e.value.code).startswith("error: ") and message in str(e.value.code)
    assert "\n" not in str(e.value.code)


def test_checkpoint_of_the_wrong_size_names_the_keys(tmp_path, monkeypatch):
    with monkeypatch.context() as m:  # shapes are all this needs: skip the slow random init
        m.setattr("modeling_encoder.trunc_normal_", lambda tensor, **kwargs: tensor)
        small = create_student("pretrain_videomae_small_patch16_224", decoder_depth=0,
                               img_size=64, num_frames=4)
    path = tmp_path / "small.pth"
    torch.save({"model": small.state_dict()}, path)
    out = str(tmp_path / "o")
    for argv in ([CLIP, out, str(path)], ["--path_t", str(path), CLIP, out]):
        with pytest.raises(SystemExit) as e:
            vis(TINY + argv)
        msg = str(e.value.code)
        assert "does not fit --model" in msg and "wrong shape" in msg
        assert "patch_embed.proj.weight: checkpoint (384, 3, 2, 16, 16) vs model (192" in msg
        assert "\n" not in msg


@pytest.mark.parametrize("name, content, message", [
    ("garbage.mp4", b"not a video", "cannot decode video"),
    ("missing.mp4", None, "file not found"),
])
def test_unreadable_video_fails_in_one_line(name, content, message, tmp_path):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        vis(TINY + [str(path), str(tmp_path / "o")])
    assert message in str(e.value.code) and str(path) in str(e.value.code)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_plot_curves_one_plot_per_logged_key(tmp_path):
    log = tmp_path / "log.json"
    lines = []
    for epoch in range(4):
        r = {"epoch": epoch, "n_parameters": 1000, "train_loss": 2.0 / (epoch + 1),
             "train_hint": 0.5 / (epoch + 1), "train_global": 0.01 * (4 - epoch), "train_lr": 1e-3,
             "train_clips_per_s": 3.0 + epoch, "note": "text is not plotted", "flag": True}
        if epoch % 2:
            r.update(val_acc1=10.0 * epoch, val_loss=1.5)
        lines.append(json.dumps(r))
    lines.append(json.dumps({"epoch": 3, "train_loss": 0.4, "train_hint": 0.1}))  # resumed: wins
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "curves"
    files = plot_curves.main([str(log), str(out)])
    keys = ["n_parameters", "train_loss", "train_hint", "train_global", "train_lr",
            "train_clips_per_s", "val_acc1", "val_loss"]
    assert sorted(os.listdir(out)) == sorted([f"{k}.png" for k in keys] + ["loss_terms.png"])
    assert len(files) == len(keys) + 1
    for f in files:
        assert np.asarray(Image.open(f).convert("L"), dtype=float).var() > 10
    series = plot_curves.numeric_series(plot_curves.read_log(str(log)))
    assert series["train_loss"] == ([0, 1, 2, 3], [2.0, 1.0, 2.0 / 3, 0.4])
    assert series["val_acc1"] == ([1], [10.0])  # epoch 3's validation was replaced by the resume


def test_plot_curves_reads_tensorboard_steps(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    run_dir = tmp_path / "run"
    writer = SummaryWriter(log_dir=str(run_dir / "tb"))
    for step in range(30):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("train/lr", 1e-4 * step, step)
    writer.close()
    (run_dir / "log.json").write_text(json.dumps({"epoch": 0, "train_loss": 1.0}) + "\n")
    out = tmp_path / "curves"
    plot_curves.main([str(run_dir), str(out)])
    assert sorted(os.listdir(out / "steps")) == ["train_loss.png", "train_lr.png"]
    assert (out / "train_loss.png").exists()
    steps, values = plot_curves.read_tensorboard(str(run_dir))["train/loss"]
    assert steps == list(range(30)) and values[2] == pytest.approx(1 / 3)


def test_plot_curves_bad_log_names_the_line(tmp_path):
    log = tmp_path / "log.json"
    log.write_text('{"epoch": 0, "train_loss": 1.0}\n{broken\n')
    with pytest.raises(SystemExit) as e:
        plot_curves.main([str(log), str(tmp_path / "out")])
    assert "line 2" in str(e.value.code)
