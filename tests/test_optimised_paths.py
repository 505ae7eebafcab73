"""Every optimised path against the plain one it replaces (benchmarks/README.md lists them):
values and gradients within float tolerance on CPU, tiny models (4 frames, 32 px).

- fused SDPA attention (also in the block whose maps the loss reads) vs the explicit
  ``softmax(q k^T) v`` of the reference, in the student, the teacher and the whole loss;
- top-k attention ``impl='scatter'`` vs the reference's masked ``'dense'``;
- the relation loss without the ``[M, M]`` identity mask vs the masked version;
- the engine's ``forward_losses`` (teacher computed once per step, optionally outside
  autocast) vs the inline composition; fused AdamW vs for-each AdamW;
- ``torch.compile`` of the blocks vs eager (set ``MMKD_SKIP_COMPILE_TEST=1`` to skip: the
  first compilation takes 10-30 s on a small CPU);
- decoding at the size the crops need vs full-size decoding + resize, and one decode
  for the 3 crops of a test clip vs one per crop.
"""
import copy
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from timm.optim import create_optimizer_v2

import engine_for_pretraining as engine
import losses
from conftest import VIDEOS, linear_output_dtypes
from datasets import VideoClsDataset, VideoMAEPretrainDataset, video_io
from masking_generator import TubeMaskingGenerator
from model_factory import create_student, create_teacher
from modeling_encoder import Attention, Block, compile_blocks, set_fused_attn

GEOM = dict(img_size=32, num_frames=4)  # token grid (2, 2, 2): 8 tokens, 2 slices
# the CPU, and CUDA where visible (tests/conftest.py skips the `cuda` ones elsewhere)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def tol(a, b, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    t = create_teacher("pretrain_videomae_tiny_patch16_224", **GEOM)
    s = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, teacher_dim=192,
                       num_k=2, **GEOM)
    gen = TubeMaskingGenerator(s.patch_embed.grid_size, 0.25, seed=0)  # 3 of 4 visible per slice
    mask = torch.stack([torch.from_numpy(gen()) for _ in range(2)])
    x = torch.randn(2, 3, 4, 32, 32)
    return s, t, x, mask


def loss_and_grads(s, t, x, mask, **kw):
    w = losses.LossWeights.from_args("hybrid", 0.2, 0.1, 1.0, 3.0, 1.0, 1.0)
    s.zero_grad(set_to_none=True)
    kw.setdefault("device", "cpu")
    loss, terms = engine.forward_losses(s, t, x, mask, weights=w, num_k=2,
                                        num_f=3, mean=(0.5,) * 3, std=(0.2,) * 3, **kw)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, grads


def test_fused_attention_matches_explicit_in_the_whole_distillation_loss(models, monkeypatch):
    s, t, x, mask = models
    s.train()
    plain = copy.deepcopy(s)
    set_fused_attn(plain, False)
    t_plain = set_fused_attn(copy.deepcopy(t), False)
    monkeypatch.setattr(losses, "DEFAULT_TOPK_IMPL", "dense")
    ref = loss_and_grads(plain, t_plain, x, mask)
    monkeypatch.setattr(losses, "DEFAULT_TOPK_IMPL", "scatter")
    opt = loss_and_grads(s, t, x, mask)
    tol(opt[0], ref[0])
    assert opt[1].keys() == ref[1].keys() == {"hint", "relation", "global", "local", "pixel"}
    for k in ref[1]:
        tol(opt[1][k], ref[1][k])
    assert opt[2].keys() == ref[2].keys()
    for k in ref[2]:
        tol(opt[2][k], ref[2][k], atol=1e-5, rtol=1e-3)


def test_sdpa_in_every_block_and_explicit_logits_only_where_read(models, monkeypatch):
    s, t, x, mask = models
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    out = s.encoder.forward_features(x, mask, maps_from=(-1,))
    depth = len(s.encoder.blocks)
    assert len(calls) == depth and list(out.maps) == [depth - 1]
    calls.clear()
    t_out = t(x, mask, (), 2, 1.0)  # --distill onlymse: no maps at all
    assert len(calls) == depth and t_out.attn_global is None
    # the plain path never calls the fused kernel
    calls.clear()
    set_fused_attn(s, False)
    try:
        s.encoder.forward_features(x, mask)
    finally:
        set_fused_attn(s, True)
    assert calls == []


@pytest.mark.parametrize("device", DEVICES)
def test_fused_and_explicit_attention_agree_with_dropout_off_and_maps(device):
    torch.manual_seed(0)
    attn = Attention(48, num_heads=4).to(device)
    x = torch.randn(2, 10, 48, device=device, requires_grad=True)
    out, maps = attn(x, return_maps=True)
    (out.sum() + maps.logits.square().sum()).backward()
    g = x.grad.clone()
    x.grad = None
    attn.fused_attn = False
    out2, maps2 = attn(x, return_maps=True)
    (out2.sum() + maps2.logits.square().sum()).backward()
    tol(out, out2)
    tol(maps.logits, maps2.logits)
    tol(x.grad, g)


@pytest.mark.parametrize("impl", ["scatter"])
def test_topk_implementations_match_dense_with_gradients(impl):
    torch.manual_seed(0)
    B, h, S, n, hd, k = 2, 3, 3, 5, 4, 3
    logits = torch.randn(B, h, S * n, S * n, requires_grad=True)
    v = torch.randn(B, h, S * n, hd, requires_grad=True)
    for fn in (lambda i: losses.topk_attention_global(logits, v, k, 2.0, impl=i),
               lambda i: losses.topk_attention_local(logits, v, k, S, 0.5, impl=i)):
        outs, grads = {}, {}
        for i in ("dense", impl):
            out = fn(i)
            (out * torch.linspace(-1, 1, out.shape[-1])).square().sum().backward()
            outs[i], grads[i] = out.detach(), (logits.grad.clone(), v.grad.clone())
            logits.grad = v.grad = None
        tol(outs[impl], outs["dense"])
        tol(grads[impl][0], grads["dense"][0])
        tol(grads[impl][1], grads["dense"][1])
    with pytest.raises(ValueError, match="impl"):
        losses.topk_attention_global(logits, v, k, impl="sparse")


def test_relation_loss_without_identity_mask_matches_masked_version():
    torch.manual_seed(0)
    s = torch.randn(3, 4, 6, requires_grad=True)
    t = torch.randn(3, 4, 8)

    def masked(sel_s, sel_t, ts=0.1, tt=0.05):  # the previous implementation
        a = F.normalize(sel_s.flatten(0, 1), dim=-1)
        b = F.normalize(sel_t.flatten(0, 1), dim=-1)
        eye = torch.eye(a.shape[0], dtype=torch.bool)
        g_s = (a @ a.T).masked_fill(eye, -1e4) / ts
        g_t = (b @ b.T).masked_fill(eye, -1e4) / tt
        return F.kl_div(g_s.log_softmax(-1), g_t.log_softmax(-1), log_target=True,
                        reduction="sum") / a.shape[0]
    ref = masked(s, t)
    (g_ref,) = torch.autograd.grad(ref, s)
    new = losses.relation_loss(s, t)
    (g_new,) = torch.autograd.grad(new, s)
    tol(new, ref)
    tol(g_new, g_ref)


def test_engine_computes_the_teacher_once_per_step(models, monkeypatch):
    s, t, x, mask = models
    calls = []
    real = type(t).forward
    monkeypatch.setattr(type(t), "forward",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    batches = [{"video": x, "bool_masked_pos": mask, "num_skipped": 0}] * 3
    student = copy.deepcopy(s)
    opt = create_optimizer_v2(student, opt="adamw", lr=1e-4)
    sched = SimpleNamespace(step_update=lambda u: None)
    w = losses.LossWeights.from_args("hybrid", 0.2, 0.1, 1.0, 3.0, 1.0, 0.0)
    stats = engine.train_one_epoch(student, t, batches, opt, "cpu", 0, weights=w,
                                   lr_scheduler=sched, wd_schedule=lambda u: 0.05,
                                   steps_per_epoch=3, num_k=2, num_f=3)
    assert len(calls) == 3 and stats["clips"] == 6


def test_forward_losses_equals_the_inline_composition(models):
    s, t, x, mask = models
    s.eval()  # no drop path: two forwards give the same result
    w = losses.LossWeights.from_args("hinTop", 0.2, 0.1, 1.0, 3.0, 1.0, 0.0)
    loss, terms = engine.forward_losses(s, t, x, mask, weights=w, device="cpu", num_k=2,
                                        num_f=3, teacher_autocast=False)
    ref, ref_terms = losses.mmkd_loss(s(x, mask), t(x, mask, w.views(), 2, 1.0), w, num_f=3)
    tol(loss, ref)
    assert terms.keys() == ref_terms.keys() == {"hint", "relation", "global"}
    s.train()


@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_matches_foreach(device):
    """timm passes ``fused=True`` through; the fused kernel takes the same step (on the CPU,
    and on CUDA, where ``optim_factory.fused_kwargs`` asks for it)."""
    from optim_factory import fused_kwargs
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    a = a.to(device)
    b = copy.deepcopy(a)
    opts = [create_optimizer_v2(m, opt="adamw", lr=1e-2, weight_decay=0.05, betas=(0.9, 0.95),
                                **kw) for m, kw in ((a, {"foreach": True}), (b, {"fused": True}))]
    assert opts[1].defaults["fused"] is True
    x = torch.randn(4, 8, device=device)
    for _ in range(3):
        for m, o in zip((a, b), opts):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        tol(p, q, atol=1e-6, rtol=1e-5)
    args = SimpleNamespace(fused_opt=True, device="cpu", opt="adamw")
    assert fused_kwargs(args) == {}
    args.device = "cuda"
    assert fused_kwargs(args) == {"fused": True}
    args.opt = "sgd"
    assert fused_kwargs(args) == {}


def test_losses_stay_float32_under_autocast():
    """The loss functions switch autocast off: float32 inputs give float32 results, bit for bit."""
    torch.manual_seed(0)
    sel_s, sel_t = torch.randn(2, 5, 16), torch.randn(2, 5, 24)
    logits, v = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 4)
    fns = [lambda: losses.relation_loss(sel_s, sel_t),
           lambda: losses.topk_attention_global(logits, v, 3),
           lambda: losses.topk_attention_local(logits, v, 2, 2)]
    for fn in fns:
        ref = fn()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn()
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_step_close_to_float32(models, device):
    """Teacher and student under bf16 autocast (``--amp bf16``; the CUDA default, opt-in on
    a CPU) give the float32 loss terms and gradients within bf16 precision."""
    s, t, x, mask = models
    s, t = copy.deepcopy(s).to(device).eval(), copy.deepcopy(t).to(device)
    x, mask = x.to(device), mask.to(device)
    _, ref_terms, ref_grads = loss_and_grads(s, t, x, mask, device=device)
    with linear_output_dtypes(student=s.encoder, teacher=t) as seen:
        _, terms, grads = loss_and_grads(s, t, x, mask, device=device, amp_dtype=torch.bfloat16)
    assert seen == {"student": {torch.bfloat16}, "teacher": {torch.bfloat16}}  # really bf16
    assert terms.keys() == ref_terms.keys() == {"hint", "relation", "global", "local", "pixel"}
    for k in terms:  # relation: 4 % off when its similarities were formed in bf16
        tol(terms[k], ref_terms[k], atol=1e-4, rtol=1e-2)
    assert grads.keys() == ref_grads.keys()
    flat = torch.cat([g.flatten() for g in grads.values()]).double()
    ref = torch.cat([g.flatten() for g in ref_grads.values()]).double()
    assert F.cosine_similarity(flat, ref, dim=0) > 0.999
    assert (flat.norm() / ref.norm() - 1).abs() < 2e-2
    assert t(x, mask, ("global",), 2, 1.0).features.dtype == torch.float32  # no autocast leak


@pytest.mark.skipif(os.environ.get("MMKD_SKIP_COMPILE_TEST") == "1",
                    reason="MMKD_SKIP_COMPILE_TEST=1")
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_blocks_match_eager(device):
    torch.manual_seed(0)
    eager = Block(48, 4).to(device).train()
    compiled = copy.deepcopy(eager)
    x = torch.randn(2, 10, 48, device=device)
    start = time.perf_counter()
    assert compile_blocks(torch.nn.Sequential(compiled)) == 1
    xc = x.clone().requires_grad_(True)
    try:
        out_c, maps_c = compiled(xc, True)
    except Exception as e:  # a CPU without a C++ compiler; on CUDA --compile has to work
        if device != "cpu":
            raise
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    if device == "cpu" and time.perf_counter() - start > 60:
        pytest.skip("torch.compile took more than 60 s on this machine")
    (out_c.sum() + maps_c.logits.square().sum()).backward()
    xe = x.clone().requires_grad_(True)
    out_e, maps_e = eager(xe, True)
    (out_e.sum() + maps_e.logits.square().sum()).backward()
    tol(out_c, out_e)
    tol(maps_c.logits, maps_e.logits)
    tol(xc.grad, xe.grad)
    for (n, p), q in zip(compiled.named_parameters(), eager.parameters()):
        tol(p.grad, q.grad, atol=1e-5, rtol=1e-3)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # keys unchanged


# ---------------------------------------------------------------- data path

def test_scaled_size_follows_torchvision_rounding():
    frames = torch.zeros(1, 3, 1080, 1920, dtype=torch.uint8)
    for short in (224, 340, 97):
        h, w = TF.resize(frames, [short], antialias=True).shape[-2:]
        assert video_io.scaled_size(1920, 1080, short) == (w, h)
        assert video_io.scaled_size(1080, 1920, short) == (h, w)
    assert video_io.scaled_size(340, 256, 340) == (340, 256)  # never upscaled


@pytest.mark.parametrize("name", ["arm_wrestling_demo.mp4",
                                  "ntu_rgbd_S001C001P001R001A001_rgb.avi"])
def test_decoding_at_reduced_size_is_close_to_resizing_full_frames(name):
    """decord (mp4) and PyAV (avi) scale while decoding; the result is the torchvision
    resize of the full frames up to the scaler's filter (bicubic / bilinear)."""
    path = os.path.join(VIDEOS, name)
    idx = lambda n, fps: [0, 9, 9]  # noqa: E731
    full = video_io.load_frames(path, idx)
    short = 200
    small = video_io.load_frames(path, idx, short_side=short)
    h, w = full.shape[1:3]
    assert small.shape == (3,) + video_io.scaled_size(w, h, short)[::-1] + (3,)
    ref = TF.resize(torch.from_numpy(full).permute(0, 3, 1, 2), [short], antialias=True)
    diff = (torch.from_numpy(small).permute(0, 3, 1, 2).float() - ref.float()).abs()
    assert diff.mean() < 3.0  # grey levels
    np.testing.assert_array_equal(small[1], small[2])
    # a size larger than the video: decoded as it is, bit for bit
    np.testing.assert_array_equal(video_io.load_frames(path, idx, short_side=max(h, w)), full)


def test_pretrain_items_with_scaled_decoding_match_full_size(tmp_path):
    """At 224 px the crops need a short side of 340: the 1080p clip is decoded at 604x340 and
    gives nearly the same clip (crop boxes round differently by a pixel or two); the 256p clip
    is not scaled and gives the same clip bit for bit."""
    anno = tmp_path / "a.csv"
    anno.write_text("ntu_rgbd_S001C001P001R001A001_rgb.avi 0\narm_wrestling_demo.mp4 0\n")
    gen = TubeMaskingGenerator((2, 14, 14), 0.9)
    fast, slow = (VideoMAEPretrainDataset(str(anno), VIDEOS, 4, 4, 224, gen, scale_on_decode=flag)
                  for flag in (True, False))
    assert fast.transform.decode_short_side == 340  # ceil(224 / 0.66)
    for i in range(2):
        a, b = fast[i], slow[i]  # the same epoch and index: the same draws
        assert torch.equal(a["bool_masked_pos"], b["bool_masked_pos"])
        assert a["video"].shape == b["video"].shape == (3, 4, 224, 224)
        diff = (a["video"] - b["video"]).abs().mean()
        assert diff < 0.1 if i == 0 else diff == 0  # normalised units: 0.1 ~ 6 grey levels


def test_test_views_reuse_one_decode_per_temporal_clip(tmp_path, monkeypatch):
    anno = tmp_path / "t.csv"
    anno.write_text("arm_wrestling_demo.mp4 0\nkinetics_clip_test.avi 1\n")
    kw = dict(nb_classes=2, num_frames=4, sampling_rate=2, input_size=64, short_side_size=64,
              test_num_segment=2, test_num_crop=3, scale_on_decode=False)
    reuse = VideoClsDataset(str(anno), VIDEOS, "test", reuse_decode=True, **kw)
    plain = VideoClsDataset(str(anno), VIDEOS, "test", reuse_decode=False, **kw)
    for ds in (reuse, plain):
        ds.guard.verify = False
    calls = []
    real = video_io.load_frames
    import datasets.guard as guard
    monkeypatch.setattr(guard, "load_frames", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    items = [reuse[i] for i in range(len(reuse))]
    assert len(calls) == 2 * 2  # videos x temporal clips, not x 3 crops
    calls.clear()
    ref = [plain[i] for i in range(len(plain))]
    assert len(calls) == 12
    for a, b in zip(items, ref):
        assert (a["view"], a["index"], a["video_id"]) == (b["view"], b["index"], b["video_id"])
        assert torch.equal(a["video"], b["video"])
    # out of order (e.g. a shuffled sampler): still the right frames
    assert torch.equal(reuse[7]["video"], ref[7]["video"])
    assert torch.equal(reuse[1]["video"], ref[1]["video"])


def test_pretraining_flags_for_compile_and_fused_adamw():
    import run_mmkd_pretraining as rmp
    p = rmp.get_args_parser()
    args = p.parse_args(["--data_path", "x.csv"])
    assert args.compile is False and args.fused_opt is True
    args = p.parse_args(["--data_path", "x.csv", "--compile", "--no-fused_opt"])
    assert args.compile is True and args.fused_opt is False
