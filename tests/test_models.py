import pytest
import torch
from timm.optim import create_optimizer_v2

from losses import LossWeights, mmkd_loss, pixel_targets
from masking_generator import TubeMaskingGenerator
from model_factory import ARCHS, CLASSIFIER_MODELS, PRETRAIN_MODELS, create_classifier, create_student, create_teacher
from modeling_encoder import Attention
from pos_embed import sinusoid_table

GEOM = dict(img_size=32, num_frames=4)


def masks(model, ratio=0.5, b=2, seed=0):
    gen = TubeMaskingGenerator(model.patch_embed.grid_size, ratio, seed=seed)
    return torch.stack([torch.from_numpy(gen()) for _ in range(b)])


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(0)
    attn = Attention(48, num_heads=4).eval()
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 10, 48)
    fast = attn(x)
    slow, maps = attn(x, return_maps=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert maps.logits.shape == (2, 4, 10, 10) and maps.v.shape == (2, 4, 10, 12)
    # logits are pre-softmax q.k*scale, with the q-bias but no k-bias
    q = x @ attn.qkv.weight[:48].T + attn.q_bias
    k = x @ attn.qkv.weight[48:96].T
    ref = (q.view(2, 10, 4, 12).transpose(1, 2) * 12 ** -0.5) @ k.view(2, 10, 4, 12).permute(0, 2, 3, 1)
    torch.testing.assert_close(maps.logits, ref, atol=1e-5, rtol=1e-5)
    # select: the maps among a subset of tokens, formed without the full matrix
    idx = torch.tensor([[0, 3, 4, 9], [1, 2, 5, 8]])
    sub = maps.select(idx)
    want = torch.stack([maps.logits[i][:, idx[i]][:, :, idx[i]] for i in range(2)])
    torch.testing.assert_close(sub.logits, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sub.v, torch.stack([maps.v[i][:, idx[i]] for i in range(2)]))


def test_sinusoid_table_values():
    t = sinusoid_table(5, 6)[0]
    assert t.shape == (5, 6)
    assert abs(t[3, 0].item() - torch.sin(torch.tensor(3.0)).item()) < 1e-6
    assert abs(t[3, 3].item() - torch.cos(torch.tensor(3 / 10000 ** (2 / 6))).item()) < 1e-6


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_every_factory_name_forward_backward(size):
    s = create_student(f"pretrain_videomae_{size}_patch16_224", decoder_depth=1, teacher_dim=192,
                       num_k=2, **GEOM)
    m = masks(s)
    out = s(torch.randn(2, 3, 4, 32, 32), m)
    d = s.encoder.embed_dim  # raw outputs in the student's width; the loss projects them
    assert out.tokens.shape == (2, 4, d) and out.attn_local.shape == (2, 4, 2, d)
    assert out.pixels.shape == (2, 4, 3 * 2 * 16 * 16)
    (out.tokens.sum() + out.pixels.sum() + out.attn_global.sum()).backward()
    c = create_classifier(f"vit_{size}_patch16_224", num_classes=7, **GEOM)
    c(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert set(PRETRAIN_MODELS) == {f"pretrain_videomae_{s}_patch16_224" for s in ARCHS}
    assert "vit_huge_patch16_224" in CLASSIFIER_MODELS


def test_large_and_huge_shapes_build():
    # built on the meta device (no memory, no init cost) to check the table
    for name, (d, depth, heads) in {"large": (1024, 24, 16), "huge": (1280, 32, 16)}.items():
        with torch.device("meta"):
            c = create_classifier(f"vit_{name}_patch16_224", num_classes=2)
        assert c.embed_dim == d and len(c.blocks) == depth and c.num_heads == heads
        assert c.blocks[0].attn.head_dim == d // heads


def test_unknown_model_and_bad_geometry():
    with pytest.raises(ValueError, match="--model"):
        create_student("pretrain_videomae_gigantic_patch16_224")
    with pytest.raises(ValueError, match="--num_frames"):
        create_student("pretrain_videomae_tiny_patch16_224", num_frames=5)
    with pytest.raises(ValueError, match="--input_size"):
        create_student("pretrain_videomae_tiny_patch16_224", img_size=40)


def test_videomae_state_dict_keys():
    s = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, **GEOM)
    keys = set(s.state_dict())
    for k in ("encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.q_bias",
              "encoder.blocks.0.attn.v_bias", "encoder.norm.weight", "encoder_to_decoder.weight",
              "mask_token", "decoder.head.weight"):
        assert k in keys
    assert not any("pos_embed" in k or "k_bias" in k for k in keys)
    c = create_classifier("vit_tiny_patch16_224", num_classes=3, **GEOM)
    assert {"patch_embed.proj.weight", "fc_norm.weight", "head.weight"} <= set(c.state_dict())
    assert not any(k.startswith("norm.") for k in c.state_dict())


def test_teacher_frozen_student_and_projector_move():
    """The student's projectors, the teacher-side Linear included, get gradients, are in the
    optimizer and move; the teacher's encoder gets none and stays unchanged."""
    torch.manual_seed(0)
    t = create_teacher("pretrain_videomae_small_patch16_224", **GEOM)
    s = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, teacher_dim=384,
                       num_k=2, teacher_proj=True, **GEOM)
    s.train()
    t.train()  # must stay in eval
    assert not t.training and not t.encoder.training
    before_t = {k: v.clone() for k, v in t.state_dict().items()}
    before_s = {k: v.clone() for k, v in s.state_dict().items()}
    opt = create_optimizer_v2(s, opt="adamw", lr=1e-3, weight_decay=0.05)
    assert not {id(p) for p in t.parameters()} & {id(p) for g in opt.param_groups for p in g["params"]}
    x, m = torch.randn(2, 3, 4, 32, 32), masks(s)
    w = LossWeights.from_args("hybrid", 0.2, 0.1, 1, 3, 1, 1.0)
    t_out = t(x, m, w.views(), 2, 1.0)
    assert not t_out.features.requires_grad
    loss, _ = mmkd_loss(s(x, m), t_out, w, pixel_targets(x, m, 2, 16, (0.5,) * 3, (0.2,) * 3), num_f=3)
    loss.backward()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for n, p in s.projector.attn_t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and id(p) in in_opt, n
    opt.step()
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert all(torch.equal(v, before_t[k]) for k, v in t.state_dict().items())
    after = s.state_dict()
    for prefix in ("encoder.blocks.11.", "projector.feat.", "projector.attn.global",
                   "projector.attn.local", "projector.attn_t.global", "projector.attn_t.local",
                   "decoder."):
        assert any(not torch.equal(after[k], before_s[k]) for k in after if k.startswith(prefix)), prefix


def test_teacher_sees_all_tokens_gathers_visible_positions():
    torch.manual_seed(0)
    t_vis = create_teacher("pretrain_videomae_tiny_patch16_224", **GEOM)
    t_all = create_teacher("pretrain_videomae_tiny_patch16_224", sees_all_tokens=True, **GEOM)
    t_all.load_state_dict(t_vis.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    m = masks(t_vis, ratio=0.5)
    full = t_all.encoder.forward_features(x, None, maps_from=(-1,))
    out = t_all(x, m, ("global",), 2, 1.0)
    vis = ~m
    torch.testing.assert_close(out.features, full.tokens[vis].reshape(2, -1, 192))
    # a mask of nothing hidden: both teachers see the same tokens and must agree exactly
    none = torch.zeros_like(m)
    a, b = t_all(x, none, ("global", "local"), 2, 1.0), t_vis(x, none, ("global", "local"), 2, 1.0)
    torch.testing.assert_close(a.attn_global, b.attn_global)
    torch.testing.assert_close(a.attn_local, b.attn_local)
    # visible keys only: logits gathered on rows and columns
    lg = full.maps[11].logits
    idx = vis[0].nonzero()[:, 0]
    sub = lg[0][:, idx][:, :, idx]
    from losses import topk_attention_global
    v = full.maps[11].v[0][:, idx]
    torch.testing.assert_close(out.attn_global[0], topk_attention_global(sub[None], v[None], 2)[0])


def _xavier(w):
    """xavier_uniform_: every entry within +-sqrt(6 / (fan_in + fan_out)), std bound / sqrt(3)."""
    bound = (6 / sum(w.shape)) ** 0.5
    return w.abs().max() <= bound and abs(w.std().item() / (bound / 3 ** 0.5) - 1) < 0.1


def _torch_default(layer):
    """nn.Linear / nn.Conv3d default: kaiming-uniform weights and biases within 1/sqrt(fan_in),
    so the bias is not zero and the weights are not xavier's."""
    fan_in = layer.weight[0].numel()
    bound = fan_in ** -0.5
    return (layer.weight.abs().max() <= bound and layer.bias is not None
            and layer.bias.abs().max() <= bound and layer.bias.abs().sum() > 0)


def test_initialisation_follows_the_reference_code_bases():
    """VideoMAE's pre-training init for student (encoder, decoder) and teacher; PyTorch's
    default for the tubelet Conv3d, encoder_to_decoder and the MMKD projectors; VideoMAE's
    fine-tuning init (truncated normal 0.02, head x init_scale) for the classifier."""
    torch.manual_seed(0)
    s = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, teacher_dim=384,
                       num_k=2, teacher_proj=True, **GEOM)
    t = create_teacher("pretrain_videomae_tiny_patch16_224", **GEOM)
    for name, enc in (("student", s.encoder), ("decoder", s.decoder), ("teacher", t.encoder)):
        linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(_xavier(m.weight) for m in linears), name
        assert all(m.bias is None or not m.bias.any() for m in linears), name
        norms = [m for m in enc.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert all(m.weight.eq(1).all() and not m.bias.any() for m in norms), name
    assert _torch_default(s.encoder.patch_embed.proj) and _torch_default(t.encoder.patch_embed.proj)
    e2d = s.encoder_to_decoder.weight  # no bias; PyTorch's kaiming-uniform, not xavier
    assert e2d.abs().max() <= e2d.shape[1] ** -0.5 and not _xavier(e2d)
    assert s.mask_token.abs().max() <= 0.02 and s.mask_token.std() > 0.005
    p = s.projector
    for layer in (p.feat.fc1, p.feat.fc2, *p.attn.values(), *p.attn_t.values()):
        assert _torch_default(layer)
    c = create_classifier("vit_tiny_patch16_224", num_classes=10, init_scale=0.5, **GEOM)
    qkv = c.blocks[0].attn.qkv.weight
    assert abs(qkv.std().item() / 0.02 - 1) < 0.05 and not c.blocks[0].mlp.fc1.bias.any()
    assert abs(c.head.weight.std().item() / 0.01 - 1) < 0.1 and not c.head.bias.any()
    assert _torch_default(c.patch_embed.proj)


def test_activation_checkpointing_matches_and_covers_the_decoders():
    """``--use_checkpoint`` recomputes the encoder's blocks (its MMKD outputs: tokens and
    attention views) and the pixel and MVD feature decoders' blocks too (as VideoMAE's and
    MVD's decoders do), with the same outputs and gradients."""
    torch.manual_seed(0)
    s = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, teacher_dim=192,
                       num_k=2, feature_dims={"img_feat": 64, "vid_feat": 48},
                       feat_decoder_depth=1, use_checkpoint=True, **GEOM)
    decoders = [s.decoder, s.decoder_img, s.decoder_vid]
    assert s.encoder.use_checkpoint and all(d.use_checkpoint for d in decoders)
    calls = []
    for d in decoders:
        # a pre-hook: the recomputation stops once it has what the backward needs
        d.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    x, m = torch.randn(2, 3, 4, 32, 32), masks(s)

    def run():
        s.zero_grad()
        calls.clear()
        out = s(x, m)
        (out.tokens.sum() + out.attn_global.sum() + out.pixels.sum() + out.img_feat.sum()
         + out.vid_feat.sum()).backward()
        return out, {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}

    out_cp, g_cp = run()
    assert len(calls) == 6  # each decoder block ran again in the backward
    s.set_grad_checkpointing(False)
    assert not s.encoder.use_checkpoint and not any(d.use_checkpoint for d in decoders)
    out, g = run()
    assert len(calls) == 3
    torch.testing.assert_close(out_cp.tokens, out.tokens)
    torch.testing.assert_close(out_cp.pixels, out.pixels)
    assert g_cp.keys() == g.keys() and any(k.startswith("decoder_img.") for k in g)
    for k in g:
        torch.testing.assert_close(g_cp[k], g[k], atol=1e-5, rtol=1e-4)
    s.set_grad_checkpointing(True)  # and back on, as --use_checkpoint after building does
    assert s.encoder.use_checkpoint and all(d.use_checkpoint for d in decoders)
