"""MVD (METHOD.md, "MVD exactly"): the image teacher against timm's own forward of the same
weights, frame and token order on a hand-made clip, targets at the hidden positions against
loops, the feature losses against PyTorch's, an MVD-layout pre-training checkpoint loading
strictly (outputs against a plain re-implementation of MVD's forward, optimizer state
following its parameters), frozen teachers, and run_mvd_pretraining.py end to end on real
clips, alone and with MMKD's and the pixel terms."""
import argparse
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import model_factory
import run_mvd_pretraining as mvd
import test_pretraining
from checkpoint import load_checkpoint
from conftest import VIDEOS
from engine_for_pretraining import forward_losses, optimizer_update
from losses import FeatureLoss, LossWeights, feature_loss, mmkd_loss
from model_factory import create_classifier, create_image_teacher, create_student, create_teacher
from modeling_student import StudentOutput
from modeling_teacher import ImageTeacher, Teachers, TeacherOutput
from optim_factory import build_optimizer, load_optimizer_state
from pos_embed import sincos_2d_table, sincos_3d_table
from test_pretraining import read_log
from weights import load_image_teacher, load_pretrained

GEOM = dict(img_size=32, num_frames=4)  # token grid (2, 2, 2)
DIM, HEADS, DEPTH = 192, 3, 2  # the student: ViT-Ti, two blocks
DEC, DEC_DEPTH = 192, 1  # its feature decoders: MVD's default width (the encoder's)
IMG_DIM, VID_DIM = 384, 192  # image teacher ViT-S, video teacher ViT-Ti (two blocks each)
TINY = ["--model", "pretrain_masked_video_student_tiny_patch16_224", "--decoder_depth", "1",
        "--image_teacher_model", "mae_teacher_vit_small_patch16", "--distillation_target_dim",
        str(IMG_DIM), "--video_teacher_model", "pretrain_videomae_teacher_tiny_patch16_224",
        "--video_distillation_target_dim", str(VID_DIM), "--input_size", "32",
        "--teacher_input_size", "32", "--num_frames", "4", "--sampling_rate", "2",
        "--batch_size", "2", "--device", "cpu", "--num_workers", "0", "--warmup_epochs", "0",
        "--mask_ratio", "0.5", "--opt_betas", "0.9", "0.95", "--lr", "0.5", "--save_ckpt_freq", "1"]
anno = test_pretraining.anno  # the fixture: an annotation file of its real clips


@pytest.fixture(scope="module", autouse=True)
def two_blocks(two_block_tiny):
    """Every ViT-Ti (conftest's ``two_block_tiny``) and ImageMAE teacher of this module two
    blocks deep."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("mae_teacher_vit_tiny_patch16", "mae_teacher_vit_small_patch16"):
            mp.setitem(model_factory.IMAGE_TEACHER_MODELS, name,
                       dict(model_factory.IMAGE_TEACHER_MODELS[name], depth=DEPTH))
        yield


def hidden_loop(features, mask):
    """The rows of ``features [B, N, D]`` where ``mask [B, N]``, one token at a time."""
    return torch.stack([torch.stack([features[b, n] for n in range(mask.shape[1]) if mask[b, n]])
                        for b in range(mask.shape[0])])


def tube_mask(b=2):
    """Hidden tokens 1, 2 of every temporal slice of the (2, 2, 2) grid, another per clip."""
    m = torch.zeros(b, 8, dtype=torch.bool)
    m[0, [1, 2, 5, 6]] = True
    m[1:, [0, 3, 4, 7]] = True
    return m


# ---------------------------------------------------------------------------------------------
# the image teacher
# ---------------------------------------------------------------------------------------------

def mae_checkpoint(path, width=64, heads=2, seed=0):
    """An ImageMAE encoder file as MAE's ``mae_pretrain_vit_*.pth`` (``model``: cls_token,
    pos_embed, patch_embed, blocks, norm; timm's names) with random weights, plus a head and
    a wrong position table that loading must skip. Returns the weights with MAE's table."""
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=width, depth=2, num_heads=heads,
                            num_classes=0, global_pool="")
    with torch.no_grad():
        for p in vit.parameters():
            p.normal_(0, 0.05)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    saved = dict(state, pos_embed=torch.randn_like(state["pos_embed"]),
                 **{"head.weight": torch.randn(10, width), "head.bias": torch.zeros(10)})
    torch.save({"model": saved, "epoch": 799}, path)
    return dict(state, pos_embed=sincos_2d_table((2, 2), width, class_token=True))


def test_image_teacher_equals_timms_forward_of_the_same_weights(tmp_path):
    """Our image-teacher path (first frame of each tubelet, last block, no final norm, class
    token dropped) against timm's ``forward_features`` of a ViT holding the same weights and
    MAE's table, with its final norm removed."""
    path = str(tmp_path / "mae_pretrain_vit_tiny.pth")
    weights = mae_checkpoint(path)
    teacher = ImageTeacher(VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2,
                                             num_heads=2, num_classes=0, global_pool=""))
    load_image_teacher(teacher, path)
    ref = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                            num_classes=0, global_pool="").eval()
    ref.load_state_dict(weights)
    ref.norm = nn.Identity()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        want = torch.cat([ref.forward_features(x[:, :, t])[:, 1:] for t in (0, 2)], dim=1)
    torch.testing.assert_close(teacher.features(x), want, atol=1e-5, rtol=1e-5)
    # MAE's fixed 2-D table, not the file's (MVD skips every pos_embed key)
    torch.testing.assert_close(teacher.vit.pos_embed, weights["pos_embed"])
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_first_frame_selection_and_token_order_on_a_hand_made_clip():
    """A one-block image teacher made to pass a patch's mean value through unchanged (zero
    attention and MLP branches): each output token must be its own frame's patch, frames
    0 and 2 of 4, in ``(t, h, w)`` order; the hidden targets follow the mask."""
    teacher = create_image_teacher("mae_teacher_vit_tiny_patch16", img_size=32)
    vit = teacher.vit
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name != "pos_embed":  # MAE's table stays
                p.zero_()
        vit.patch_embed.proj.weight[0, 0] = 1.0 / 256  # channel 0: the patch's mean
    x = torch.zeros(1, 3, 4, 32, 32)
    for f in range(4):
        for h in range(2):
            for w in range(2):
                x[0, 0, f, 16 * h:16 * (h + 1), 16 * w:16 * (w + 1)] = 100 * f + 10 * h + w
    table = sincos_2d_table((2, 2), vit.embed_dim)[0, :, 0]  # added by the teacher
    got = teacher.features(x)[0, :, 0] - table.repeat(2)
    want = torch.tensor([100.0 * f + 10 * h + w
                         for f in (0, 2) for h in range(2) for w in range(2)])
    torch.testing.assert_close(got, want)
    mask = torch.tensor([[False, True, True, False, True, False, False, True]])
    torch.testing.assert_close(teacher(x, mask), hidden_loop(teacher.features(x), mask))


def test_feature_targets_at_hidden_positions_against_loops():
    torch.manual_seed(0)
    video = create_teacher("pretrain_videomae_teacher_tiny_patch16_224", sees_all_tokens=True,
                           **GEOM)
    image = create_image_teacher("mae_teacher_vit_small_patch16", img_size=32)
    x, mask = torch.randn(2, 3, 4, 32, 32), tube_mask()
    out = Teachers(video, image)(x, mask, views=("global",), num_k=2)
    with torch.no_grad():
        whole = video.encoder.forward_features(x).tokens  # [B, N, D]
    torch.testing.assert_close(out.vid_feat, hidden_loop(whole, mask))
    torch.testing.assert_close(out.img_feat, hidden_loop(image.features(x), mask))
    torch.testing.assert_close(out.features, hidden_loop(whole, ~mask))  # MMKD's, same forward
    assert out.vid_feat.shape == (2, 4, VID_DIM) and out.img_feat.shape == (2, 4, IMG_DIM)


def test_every_mvd_name_builds():
    """MVD's student and image-teacher names, at full size on the meta device."""
    for size, (d, depth) in {"small": (384, 12), "huge": (1280, 32)}.items():
        with torch.device("meta"):
            s = create_student(f"pretrain_masked_video_student_{size}_patch16_224", decoder_depth=0,
                               feature_dims={"img_feat": 768, "vid_feat": 1024})
        assert s.pos_embed_type == "sincos_3d" and s.encoder.embed_dim == d
        assert len(s.encoder.blocks) == depth and s.decoder_img.head.out_features == 768
        assert s.down_vid.out_features == d and len(s.decoder_vid.blocks) == 2
    for name, (d, grid) in {"mae_teacher_vit_large_patch16": (1024, (14, 14)),
                            "mae_teacher_vit_huge_patch14": (1280, (14, 14))}.items():
        size = 196 if name.endswith("14") else 224  # --teacher_input_size 196 for ViT-H/14
        with torch.device("meta"):
            t = create_image_teacher(name, img_size=size)
        assert t.embed_dim == d and t.grid_size == grid
    with pytest.raises(ValueError, match="--teacher_input_size 200 must be divisible by"):
        create_image_teacher("mae_teacher_vit_huge_patch14", img_size=200)


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("func, module", [("L1", nn.L1Loss()), ("L2", nn.MSELoss()),
                                          ("SmoothL1", nn.SmoothL1Loss())])
def test_feature_losses_equal_pytorchs(func, module):
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 8) * 2, torch.randn(2, 5, 8) * 2
    torch.testing.assert_close(feature_loss(pred, target, func), module(pred, target))
    ln = nn.LayerNorm(8, eps=1e-6, elementwise_affine=False)
    torch.testing.assert_close(feature_loss(pred, target, func, norm_target=True),
                               module(pred, ln(target)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in float32 all the same
        torch.testing.assert_close(feature_loss(pred, target, func), module(pred, target))
    with pytest.raises(ValueError, match="'Huber'"):
        feature_loss(pred, target, "Huber")


def test_objective_combines_mvd_mmkd_and_pixel_terms():
    torch.manual_seed(0)
    b, n, d = 2, 6, 8
    s = StudentOutput(tokens=torch.randn(b, n, d), pixels=torch.randn(b, 3, 4),
                      img_feat=torch.randn(b, 3, 5), vid_feat=torch.randn(b, 3, d))
    t = TeacherOutput(features=torch.randn(b, n, d), img_feat=torch.randn(b, 3, 5),
                      vid_feat=torch.randn(b, 3, d))
    pixel_target = torch.randn(b, 3, 4)
    w = LossWeights(hint=0.2, relation=0.1, pixel=0.5, img_feat=1.0, vid_feat=0.7)
    losses = {"img_feat": FeatureLoss("L2"), "vid_feat": FeatureLoss("SmoothL1", True)}
    total, terms = mmkd_loss(s, t, w, pixel_target, num_f=3, feature_losses=losses)
    assert set(terms) == {"hint", "relation", "pixel", "img_feat", "vid_feat"}
    torch.testing.assert_close(terms["img_feat"], F.mse_loss(s.img_feat, t.img_feat))
    torch.testing.assert_close(terms["vid_feat"], F.smooth_l1_loss(
        s.vid_feat, F.layer_norm(t.vid_feat, (d,), eps=1e-6)))
    want = (0.2 * terms["hint"] + 0.1 * terms["relation"] + 0.5 * terms["pixel"]
            + terms["img_feat"] + 0.7 * terms["vid_feat"])
    torch.testing.assert_close(total, want)
    _, only = mmkd_loss(s, t, LossWeights(vid_feat=1.0))  # MVD alone: SmoothL1 by default
    assert set(only) == {"vid_feat"}
    torch.testing.assert_close(only["vid_feat"], F.smooth_l1_loss(s.vid_feat, t.vid_feat))


# ---------------------------------------------------------------------------------------------
# MVD's pre-training checkpoints
# ---------------------------------------------------------------------------------------------

def _block_state(p, dim, rnd):
    return {p + "norm1.weight": 1 + rnd(dim, std=0.1), p + "norm1.bias": rnd(dim),
            p + "attn.qkv.weight": rnd(3 * dim, dim, std=0.1), p + "attn.q_bias": rnd(dim),
            p + "attn.v_bias": rnd(dim), p + "attn.proj.weight": rnd(dim, dim, std=0.1),
            p + "attn.proj.bias": rnd(dim), p + "norm2.weight": 1 + rnd(dim, std=0.1),
            p + "norm2.bias": rnd(dim), p + "mlp.fc1.weight": rnd(4 * dim, dim, std=0.05),
            p + "mlp.fc1.bias": rnd(4 * dim), p + "mlp.fc2.weight": rnd(dim, 4 * dim, std=0.05),
            p + "mlp.fc2.bias": rnd(dim)}


def mvd_pretraining_state(seed=0):
    """Random weights under every key of MVD's pre-training student
    (``PretrainMaskedVideoStudent``), in its ``state_dict`` order: its own parameters first
    (``pos_embed``, ``mask_token_img``, ``pos_embed_img``, ``mask_token_vid``,
    ``pos_embed_vid``), then ``patch_embed``, ``blocks``, ``norm``, ``down_img``,
    ``decoder_img``, ``down_vid``, ``decoder_vid``. Tables are MVD's fixed 3-D ones."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, std=0.02: torch.randn(*s, generator=g) * std  # noqa: E731
    sd = {"pos_embed": sincos_3d_table((2, 2, 2), DIM)}
    for kind in ("img", "vid"):
        sd[f"mask_token_{kind}"] = rnd(1, 1, DEC)
        sd[f"pos_embed_{kind}"] = sincos_3d_table((2, 2, 2), DEC)
    sd.update({"patch_embed.proj.weight": rnd(DIM, 3, 2, 16, 16),
               "patch_embed.proj.bias": rnd(DIM)})
    for i in range(DEPTH):
        sd.update(_block_state(f"blocks.{i}.", DIM, rnd))
    sd.update({"norm.weight": 1 + rnd(DIM, std=0.1), "norm.bias": rnd(DIM)})
    for kind, out_dim in (("img", IMG_DIM), ("vid", VID_DIM)):
        sd.update({f"down_{kind}.weight": rnd(DEC, DIM, std=0.1), f"down_{kind}.bias": rnd(DEC)})
        for i in range(DEC_DEPTH):
            sd.update(_block_state(f"decoder_{kind}.blocks.{i}.", DEC, rnd))
        sd.update({f"decoder_{kind}.norm.weight": 1 + rnd(DEC, std=0.1),
                   f"decoder_{kind}.norm.bias": rnd(DEC),
                   f"decoder_{kind}.head.weight": rnd(out_dim, DEC, std=0.1),
                   f"decoder_{kind}.head.bias": rnd(out_dim)})
    return sd


def _ln(sd, name, z):
    return F.layer_norm(z, z.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], 1e-6)


def _block(sd, p, z, heads):
    """A pre-norm block written out: q/v biases, softmax attention, GELU MLP."""
    b, n, d = z.shape
    bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(d), sd[p + "attn.v_bias"]])
    q, k, v = F.linear(_ln(sd, p + "norm1", z), sd[p + "attn.qkv.weight"], bias).reshape(
        b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    y = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
    z = z + F.linear(y.transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"],
                     sd[p + "attn.proj.bias"])
    h = F.gelu(F.linear(_ln(sd, p + "norm2", z), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
    return z + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def mvd_forward(sd, x, mask):
    """MVD's student written out: tubelet conv + its stored table, the visible tokens
    through the blocks and the final norm; per feature decoder: ``down``, visible tokens +
    their table rows followed by the mask token + the hidden rows, blocks, norm, head on the
    hidden tokens. Returns ``(img, vid)``."""
    z = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(2, 16, 16))
    z = z.flatten(2).transpose(1, 2) + sd["pos_embed"]
    b = z.shape[0]
    z = z[~mask].reshape(b, -1, DIM)
    for i in range(DEPTH):
        z = _block(sd, f"blocks.{i}.", z, HEADS)
    z = _ln(sd, "norm", z)
    out = []
    for kind in ("img", "vid"):
        y = F.linear(z, sd[f"down_{kind}.weight"], sd[f"down_{kind}.bias"])
        pos = sd[f"pos_embed_{kind}"].expand(b, -1, -1)
        hid = pos[mask].reshape(b, -1, DEC)
        y = torch.cat([y + pos[~mask].reshape(b, -1, DEC), sd[f"mask_token_{kind}"] + hid], 1)
        for i in range(DEC_DEPTH):
            y = _block(sd, f"decoder_{kind}.blocks.{i}.", y, HEADS)
        y = _ln(sd, f"decoder_{kind}.norm", y[:, -hid.shape[1]:])
        out.append(F.linear(y, sd[f"decoder_{kind}.head.weight"], sd[f"decoder_{kind}.head.bias"]))
    return out


def mvd_optimizer_state(sd):
    """AdamW state as MVD's ``create_optimizer`` saves it: groups ``[decay, no_decay]`` over
    the trainable parameters in ``named_parameters`` order (weight decay except on 1-D
    tensors, biases and the names ``pos_embed``, ``cls_token``, ``mask_token``, so the
    ``mask_token_*`` decay); every state tensor filled with its parameter's index."""
    names = [k for k in sd if not k.startswith("pos_embed")]  # frozen tables are not trained
    no_decay = [k for k in names if sd[k].ndim == 1 or k.endswith(".bias")]
    decay = [k for k in names if k not in no_decay]
    order = decay + no_decay
    state = {i: {"step": torch.tensor(7.0), "exp_avg": torch.full_like(sd[k], float(i)),
                 "exp_avg_sq": torch.full_like(sd[k], float(i) + 0.5)} for i, k in enumerate(order)}
    group = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, amsgrad=False, lr_scale=1.0)
    groups = [dict(group, weight_decay=0.05, params=list(range(len(decay)))),
              dict(group, weight_decay=0.0, params=list(range(len(decay), len(order))))]
    return {"state": state, "param_groups": groups}, order


@pytest.fixture(scope="module")
def mvd_file(tmp_path_factory):
    """An MVD pre-training file as MVD's ``save_model`` writes it (model, optimizer, epoch,
    scaler, a pickled Namespace)."""
    sd = mvd_pretraining_state()
    optim, order = mvd_optimizer_state(sd)
    path = str(tmp_path_factory.mktemp("mvd") / "checkpoint-0.pth")
    torch.save({"model": sd, "optimizer": optim, "epoch": 0, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="pretrain_masked_video_student_tiny_patch16_224")},
               path)
    return path, sd, order


def _mvd_student():
    return create_student("pretrain_masked_video_student_tiny_patch16_224", decoder_depth=0,
                          feature_dims={"img_feat": IMG_DIM, "vid_feat": VID_DIM},
                          feat_decoder_depth=DEC_DEPTH, pos_embed="sincos_1d", **GEOM)


def _ours(key):
    return "encoder." + key if key.startswith(("patch_embed.", "blocks.", "norm.")) else key


def test_mvd_checkpoint_loads_strictly_and_gives_mvds_outputs(mvd_file, capsys):
    path, sd, _ = mvd_file
    student = _mvd_student()  # built with the 1-D table: the file's stored 3-D table wins
    load_pretrained(student, path, path, strict=True)
    assert student.pos_embed_type == "sincos_3d"
    assert "MVD 3-D sin-cos table" in capsys.readouterr().out
    x, mask = torch.randn(2, 3, 4, 32, 32), tube_mask()
    with torch.no_grad():
        out = student.eval()(x, mask)
        img, vid = mvd_forward(sd, x, mask)
    torch.testing.assert_close(out.img_feat, img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.vid_feat, vid, atol=1e-5, rtol=1e-5)
    # our student's own keys are MVD's, but for the encoder's "encoder." prefix and the tables
    ours = set(student.state_dict())
    assert ours == {_ours(k) for k in sd if not k.startswith("pos_embed")}


def test_mvd_optimizer_state_follows_its_parameters(mvd_file):
    path, sd, order = mvd_file
    student = _mvd_student()
    args = mvd.get_args_parser().parse_args(["--data_path", "x", "--device", "cpu"])
    args.lr_scaled = 1e-4
    optimizer = build_optimizer(student, args)  # timm's groups: [no decay, decay]
    assert [g["weight_decay"] > 0 for g in optimizer.param_groups] == [False, True]
    load_optimizer_state(optimizer, load_checkpoint(path)["optimizer"], path)
    for i, key in enumerate(order):
        state = optimizer.state[student.get_parameter(_ours(key))]
        assert state["exp_avg"].flatten()[0].item() == i, key
        assert state["exp_avg_sq"].flatten()[0].item() == i + 0.5, key
    wrong = {"state": {}, "param_groups": [{"weight_decay": 0.05, "params": [0, 1]}]}
    with pytest.raises(ValueError, match="parameter groups"):
        load_optimizer_state(optimizer, wrong, "wrong.pth")


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """Tiny teachers as files: a VideoMAE pre-training checkpoint (``encoder.*``) and an
    ImageMAE one (``model``, timm's keys)."""
    d = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(1)
    video = create_teacher("pretrain_videomae_tiny_patch16_224", **GEOM)
    torch.save({"model": {f"encoder.{k}": v for k, v in video.encoder.state_dict().items()}},
               d / "videomae_tiny.pth")
    image = create_image_teacher("mae_teacher_vit_small_patch16", img_size=32)
    torch.save({"model": image.vit.state_dict()}, d / "mae_pretrain_vit_small.pth")
    return ["--video_teacher_model_ckpt_path", str(d / "videomae_tiny.pth"),
            "--image_teacher_model_ckpt_path", str(d / "mae_pretrain_vit_small.pth")]


def run(argv):
    args = mvd.get_args_parser().parse_args(argv)
    mvd.main(args, build=mvd.build_models)
    return args


def test_teachers_frozen_outside_the_optimizer_and_the_student_moves(anno, teacher_files):
    args = mvd.get_args_parser().parse_args(["--data_path", anno, *TINY, *teacher_files])
    student, teachers = mvd.build_models(args)
    args.lr_scaled = 1e-3
    optimizer = build_optimizer(student, args)
    in_optim = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(p.requires_grad or id(p) in in_optim for p in teachers.parameters())
    teachers.train()
    assert not any(m.training for m in teachers.modules())
    assert not any(k.startswith(("video.", "image.", "vit.")) for k in student.state_dict())
    before_t = {k: v.clone() for k, v in teachers.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    x, mask = torch.randn(2, 3, 4, 32, 32), tube_mask()
    weights = LossWeights(img_feat=1.0, vid_feat=1.0)
    loss, terms = forward_losses(student.train(), teachers, x, mask, weights=weights, device="cpu")
    assert set(terms) == {"img_feat", "vid_feat"}
    loss.backward()  # every student parameter gets a gradient (DDP needs no unused ones)
    assert [n for n, p in student.named_parameters() if p.grad is None] == []
    optimizer_update(student, optimizer)
    assert all(torch.equal(v, teachers.state_dict()[k]) for k, v in before_t.items())
    after = student.state_dict()
    for key in ("encoder.blocks.0.attn.qkv.weight", "encoder.norm.weight", "down_img.weight",
                "decoder_img.blocks.0.mlp.fc1.weight", "decoder_img.head.weight", "mask_token_vid",
                "down_vid.weight", "decoder_vid.head.weight"):
        assert not torch.equal(before_s[key], after[key]), key


def _falls(log, term):
    return log[-1][f"train_{term}"] < log[0][f"train_{term}"]


def test_mvd_two_epochs_resume_finite_terms_that_fall(anno, teacher_files, tmp_path, capsys):
    out = str(tmp_path / "mvd")
    common = ["--data_path", anno, "--data_root", VIDEOS, "--output_dir", out, *TINY,
              *teacher_files]
    run(common + ["--epochs", "1"])
    run(common + ["--epochs", "2"])  # auto-resumes from checkpoint-0
    text = capsys.readouterr().out
    assert "resumed from" in text and "checkpoint-0.pth" in text
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    for r in log:
        assert all(math.isfinite(r[f"train_{t}"]) for t in ("loss", "img_feat", "vid_feat"))
        assert "train_hint" not in r and "train_pixel" not in r
    assert _falls(log, "img_feat") and _falls(log, "vid_feat"), log
    ckpt = torch.load(os.path.join(out, "checkpoint-1.pth"), weights_only=True)
    assert ckpt["args"]["pos_embed"] == "sincos_3d"
    assert not any(k.startswith(("video", "image")) for k in ckpt["model"])
    # fine-tuning from it picks MVD's 3-D table (recorded in its arguments)
    clf = create_classifier("vit_tiny_patch16_224", num_classes=3, **GEOM)
    load_pretrained(clf, os.path.join(out, "checkpoint-1.pth"), "mvd student")
    assert clf.pos_embed_type == "sincos_3d"


def test_mvd_with_mmkd_and_pixel_terms(anno, teacher_files, tmp_path):
    out = str(tmp_path / "mix")
    run(["--data_path", anno, "--data_root", VIDEOS, "--output_dir", out, *TINY, *teacher_files,
         "--epochs", "2", "--gamma", "0.1", "--alpha", "0.1", "--beta", "1", "--num_k", "2",
         "--num_f", "2", "--pixel_decoder_depth", "1"])
    log = read_log(out)
    for r in log:
        assert all(math.isfinite(r[f"train_{t}"]) for t in
                   ("loss", "img_feat", "vid_feat", "hint", "relation", "global", "local", "pixel"))
    assert _falls(log, "img_feat") and _falls(log, "vid_feat"), log
    ckpt = torch.load(os.path.join(out, "checkpoint-1.pth"), weights_only=True)
    assert {"decoder.head.weight", "decoder_img.head.weight", "decoder_vid.head.weight"} <= \
        set(ckpt["model"])


def test_resume_from_an_mvd_file(mvd_file, anno, tmp_path, capsys):
    path, _, _ = mvd_file
    out = str(tmp_path / "resumed")
    run(["--data_path", anno, "--data_root", VIDEOS, "--output_dir", out, *TINY, "--epochs", "2",
         "--resume", path])
    text = capsys.readouterr().out
    assert f"resumed from {path}: epoch 0 done" in text
    assert [r["epoch"] for r in read_log(out)] == [1]


@pytest.mark.parametrize("change, message", [
    (["--distillation_target_dim", "768"],
     "--distillation_target_dim 768 differs from the width 384"),
    (["--video_distillation_target_dim", "96"], "--video_distillation_target_dim 96 differs"),
    (["--teacher_input_size", "48"], "--teacher_input_size 48"),
    (["--video_teacher_input_size", "48"], "--video_teacher_input_size 48 must equal --input_size"),
    (["--video_teacher_model_ckpt_path", "no_such_teacher.pth"], "no_such_teacher.pth"),
    (["--image_teacher_model_ckpt_path", "no_such_mae.pth"], "no_such_mae.pth"),
    (["--image_teacher_loss_weight", "0", "--video_teacher_loss_weight", "0"], "no objective"),
])
def test_bad_input_is_one_line_before_training(anno, tmp_path, change, message):
    out = str(tmp_path / "bad")
    with pytest.raises(SystemExit) as e:
        run(["--data_path", anno, "--data_root", VIDEOS, "--output_dir", out, "--epochs", "1",
             *TINY, *change])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(os.path.join(out, "log.json"))


def test_image_teacher_made_from_a_video_encoder(tmp_path, capsys):
    """tools/image_teacher_from_video.py: the demo's stand-in image teacher. On a still frame
    its patch embedding equals the tubelet embedding's, and its blocks (fused qkv bias) equal
    the video encoder's."""
    from tools import image_teacher_from_video
    torch.manual_seed(0)
    video = create_teacher("pretrain_videomae_tiny_patch16_224", **GEOM)
    with torch.no_grad():
        for blk in video.encoder.blocks:
            blk.attn.q_bias.normal_()
            blk.attn.v_bias.normal_()
    src, dst = str(tmp_path / "videomae.pth"), str(tmp_path / "image.pth")
    torch.save({"model": {f"encoder.{k}": v for k, v in video.encoder.state_dict().items()}}, src)
    image_teacher_from_video.main([src, dst])
    assert "image teacher of width 192, 2 blocks" in capsys.readouterr().out
    image = create_image_teacher("mae_teacher_vit_tiny_patch16", img_size=32)
    load_image_teacher(image, dst)
    frame = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tubelet = torch.stack([frame, frame], dim=2)  # [B, 3, 2, H, W]: one still tubelet
        tokens = video.encoder.patch_embed.proj(tubelet).flatten(2).transpose(1, 2)  # [B, 4, D]
        torch.testing.assert_close(image.vit.patch_embed(frame), tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(image.vit.blocks[0](tokens), video.encoder.blocks[0](tokens),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit, match="no video encoder"):
        torch.save({"model": {"head.weight": torch.zeros(2, 2)}}, src)
        image_teacher_from_video.main([src, dst])
