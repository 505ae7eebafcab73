"""Our encoder, classifier and pre-training model against Hugging Face ``transformers``'
VideoMAE (an independent implementation) with converted weights, both directions, plus the
checkpoint layouts ``checkpoint.py`` reads.

Max abs differences measured (fp32, CPU, printed by ``pytest -s``), tiny and ViT-S sizes:
encoder 0 (bit-identical); classifier logits <= 3e-6 (transformers' fc_norm eps is fixed at
1e-5, ours 1e-6) and <= 2e-7 with equal eps; pixel predictions <= 1.3e-5 (decoder norm eps,
same cause) and 0 with equal eps; hub eps 1e-12 vs ours 1e-6: 2.4e-7; our classifier exported
and reloaded with ``from_pretrained``: 6e-6 (3e-7 with equal fc_norm eps).
"""
import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (VideoMAEConfig, VideoMAEForPreTraining,  # noqa: E402
                          VideoMAEForVideoClassification, VideoMAEModel)

from checkpoint import save_checkpoint  # noqa: E402
from weights import checkpoint_kind, hf_to_ours, load_pretrained, load_teacher, ours_to_hf  # noqa: E402
from hf_interop import encoder_kwargs_from_hf, export_to_hf, from_hf, hf_config, to_hf  # noqa: E402
from losses import pixel_targets  # noqa: E402
from masking_generator import TubeMaskingGenerator  # noqa: E402
from model_factory import create_classifier, create_student, create_teacher  # noqa: E402
from modeling_finetune import VideoViTClassifier  # noqa: E402
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

# tiny, and ViT-S width/depth/heads on a small clip (64 px, 4 frames: 2 x 4 x 4 = 32 tokens)
SIZES = {
    "tiny": dict(image_size=32, num_frames=4, hidden_size=48, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=192, decoder_hidden_size=32,
                 decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
                 decoder_intermediate_size=128),
    "vit_s": dict(image_size=64, num_frames=4, hidden_size=384, num_hidden_layers=12,
                  num_attention_heads=6, intermediate_size=1536, decoder_hidden_size=192,
                  decoder_num_hidden_layers=4, decoder_num_attention_heads=3,
                  decoder_intermediate_size=768),
}
TOL = 1e-4


def hf_model(cls, size, seed=0, **overrides):
    """A transformers model with random weights; biases and norms perturbed too, so that a
    dropped q/v bias or LayerNorm affine would show in the outputs."""
    torch.manual_seed(seed)
    config = VideoMAEConfig(**{**SIZES[size], "layer_norm_eps": 1e-6, "num_labels": 7, **overrides})
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def clip(size, b=2, seed=1):
    """``(ours [B, 3, T, H, W], transformers' pixel_values [B, T, 3, H, W])``."""
    g = torch.Generator().manual_seed(seed)
    s = SIZES[size]
    x = torch.randn(b, 3, s["num_frames"], s["image_size"], s["image_size"], generator=g)
    return x, x.permute(0, 2, 1, 3, 4)


def tube_mask(grid, ratio, b=2):
    gen = TubeMaskingGenerator(grid, ratio, seed=0)
    return torch.stack([torch.from_numpy(gen()) for _ in range(b)])


def max_diff(a, b, what):
    d = (a - b).abs().max().item()
    print(f"{what}: max abs diff {d:.2e} (output scale {b.abs().max().item():.2f})")
    return d


def test_encoder_matches_videomae_model(size="tiny"):
    """With and without a mask; ViT-S sizes are covered by the classifier test (unmasked)
    and the pre-training test (masked)."""
    hf = hf_model(VideoMAEModel, size, use_mean_pooling=False)  # with its final layernorm
    ours, _ = from_hf(hf)
    x, px = clip(size)
    mask = tube_mask(ours.patch_embed.grid_size, 0.5)
    with torch.no_grad():
        for m in (None, mask):
            ref = hf(px, bool_masked_pos=m).last_hidden_state
            got = ours.norm(ours.forward_features(x, m).tokens)
            assert max_diff(got, ref, f"{size} encoder mask={m is not None}") < TOL


@pytest.mark.parametrize("size", sorted(SIZES))
def test_classifier_matches_videomae_classification(size):
    hf = hf_model(VideoMAEForVideoClassification, size)
    ours, _ = from_hf(hf)
    assert ours.fc_norm.eps == 1e-6 and hf.fc_norm.eps == 1e-5  # transformers' fixed fc_norm eps
    x, px = clip(size)
    with torch.no_grad():
        tokens = hf.videomae(px).last_hidden_state  # mean pooling: no final layernorm
        assert max_diff(ours.forward_features(x).tokens, tokens, f"{size} encoder") < TOL
        ref = hf(px).logits
        assert max_diff(ours(x), ref, f"{size} classifier") < TOL
        ours.fc_norm.eps = hf.fc_norm.eps
        assert max_diff(ours(x), ref, f"{size} classifier, same fc_norm eps") < 1e-5


def test_hub_default_eps_warns_and_match_eps_is_exact():
    hf = hf_model(VideoMAEModel, "tiny", layer_norm_eps=1e-12)  # the hub configs' value
    with pytest.warns(UserWarning, match="layer_norm_eps=1e-12"):
        ours, _ = from_hf(hf)
    x, px = clip("tiny")
    with torch.no_grad():
        ref = hf(px).last_hidden_state
        assert max_diff(ours.forward_features(x).tokens, ref, "eps 1e-6 vs 1e-12") < TOL
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exact, _ = from_hf(hf, match_eps=True)
        assert exact.blocks[0].norm1.eps == 1e-12
        assert max_diff(exact.forward_features(x).tokens, ref, "matched eps") < 1e-5


@pytest.mark.parametrize("size", sorted(SIZES))
def test_pretraining_pixels_match_videomae_for_pretraining(size):
    """Same mask -> same pixel predictions (transformers' decoder norm has eps 1e-5; ours is
    set to it for the exact check) and the same normalised-pixel loss."""
    hf = hf_model(VideoMAEForPreTraining, size, use_mean_pooling=False)
    ours, config = from_hf(hf)
    assert config.norm_pix_loss and ours.encoder.norm.weight.shape == (SIZES[size]["hidden_size"],)
    x, px = clip(size)
    mask = tube_mask(ours.patch_embed.grid_size, 0.75)
    with torch.no_grad():
        out = hf(px, bool_masked_pos=mask)
        pixels = ours(x, mask).pixels
        assert max_diff(pixels, out.logits, f"{size} pixels") < TOL
        ours.decoder.norm.eps = hf.decoder.norm.eps
        pixels = ours(x, mask).pixels
        assert max_diff(pixels, out.logits, f"{size} pixels, same decoder eps") < 1e-5
        pe = ours.patch_embed
        target = pixel_targets(x, mask, pe.tubelet_size, pe.patch_size, IMAGENET_DEFAULT_MEAN,
                               IMAGENET_DEFAULT_STD, normalize=True)
        loss = torch.nn.functional.mse_loss(pixels, target)
        assert abs(loss.item() - out.loss.item()) < 1e-4 * max(1.0, out.loss.item())


def test_export_classifier_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = create_classifier("vit_small_patch16_224", num_classes=5, img_size=64, num_frames=4).eval()
    with torch.no_grad():  # a head and biases of trained-model size, not the 1e-3 init
        ours.head.weight.normal_(0, 0.05)
        for name, p in ours.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    labels = {i: f"class_{i}" for i in range(5)}
    export_to_hf(ours, str(tmp_path), id2label=labels)
    hf = VideoMAEForVideoClassification.from_pretrained(str(tmp_path)).eval()
    assert hf.config.layer_norm_eps == 1e-6 and hf.config.use_mean_pooling
    assert hf.config.id2label[3] == "class_3" and hf.config.num_labels == 5
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        ref = ours(x)
        assert max_diff(hf(x.permute(0, 2, 1, 3, 4)).logits, ref, "exported classifier") < TOL
        hf.fc_norm.eps = 1e-6
        assert max_diff(hf(x.permute(0, 2, 1, 3, 4)).logits, ref, "exported, fc_norm eps 1e-6") < 1e-5
    back, _ = from_hf(str(tmp_path))  # the directory, without a transformers model
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_key_mapping_is_invertible_and_splits_qkv():
    hf = hf_model(VideoMAEForPreTraining, "tiny", use_mean_pooling=False)
    state = hf.state_dict()
    ours = hf_to_ours(state)
    d = SIZES["tiny"]["hidden_size"]
    q = state["videomae.encoder.layer.1.attention.attention.query.weight"]
    v = state["videomae.encoder.layer.1.attention.attention.value.weight"]
    assert torch.equal(ours["blocks.1.attn.qkv.weight"][:d], q)
    assert torch.equal(ours["blocks.1.attn.qkv.weight"][2 * d:], v)
    assert torch.equal(ours["blocks.1.attn.v_bias"],
                       state["videomae.encoder.layer.1.attention.attention.value.bias"])
    assert not any("k_bias" in k or "key" in k for k in ours)
    back = ours_to_hf(ours)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    # older hub files spell the biases q_bias / v_bias
    legacy = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): t for k, t in state.items()}
    assert torch.equal(hf_to_ours(legacy)["blocks.0.attn.q_bias"], ours["blocks.0.attn.q_bias"])
    with pytest.raises(ValueError, match="videomae.pooler.dense.weight"):
        hf_to_ours({**state, "videomae.pooler.dense.weight": torch.zeros(1)})


def test_missing_q_bias_is_named():
    ours = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32, num_frames=4)
    state = ours.state_dict()
    del state["blocks.0.attn.q_bias"]
    fresh = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32, num_frames=4)
    with pytest.raises(ValueError, match=r"missing \(1\): blocks\.0\.attn\.q_bias"):
        load_pretrained(fresh, {"model": state}, "no_q_bias.pth")
    # the same trap in a transformers file: value.bias of block 1 missing
    hf = hf_model(VideoMAEForVideoClassification, "tiny")
    hf_state = {k: v for k, v in hf.state_dict().items()
                if k != "videomae.encoder.layer.1.attention.attention.value.bias"}
    target = VideoViTClassifier(num_classes=7, **encoder_kwargs_from_hf(hf.config))
    with pytest.raises(ValueError, match=r"missing \(1\): blocks\.1\.attn\.v_bias$"):
        load_pretrained(target, hf_state, "hf", strict=True)


def test_checkpoint_kind():
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, img_size=32, num_frames=4)
    clf = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32, num_frames=4)
    enc = create_teacher("pretrain_videomae_tiny_patch16_224", img_size=32, num_frames=4).encoder
    assert checkpoint_kind({"model": student.state_dict()}) == "pretrain"
    assert checkpoint_kind({"module": {f"module.{k}": v for k, v in student.state_dict().items()},
                            "global_steps": 3}) == "pretrain"  # DeepSpeed + DDP prefixes
    assert checkpoint_kind({"model": clf.state_dict(), "epoch": 1}) == "finetune"
    assert checkpoint_kind(enc.state_dict()) == "encoder"
    for cls in (VideoMAEModel, VideoMAEForPreTraining, VideoMAEForVideoClassification):
        assert checkpoint_kind(hf_model(cls, "tiny").state_dict()) == "hf"
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        checkpoint_kind({"fc.weight": torch.zeros(2)})


def test_videomae_layouts_load_into_each_model(tmp_path):
    """A VideoMAE pre-training file ({'model': encoder.* + decoder}) -> classifier and teacher;
    a fine-tuned file with another class count -> its head is dropped; a transformers
    directory -> teacher (``--path_t``)."""
    geom = dict(img_size=32, num_frames=4)
    torch.manual_seed(0)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, **geom)
    path = str(tmp_path / "videomae_pretrain.pth")
    save_checkpoint(path, {"model": student.state_dict(), "epoch": 799})
    clf = create_classifier("vit_tiny_patch16_224", num_classes=3, **geom)
    missing, unexpected = load_pretrained(clf, path, path)
    assert set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert "encoder.norm.weight" not in unexpected and "norm.weight" in unexpected
    assert any(k.startswith("decoder.") for k in unexpected)
    assert torch.equal(clf.blocks[0].attn.q_bias, student.encoder.blocks[0].attn.q_bias)
    teacher = create_teacher("pretrain_videomae_tiny_patch16_224", **geom)
    load_teacher(teacher, path)
    assert torch.equal(teacher.encoder.blocks[-1].mlp.fc2.weight, student.encoder.blocks[-1].mlp.fc2.weight)

    other = create_classifier("vit_tiny_patch16_224", num_classes=10, **geom)
    missing, _ = load_pretrained(other, {"model": clf.state_dict()}, "k400_finetuned")
    assert set(missing) == {"head.weight", "head.bias"}
    state = {k: v[:, :100] if k == "blocks.0.mlp.fc1.weight" else v for k, v in clf.state_dict().items()}
    with pytest.raises(ValueError, match=r"wrong shape.*blocks\.0\.mlp\.fc1\.weight"):
        load_pretrained(other, state, "cut")

    # a transformers directory as --path_t: ViT-Ti sizes, mean pooling (no final norm)
    tiny_arch = dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                     intermediate_size=768)
    hf = hf_model(VideoMAEModel, "tiny", **tiny_arch)
    export_dir = str(tmp_path / "hf")
    hf.save_pretrained(export_dir)
    t2 = create_teacher("pretrain_videomae_tiny_patch16_224", **geom)
    load_teacher(t2, export_dir)
    x, px = clip("tiny")
    mask = tube_mask(t2.patch_embed.grid_size, 0.5)
    with torch.no_grad():
        ref = hf(px, bool_masked_pos=mask).last_hidden_state
        assert max_diff(t2(x, mask).features, ref, "teacher from transformers dir") < TOL


def test_learned_position_table_is_resized_and_kept():
    src = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32, num_frames=4)
    d = src.embed_dim
    # a learned table varying only over time: slice 0 -> 0, slice 1 -> 1, on a (2, 2, 2) grid
    table = torch.arange(2.0).repeat_interleave(4).view(1, 8, 1).expand(1, 8, d).clone()
    state = dict(src.state_dict(), pos_embed=table)
    dst = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=64, num_frames=8)
    with pytest.raises(ValueError, match="src_grid"):
        load_pretrained(dst, state, "learned")
    missing, _ = load_pretrained(dst, state, "learned", src_grid=(2, 2, 2))
    assert missing == []  # the table loads like any other key
    got = dst.pos_embed.view(4, 4, 4, d)  # trilinear, align_corners=False: -0.25, .25, .75, 1.25
    want = torch.tensor([0.0, 0.25, 0.75, 1.0]).view(4, 1, 1, 1).expand(4, 4, 4, d)
    torch.testing.assert_close(got, want)
    assert "pos_embed" in dst.state_dict()  # saved with the model, not silently dropped
    again = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=64, num_frames=8)
    load_pretrained(again, dst.state_dict(), "resaved", strict=True)
    assert torch.equal(again.pos_embed, dst.pos_embed)
    # the fixed sinusoid table (e.g. saved by older code) is dropped: the model keeps its own
    fixed = create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32, num_frames=4)
    before = fixed.pos_embed.clone()
    load_pretrained(fixed, dict(src.state_dict(), pos_embed=src.pos_embed), "fixed")
    assert torch.equal(fixed.pos_embed, before) and "pos_embed" not in fixed.state_dict()


def test_convert_cli_round_trip(tmp_path, capsys):
    from tools.convert_checkpoint import main
    torch.manual_seed(0)
    clf = create_classifier("vit_tiny_patch16_224", num_classes=4, img_size=32, num_frames=4).eval()
    ckpt = str(tmp_path / "ft.pth")
    save_checkpoint(ckpt, {"model": clf.state_dict(), "epoch": 0})
    main(["inspect", ckpt])
    assert '"kind": "finetune"' in capsys.readouterr().out
    hf_dir = str(tmp_path / "hf")
    main(["to-hf", "--checkpoint", ckpt, "--model", "vit_tiny_patch16_224", "--nb_classes", "4",
          "--num_frames", "4", "--input_size", "32", "--output_dir", hf_dir])
    assert os.path.isfile(os.path.join(hf_dir, "config.json"))
    assert hf_config(clf).hidden_size == VideoMAEConfig.from_pretrained(hf_dir).hidden_size == 192
    out = str(tmp_path / "back.pth")
    main(["from-hf", "--hf_dir", hf_dir, "--output", out])
    back = torch.load(out, weights_only=True)["model"]
    assert back.keys() == clf.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in clf.state_dict().items())
    with pytest.raises(ValueError, match=r"missing \(2\): head\.weight, head\.bias"):
        main(["to-hf", "--checkpoint", _without_head(ckpt, tmp_path), "--model",
              "vit_tiny_patch16_224", "--nb_classes", "4", "--num_frames", "4",
              "--input_size", "32", "--output_dir", hf_dir])


def _without_head(path, tmp_path):
    state = torch.load(path, weights_only=True)["model"]
    out = str(tmp_path / "nohead.pth")
    save_checkpoint(out, {"model": {k: v for k, v in state.items() if not k.startswith("head.")}})
    return out


def test_export_student_with_decoder_and_teacher_encoder(tmp_path):
    """A distilled student with a pixel decoder -> VideoMAEForPreTraining (its projector left
    out); a teacher's encoder (no final norm) -> VideoMAEModel with mean pooling."""
    torch.manual_seed(0)
    geom = dict(img_size=32, num_frames=4)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=2,
                             teacher_dim=384, num_k=2, **geom).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    px = x.permute(0, 2, 1, 3, 4)
    mask = tube_mask(student.patch_embed.grid_size, 0.5)
    export_to_hf(student, str(tmp_path))
    hf = VideoMAEForPreTraining.from_pretrained(str(tmp_path)).eval()
    assert not hf.config.use_mean_pooling  # the student's final norm is videomae.layernorm
    with torch.no_grad():
        ref = student(x, mask).pixels
        assert max_diff(hf(px, bool_masked_pos=mask).logits, ref, "exported student") < TOL
    teacher = create_teacher("pretrain_videomae_tiny_patch16_224", **geom)
    hf = to_hf(teacher.encoder)
    assert type(hf).__name__ == "VideoMAEModel" and hf.config.use_mean_pooling
    with torch.no_grad():
        ref = teacher.encoder.forward_features(x).tokens
        assert max_diff(hf(px).last_hidden_state, ref, "exported teacher encoder") < TOL
