"""Position tables as a model setting: MVD's 3-D sin-cos table against an independent loop
implementation of METHOD.md's description, MVD fine-tuned weights against a plain
re-implementation of MVD's classifier forward, recognition of stored tables, our files
reloading with their table, and the Hugging Face export refusing a 3-D model."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

import extract_features
import run_class_finetuning as rcf
from checkpoint import save_checkpoint
from hf_interop import to_hf
from model_factory import create_classifier, create_student, create_teacher
from pos_embed import sincos_3d_table, sinusoid_table
from test_mvd import _block, _block_state, _ln
from tools import convert_checkpoint
from weights import adopt_position_table, load_pretrained, load_teacher

pytestmark = pytest.mark.usefixtures("two_block_tiny")  # the blocks are the same 2 or 12 times
GEOM = dict(img_size=32, num_frames=4)  # token grid (2, 2, 2)
DIM, DEPTH, HEADS, CLASSES = 192, 2, 3, 5  # ViT-Ti, two blocks


def loop_3d_table(t, h, w, dim):
    """METHOD.md, "MVD exactly", entry by entry: ``dim/4`` channels for the temporal index,
    then ``3 dim/4`` for MAE's 2-D table (its first half for w, its second for h); each 1-D
    part of ``n`` channels is ``sin(p * w_k)`` for ``k < n/2`` then ``cos(p * w_k)``, with
    ``w_k = 1 / 10000 ** (k / (n/2))``; tokens flattened ``(t, h, w)``."""
    def one_d(p, n):
        freqs = [1.0 / 10000 ** (k / (n / 2)) for k in range(n // 2)]
        return [math.sin(p * f) for f in freqs] + [math.cos(p * f) for f in freqs]

    rows = []
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                rows.append(one_d(ti, dim // 4) + one_d(wi, 3 * dim // 8) + one_d(hi, 3 * dim // 8))
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(0)


def test_3d_table_equals_the_loop_implementation():
    for grid, dim in (((2, 3, 4), 48), ((8, 14, 14), 768)):
        table = sincos_3d_table(grid, dim)
        assert table.shape == (1, grid[0] * grid[1] * grid[2], dim)
        torch.testing.assert_close(table, loop_3d_table(*grid, dim), atol=1e-6, rtol=0)
    assert not torch.allclose(sincos_3d_table((2, 3, 4), 48), sinusoid_table(24, 48), atol=0.1)
    with pytest.raises(ValueError, match="divisible by 16, got 40"):
        sincos_3d_table((2, 2, 2), 40)


def mvd_finetuned_state(seed=0):
    """Random weights under the keys of MVD's fine-tuned ``VisionTransformer`` (mean pooling:
    no final norm, no position table; ``fc_norm``, ``head``)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, std=0.02: torch.randn(*s, generator=g) * std  # noqa: E731
    state = {"patch_embed.proj.weight": rnd(DIM, 3, 2, 16, 16), "patch_embed.proj.bias": rnd(DIM)}
    for i in range(DEPTH):  # MVD's blocks, as in its pre-training student
        state.update(_block_state(f"blocks.{i}.", DIM, rnd))
    state.update({"fc_norm.weight": 1 + rnd(DIM, std=0.1), "fc_norm.bias": rnd(DIM),
                  "head.weight": rnd(CLASSES, DIM, std=0.5), "head.bias": rnd(CLASSES)})
    return state


def mvd_forward(sd, x, table):
    """MVD's fine-tuned classifier written out: tubelet conv, + the 3-D table, pre-norm blocks
    (q/v biases, softmax attention, GELU MLP, LayerNorm eps 1e-6: tests/test_mvd.py's
    ``_block``), mean pool, fc_norm, head."""
    z = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 16, 16))
    z = z.flatten(2).transpose(1, 2) + table  # [B, N, D]
    for i in range(DEPTH):
        z = _block(sd, f"blocks.{i}.", z, HEADS)
    return F.linear(_ln(sd, "fc_norm", z.mean(dim=1)), sd["head.weight"], sd["head.bias"])


@pytest.fixture(scope="module")
def mvd_finetuned(tmp_path_factory):
    """An MVD fine-tuned file as MVD's ``save_model`` writes it (its ``args`` say nothing
    about the table) and the expected logits of a clip."""
    sd = mvd_finetuned_state()
    path = str(tmp_path_factory.mktemp("mvd") / "mvd_vit_tiny_finetuned.pth")
    args = argparse.Namespace(model="vit_tiny_patch16_224", nb_classes=CLASSES)
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 29,
                "scaler": {"scale": 1024.0}, "args": args}, path)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = mvd_forward(sd, x, loop_3d_table(2, 2, 2, DIM))
    return path, x, want


def _finetune_model(path, *flags):
    args = rcf.get_args_parser().parse_args(
        ["--data_path", "unused", "--model", "vit_tiny_patch16_224", "--nb_classes", str(CLASSES),
         "--input_size", "32", "--num_frames", "4", "--finetune", path, *flags])
    return rcf.build_model(args).eval(), args


def test_mvd_finetuned_logits_with_the_flag(mvd_finetuned, capsys):
    path, x, want = mvd_finetuned
    model, args = _finetune_model(path, "--pos_embed", "sincos_3d")
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert "MVD 3-D sin-cos table (--pos_embed sincos_3d)" in capsys.readouterr().out
    rcf.resolve_args(args, model)
    assert args.pos_embed == "sincos_3d"  # what our checkpoints then record
    enc = extract_features.build_feature_encoder(path, "vit_tiny_patch16_224", 32, 4, "sincos_3d")
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[1], model.forward_head(model.forward_features(x).tokens,
                                                                 pre_logits=True))
    default, _ = _finetune_model(path)  # without the flag: VideoMAE's table, other logits
    with torch.no_grad():
        assert (default(x) - want).abs().max() > 0.1


def _mvd_pretraining_state(table):
    """Keys of an MVD pre-training checkpoint (no ``encoder.`` prefix; feature decoders) with
    ``table`` stored as ``pos_embed``."""
    enc = create_classifier("vit_tiny_patch16_224", num_classes=0, **GEOM).state_dict()
    return {**{k: v for k, v in enc.items() if not k.startswith(("fc_norm", "head"))},
            "pos_embed": table, "norm.weight": torch.ones(DIM), "norm.bias": torch.zeros(DIM),
            "mask_token_img": torch.zeros(1, 1, DIM), "down_img.weight": torch.zeros(DIM, DIM),
            "down_img.bias": torch.zeros(DIM), "pos_embed_img": sincos_3d_table((2, 2, 2), DIM)}


@pytest.mark.parametrize("stored, grid, kind, name", [
    ("3d", (2, 2, 2), "sincos_3d", "MVD 3-D sin-cos table"),
    ("3d_bf16", (2, 2, 2), "sincos_3d", "MVD 3-D sin-cos table"),
    ("3d", (4, 2, 2), "sincos_3d", "MVD 3-D sin-cos table"),  # 8 frames: rebuilt for 4
    ("1d", (2, 2, 2), "sincos_1d", "VideoMAE 1-D sinusoid table"),
    ("random", (2, 2, 2), "learned", "learned position table"),
])
def test_stored_tables_are_recognised_and_used(stored, grid, kind, name, capsys):
    n = grid[0] * grid[1] * grid[2]
    table = {"3d": sincos_3d_table(grid, DIM), "3d_bf16": sincos_3d_table(grid, DIM).bfloat16(),
             "1d": sinusoid_table(n, DIM), "random": torch.randn(1, n, DIM)}[stored]
    ckpt = {"model": _mvd_pretraining_state(table)}
    start = "sincos_1d" if kind == "sincos_3d" else "sincos_3d"  # the flag says otherwise
    teacher = create_teacher("pretrain_videomae_tiny_patch16_224", pos_embed=start, **GEOM)
    clf = create_classifier("vit_tiny_patch16_224", num_classes=3, pos_embed=start, **GEOM)
    for encoder in (teacher.encoder, clf):  # --path_t, --finetune
        load_pretrained(encoder, ckpt, "mvd_pretrain.pth")
        assert encoder.pos_embed_type == kind and name in capsys.readouterr().out
        if kind == "sincos_3d":
            torch.testing.assert_close(encoder.pos_embed, sincos_3d_table((2, 2, 2), DIM))
        elif kind == "learned":
            torch.testing.assert_close(encoder.pos_embed, table)


def test_our_files_reload_with_their_table(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch16_224", num_classes=3, pos_embed="sincos_3d", **GEOM)
    path = str(tmp_path / "ours.pth")
    save_checkpoint(path, {"model": model.state_dict(), "args": {"pos_embed": "sincos_3d"}})
    assert "pos_embed" not in model.state_dict()  # a fixed table is rebuilt, not stored
    again = create_classifier("vit_tiny_patch16_224", num_classes=3, **GEOM)  # default 1-D
    load_pretrained(again, path, path)
    assert again.pos_embed_type == "sincos_3d"
    assert f"recorded in the arguments of {path}, instead of --pos_embed sincos_1d" in \
        capsys.readouterr().out
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model.eval()(x))
    teacher = create_teacher("pretrain_videomae_tiny_patch16_224", **GEOM)
    load_teacher(teacher, path)  # --path_t: the same
    assert teacher.pos_embed_type == "sincos_3d"
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, **GEOM)
    resumed = {"model": student.state_dict(), "args": {"pos_embed": "sincos_3d"}}
    assert adopt_position_table(student, resumed, "resume.pth") == "sincos_3d"  # --resume
    torch.testing.assert_close(student.decoder_pos_embed, sincos_3d_table((2, 2, 2), 96))


def test_one_setting_for_every_model():
    kw = dict(pos_embed="sincos_3d", **GEOM)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, **kw)
    teacher = create_teacher("pretrain_videomae_tiny_patch16_224", **kw)
    clf = create_classifier("vit_tiny_patch16_224", num_classes=2, **kw)
    for enc in (student.encoder, teacher.encoder, clf):
        torch.testing.assert_close(enc.pos_embed, sincos_3d_table((2, 2, 2), DIM))
    torch.testing.assert_close(student.decoder_pos_embed, sincos_3d_table((2, 2, 2), 96))
    with pytest.raises(ValueError, match="--pos_embed 'sincos_2d' is not a known position table"):
        create_classifier("vit_tiny_patch16_224", pos_embed="sincos_2d", **GEOM)


def test_every_script_takes_the_flag():
    import run_mmkd_pretraining as rmp
    import run_vis
    parsers = {"run_mmkd_pretraining": (rmp.get_args_parser(), ["--data_path", "a"]),
               "run_mae_pretraining": (rmp.get_args_parser(teacher=False), ["--data_path", "a"]),
               "run_class_finetuning": (rcf.get_args_parser(), ["--data_path", "a"]),
               "run_vis": (run_vis.get_args_parser(), ["v.mp4", "out"]),
               "extract_features": (extract_features.get_args_parser(),
                                    ["--checkpoint", "c", "--videos", "v", "--output", "o"])}
    for name, (parser, base) in parsers.items():
        assert parser.parse_args(base).pos_embed == "sincos_1d", name
        assert parser.parse_args([*base, "--pos_embed", "sincos_3d"]).pos_embed == "sincos_3d"
    args = convert_checkpoint.get_args_parser().parse_args(
        ["to-hf", "--checkpoint", "c", "--model", "vit_tiny_patch16_224", "--output_dir", "o",
         "--pos_embed", "sincos_3d"])
    assert args.pos_embed == "sincos_3d"


def test_hf_export_of_a_3d_model_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError) as e:
        to_hf(create_classifier("vit_tiny_patch16_224", num_classes=2, pos_embed="sincos_3d",
                                **GEOM))
    assert "--pos_embed sincos_3d" in str(e.value) and "\n" not in str(e.value)
    path = str(tmp_path / "mvd_pretrain.pth")  # the converter: the table comes from the file
    torch.save({"model": _mvd_pretraining_state(sincos_3d_table((2, 2, 2), DIM))}, path)
    with pytest.raises(ValueError, match="MVD 3-D sin-cos position table"):
        convert_checkpoint.main(["to-hf", "--checkpoint", path, "--model", "vit_tiny_patch16_224",
                                 "--nb_classes", "3", "--num_frames", "4", "--input_size", "32",
                                 "--output_dir", str(tmp_path / "hf")])
