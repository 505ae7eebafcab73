"""TPN and its backbones (modeling_tpn.py, modeling_resnet3d.py) and their path through the fine-tuning script:
published model sizes, pyramid shapes, I3D inflation, the temporal shift, fully
convolutional and flipped testing, the decisionforce/TPN and mmaction2 checkpoint layouts,
the SGD / multi-step recipe, Something-Something V1 frame folders and a short tpn_r50 run on
real clips."""
import argparse
import copy
import json
import os
import re

import numpy as np
import pytest
import torch
import torchvision

import run_class_finetuning as rcf
from checkpoint import save_checkpoint
from conftest import VIDEOS
from datasets import build_dataset, load_frames, tsn_sample_indices
from datasets.annotations import convert_ssv1
from engine_for_finetuning import classification_loss, multiview_test
from model_factory import CNN_MODELS, create_classifier
from modeling_resnet3d import TemporalShiftConv2d, temporal_shift
from modeling_tpn import (TPN, AuxOutput, ClsHead, adopt_tsm_shift, checkpoint_layout, create_cnn,
                          load_imagenet_init, tpn_rates)
from optim_factory import build_lr_scheduler, build_optimizer, scale_lrs
from tools.make_demo_splits import make_demo_splits
from weights import load_pretrained


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return create_cnn(name, **kwargs)


def randomise_norms_(model, seed=0):
    """Random BN weights, biases and statistics and fc biases (initialised to constants), so
    that every tensor of a freshly built model matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point() and t.ndim == 1:
                noise = torch.randn(t.shape, generator=g) * 0.2
                t.copy_(noise.abs() + 0.5 if k.endswith("running_var") else
                        noise + 1 if k.endswith(".weight") else noise)
    return model


# --------------------------------------------------------------------------------------------
# model sizes and shapes (meta tensors: nothing allocated or computed)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def meta_zoo():
    """The Kinetics-400 models on the meta device (shapes only)."""
    return {n: meta_model(n, num_classes=400)
            for n in ("tpn_r50", "tpn_r101", "slowonly_r50", "slowonly_r101")}


def test_parameter_counts_match_the_published_model_sizes(meta_zoo):
    """Published sizes: mmaction2's model-zoo metafiles (configs/recognition/tpn/metafile.yml:
    TPN slow-only R50 on Kinetics-400 "Parameters: 91498336", TPN TSM-R50 on SthV1 (174
    classes) "Parameters: 82445724"; configs/recognition/slowonly/metafile.yml: slow-only R50
    32.45M, R101 60.36M). No R101-TPN size is published; its neck and heads are those of
    R50-TPN, so it is slow-only R101 + (R50-TPN - slow-only R50) = 60.36M + 91.50M - 32.45M =
    119.41M, to the metafiles' rounding (+-0.01M)."""
    r50_tpn, r101_tpn, r50, r101 = (n_params(meta_zoo[n]) for n in (
        "tpn_r50", "tpn_r101", "slowonly_r50", "slowonly_r101"))
    assert r50_tpn == 91_498_336
    assert n_params(meta_model("tsm_r50_tpn", num_classes=174)) == 82_445_724
    assert round(r50 / 1e6, 2) == 32.45 and round(r101 / 1e6, 2) == 60.36
    assert abs(r101_tpn / 1e6 - (60.36 + 91.498336 - 32.45)) <= 0.01
    assert r101_tpn - r101 == r50_tpn - r50  # the neck does not depend on the depth
    # the backbone alone is torchvision's ResNet-50 plus the inflated kernels: res4/res5 conv1
    with torch.device("meta"):
        tv = torchvision.models.resnet50()
    conv1 = sum(b.conv1.weight.numel() for layer in (tv.layer3, tv.layer4) for b in layer)
    backbone = n_params(meta_zoo["slowonly_r50"].backbone)
    assert backbone == n_params(tv) - n_params(tv.fc) + 2 * conv1


@pytest.mark.parametrize("name", ["tpn_r50", "tpn_r101"])
def test_pyramid_shapes_for_8x8_16x4_32x2(name, meta_zoo):
    depth = 101 if name.endswith("101") else 50
    model = copy.deepcopy(meta_zoo[name]).eval()
    shapes = {}

    def record(model, keys):
        for key in keys:
            model.get_submodule(key).register_forward_hook(
                lambda m, i, out, key=key: shapes.__setitem__(key, out))
    for stage in ("layer3", "layer4"):  # res4, res5: the output of the stage's last block
        getattr(model.backbone, stage)[-1].register_forward_hook(
            lambda m, i, out, key=f"backbone.{stage}": shapes.__setitem__(key, out))
    for frames in (8, 16, 32):  # FxS 8x8, 16x4, 32x2: the sampling rate is the data's
        with torch.device("meta"):
            model.neck = TPN(400, tpn_rates(depth, frames)).eval()
            record(model, ("neck.spatial_modulation", "neck.temporal_modulation_ops.0",
                           "neck.temporal_modulation_ops.1", "neck.level_fusion_1",
                           "neck.level_fusion_2", "neck"))
            logits = model(torch.empty(2, 3, frames, 224, 224))
        t4 = 2 if depth == 101 else 1  # R101 keeps two time steps at res4 (rates T/2, T)
        assert tuple(shapes["backbone.layer3"].shape) == (2, 1024, frames, 14, 14)
        assert tuple(shapes["backbone.layer4"].shape) == (2, 2048, frames, 7, 7)
        assert [tuple(s.shape) for s in shapes["neck.spatial_modulation"]] == \
            [(2, 2048, frames, 7, 7)] * 2
        assert tuple(shapes["neck.temporal_modulation_ops.0"].shape) == (2, 1024, t4, 7, 7)
        assert tuple(shapes["neck.temporal_modulation_ops.1"].shape) == (2, 1024, 1, 7, 7)
        for key in ("neck.level_fusion_1", "neck.level_fusion_2"):
            assert tuple(shapes[key].shape) == (2, 2048, 1, 7, 7)
        out, aux = shapes["neck"]
        assert tuple(out.shape) == (2, 2048, 1, 7, 7) and aux is None  # no aux head in eval
        assert tuple(logits.shape) == (2, 400)
    model.train()
    with torch.device("meta"):
        out = model(torch.empty(2, 3, 32, 224, 224))
    assert isinstance(out, AuxOutput) and tuple(out.aux_logits.shape) == (2, 400)


# --------------------------------------------------------------------------------------------
# backbones: inflation and the temporal shift
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_r50(tmp_path_factory):
    """A torchvision ResNet-50 with random weights and BN statistics, saved as an ImageNet
    weight file would be (a plain state dict)."""
    torch.manual_seed(0)
    net = randomise_norms_(torchvision.models.resnet50()).eval()
    path = str(tmp_path_factory.mktemp("imagenet") / "resnet50.pth")
    torch.save(net.state_dict(), path)
    return net, path


@pytest.fixture(scope="module")
def slowonly_r50(imagenet_r50):
    """slow-only R50, 7 classes, its backbone initialised from ``imagenet_r50``'s file."""
    model = create_cnn("slowonly_r50", num_classes=7).eval()
    load_imagenet_init(model, imagenet_r50[1])
    return model


def test_inflation_static_clip_gives_the_2d_features(imagenet_r50, slowonly_r50, tmp_path):
    """I3D inflation: every temporal kernel inflated from the 2-D weights, so a static clip
    (one frame repeated) gives the 2-D network's features at every frame that the zero
    padding in time does not reach (res4 + res5 have 9 temporal convs: frames 9..T-10)."""
    net2d, _ = imagenet_r50
    model = slowonly_r50
    temporal = [n for n, m in model.backbone.named_modules()
                if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] == 3]
    assert temporal == [f"layer{s}.{b}.conv1" for s, n in ((3, 6), (4, 3)) for b in range(n)]
    assert model.backbone.conv1.kernel_size == (1, 7, 7)
    w2d, w3d = net2d.state_dict(), model.backbone.state_dict()
    for k, v in w3d.items():
        ref = w2d[k].unsqueeze(2) if v.ndim == 5 else w2d[k]
        torch.testing.assert_close(v.sum(2, keepdim=True) if v.ndim == 5 else v, ref)
    frame = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        res4, res5 = model.backbone(frame[:, :, None].expand(1, 3, 20, 16, 16).contiguous())
        x = net2d.maxpool(net2d.relu(net2d.bn1(net2d.conv1(frame))))
        ref4 = net2d.layer3(net2d.layer2(net2d.layer1(x)))
        ref5 = net2d.layer4(ref4)
    for feat, ref in ((res4, ref4), (res5, ref5)):
        for t in (9, 10):
            torch.testing.assert_close(feat[:, :, t], ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
        assert not torch.allclose(feat[:, :, 0], ref, rtol=1e-2)  # the edges do feel the padding
    broken = dict(w2d)
    del broken["layer4.2.conv3.weight"]
    torch.save(broken, str(tmp_path / "broken.pth"))
    with pytest.raises(ValueError, match=r"missing \(1\): layer4\.2\.conv3\.weight"):
        load_imagenet_init(model, str(tmp_path / "broken.pth"))


def test_temporal_shift_equals_a_loop_over_channels():
    n, t, c = 2, 5, 16
    x = torch.randn(n * t, c, 3, 4)
    out = temporal_shift(x, t)
    ref = torch.zeros_like(x).view(n, t, c, 3, 4)
    xv = x.view(n, t, c, 3, 4)
    for b in range(n):
        for f in range(t):
            for ch in range(c):
                if ch < c // 8:  # from the next frame
                    ref[b, f, ch] = xv[b, f + 1, ch] if f + 1 < t else 0
                elif ch < 2 * c // 8:  # from the previous frame
                    ref[b, f, ch] = xv[b, f - 1, ch] if f > 0 else 0
                else:
                    ref[b, f, ch] = xv[b, f, ch]
    assert torch.equal(out, ref.view(n * t, c, 3, 4))
    # in TSM ResNet-50: every block's conv1 shifts (and, in place, each stage's projection
    # shortcut); keys stay torchvision's
    model = meta_model("tsm_r50", num_classes=3, num_frames=8)
    for place, extra in (("residual", 0), ("inplace", 4)):
        model.backbone.set_shift_place(place)
        shifted = [n for n, m in model.backbone.named_modules()
                   if isinstance(m, TemporalShiftConv2d) and m.shift]
        assert len(shifted) == 16 + extra
        assert all(n.endswith((".conv1", ".downsample.0")) for n in shifted)
    tv_keys = set(torchvision.models.resnet50().state_dict()) - {"fc.weight", "fc.bias"}
    assert set(model.backbone.state_dict()) == tv_keys


def tpn_repo_tsm_backbone(backbone, clip, position):
    """decisionforce/TPN's TSM ResNet forward (its ``Bottleneck`` with ``tsm=True``), written
    here from its description with our module's weights: the shift by slicing into zeros,
    ``downsample(shifted)`` for ``tsm_position='inplace'``, ``downsample(x)`` for
    ``'residual'``; returns res4 and res5 as ``[B, C, T, h, w]``."""
    b, c, t, h, w = clip.shape

    def conv(m, x):  # the module's weights, applied without its (shifting) forward
        return torch.nn.functional.conv2d(x, m.weight, m.bias, m.stride, m.padding)

    def shift(x):
        nt, ch, hh, ww = x.shape
        x = x.view(nt // t, t, ch, hh, ww)
        fold = ch // 8
        out = torch.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]
        out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
        out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
        return out.view(nt, ch, hh, ww)

    x = clip.transpose(1, 2).reshape(b * t, c, h, w)
    x = backbone.maxpool(backbone.relu(backbone.bn1(conv(backbone.conv1, x))))
    feats = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for blk in getattr(backbone, stage):
            identity, xs = x, shift(x)
            out = blk.relu(blk.bn1(conv(blk.conv1, xs)))
            out = blk.relu(blk.bn2(conv(blk.conv2, out)))
            out = blk.bn3(conv(blk.conv3, out))
            if blk.downsample is not None:
                src = xs if position == "inplace" else identity
                identity = blk.downsample[1](conv(blk.downsample[0], src))
            x = blk.relu(out + identity)
        if stage in ("layer3", "layer4"):
            feats.append(x.view(b, t, *x.shape[1:]).transpose(1, 2))
    return feats


def test_tsm_shift_places_equal_the_tpn_repository_forward():
    torch.manual_seed(0)
    model = randomise_norms_(create_cnn("tsm_r50", num_classes=3, num_frames=4)).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    outs = {}
    with torch.no_grad():
        for place in ("residual", "inplace"):
            model.backbone.set_shift_place(place)
            outs[place] = model.backbone(clip)
            for ours, ref in zip(outs[place], tpn_repo_tsm_backbone(model.backbone, clip, place)):
                torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # the two places give other features from the same weights
    assert (outs["residual"][1] - outs["inplace"][1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="--tsm_shift 'blockres'"):
        model.backbone.set_shift_place("blockres")


# --------------------------------------------------------------------------------------------
# testing protocol: fully convolutional, flipped pass, SSv2's 2 clips from 16 frames
# --------------------------------------------------------------------------------------------

def test_fully_convolutional_test_equals_the_mean_of_window_logits(slowonly_r50):
    torch.manual_seed(0)
    head = ClsHead(2048, 7, dropout=0.5).eval()
    feats = torch.randn(2, 2048, 3, 2, 5)
    windows = torch.stack([head.fc_cls(feats[:, :, t, i, j]) for t in range(3)
                           for i in range(2) for j in range(5)]).mean(0)  # [2, 7]
    torch.testing.assert_close(head(feats), windows)  # fc as a 1x1x1 conv, then averaged
    torch.testing.assert_close(head(feats, fully_conv=False), windows)  # = pooling first
    # through a whole model on a clip larger than its training crops (48 px: res5 2x2)
    model = slowonly_r50
    clip = torch.randn(1, 3, 4, 48, 80)
    with torch.no_grad():
        feats, _ = model.forward_features(clip)  # [1, 2048, 4, 2, 3]
        logits = model(clip)
    assert feats.shape[2:] == (4, 2, 3)
    per_window = model.cls_head.class_map(feats).flatten(2)  # [1, 7, 24]
    torch.testing.assert_close(logits, per_window.mean(-1))
    torch.testing.assert_close(logits, torch.stack(
        [model.cls_head.fc_cls(feats[..., t, i, j]) for t in range(4) for i in range(2)
         for j in range(3)]).mean(0), rtol=1e-5, atol=1e-5)


def test_flipped_pass_is_averaged_in():
    class LeftRight(torch.nn.Module):  # not flip-invariant
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 2 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = LeftRight()
    videos = torch.randn(4, 3, 2, 4, 4)
    batch = {"video": videos, "label": torch.tensor([0, 1, 1, 2]),
             "index": torch.tensor([0, 0, 1, 1]), "view": torch.tensor([0, 1, 0, 1]),
             "video_id": ["a", "a", "b", "b"]}
    plain = multiview_test(model, [batch], "cpu")
    flipped = multiview_test(model, [batch], "cpu", flip=True)
    with torch.no_grad():
        probs = (model(videos).softmax(1) + model(videos.flip(-1)).softmax(1)) / 2
    mean = probs.view(2, 2, 3).mean(1).double()
    top1 = 100 * (mean.argmax(1) == torch.tensor([0, 1])).double().mean().item()
    assert flipped["top1"] == pytest.approx(top1) and flipped["num_views"] == 4
    assert plain["num_views"] == 4  # the flipped copy is not counted as a view


def test_ssv2_two_test_clips_are_16_frames_split_into_even_and_odd():
    """TPN's Something-Something test: 16 frames (one from the middle of each of 16 segments)
    as two 8-frame clips, ``::2`` and ``1::2``. TSN sampling with 8 segments and 2 test views
    gives exactly these clips."""
    for n in (8, 16, 17, 37, 48, 100, 161):
        sixteen = tsn_sample_indices(n, 16, test_segment=0, test_num_segment=1)
        for view in (0, 1):
            eight = tsn_sample_indices(n, 8, test_segment=view, test_num_segment=2)
            assert eight.tolist() == sixteen[view::2].tolist(), (n, view)


# --------------------------------------------------------------------------------------------
# checkpoints: ours, decisionforce/TPN's and mmaction2's layouts
# --------------------------------------------------------------------------------------------

def to_original(state):
    """Our keys -> decisionforce/TPN's (written from its modules: ``necks.*`` with bare convs,
    Sequential fusions, ``level_fusion_op2`` = the top-down fusion, ``AuxHead.convs``)."""
    out = {}
    for k, v in state.items():
        k = k.replace("neck.", "necks.", 1)
        k = re.sub(r"temporal_modulation_ops\.(\d)\.conv\.conv\.",
                   r"temporal_modulation_ops.\1.conv.", k)
        k = re.sub(r"downsample_ops\.(\d)\.conv\.conv\.", r"downsampling_ops.\1.conv.", k)
        k = k.replace("level_fusion_2.", "level_fusion_op.").replace("level_fusion_1.",
                                                                       "level_fusion_op2.")
        k = re.sub(r"downsamples\.(\d)\.conv\.conv\.", r"ops.\1.conv.", k)
        k = re.sub(r"downsamples\.(\d)\.conv\.bn\.", r"ops.\1.norm.", k)
        k = k.replace("fusion_conv.conv.", "fusion_conv.0.").replace("fusion_conv.bn.",
                                                                   "fusion_conv.1.")
        k = k.replace("pyramid_fusion.conv.", "pyramid_fusion_op.0.").replace(
            "pyramid_fusion.bn.", "pyramid_fusion_op.1.")
        k = k.replace("aux_head.conv.", "aux_head.convs.")
        out[k] = v
    return out


def to_mmaction2(state, tsm):
    """Our keys -> mmaction2's (every backbone conv a ConvModule: ``.conv`` / ``.bn``; TSM's
    shifted conv1 inside a TemporalShift: ``conv1.conv.net``)."""
    out = {}
    for k, v in state.items():
        m = re.fullmatch(r"backbone\.(?:(layer\d\.\d+)\.)?(conv|bn)(\d)\.(\w+)", k)
        d = re.fullmatch(r"backbone\.(layer\d\.\d+)\.downsample\.(\d)\.(\w+)", k)
        if m:
            block, kind, i, param = m.groups()
            prefix = f"backbone.{block}.conv{i}" if block else "backbone.conv1"
            inner = "conv.net" if kind == "conv" and tsm and block and i == "1" else kind
            k = f"{prefix}.{inner}.{param}"
        elif d:
            k = f"backbone.{d[1]}.downsample.{'conv' if d[2] == '0' else 'bn'}.{d[3]}"
        out[k] = v
    return out


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_external_checkpoint_layouts_load_strictly_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = randomise_norms_(create_cnn("tpn_r50", num_classes=5, num_frames=4)).eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        ref = model(clip)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    files = {"ours": {"model": state, "epoch": 3},
             "original": {"meta": {"epoch": 150}, "state_dict": to_original(state)},
             "mmaction2": {"meta": {"epoch": 150}, "state_dict": to_mmaction2(state, False)}}
    assert "necks.level_fusion_op2.fusion_conv.1.running_var" in files["original"]["state_dict"]
    assert "necks.aux_head.convs.bn.weight" in files["original"]["state_dict"]
    mm = files["mmaction2"]["state_dict"]
    assert "backbone.layer1.0.downsample.conv.weight" in mm and "backbone.conv1.bn.bias" in mm
    assert "backbone.layer3.5.conv1.conv.weight" in mm
    path = str(tmp_path / "mmaction2.pth")  # through a file: mmcv's wrapper, safe loading
    save_checkpoint(path, files["mmaction2"])
    for layout, ckpt in files.items():
        with torch.no_grad():
            for t in model.state_dict().values():
                t.zero_()
        load_pretrained(model, path if layout == "mmaction2" else ckpt, layout, strict=True)
        assert checkpoint_layout(ckpt["model" if layout == "ours" else "state_dict"]) == layout
        with torch.no_grad():
            assert torch.equal(model(clip), ref), layout
    # TSM-R50-TPN (mmaction2 wraps the shifted conv1 in a TemporalShift: conv1.conv.net):
    # every key of both layouts maps onto ours and fits (meta tensors: keys and shapes)
    tsm = meta_model("tsm_r50_tpn", num_classes=5, num_frames=8)
    tsm_mm = to_mmaction2(tsm.state_dict(), True)
    assert "backbone.layer3.5.conv1.conv.net.weight" in tsm_mm
    # and each layout sets the shift place it was trained with, whatever --tsm_shift said
    for layout, sd, place in (("mmaction2", tsm_mm, "residual"),
                              ("original", to_original(tsm.state_dict()), "inplace")):
        assert checkpoint_layout(sd) == layout
        tsm.backbone.set_shift_place("inplace" if place == "residual" else "residual")
        load_pretrained(tsm, {"state_dict": sd}, layout, strict=True)
        assert tsm.backbone.shift_place == place, layout
    # fine-tuning on another data set: the 5-class heads are new, the rest loads
    other = meta_model("tpn_r50", num_classes=7, num_frames=4)
    missing, unexpected = load_pretrained(other, files["original"], "original")
    assert unexpected == [] and sorted(missing) == [
        "cls_head.fc_cls.bias", "cls_head.fc_cls.weight", "neck.aux_head.fc.bias",
        "neck.aux_head.fc.weight"]
    baseline = meta_model("slowonly_r50", num_classes=5)
    missing, unexpected = load_pretrained(baseline, files["ours"], "ours")  # the neck is left over
    assert missing == [] and unexpected and all(k.startswith("neck.") for k in unexpected)
    del files["ours"]["model"]["backbone.layer2.0.conv2.weight"]
    with pytest.raises(ValueError, match=r"missing \(1\): backbone\.layer2\.0\.conv2\.weight"):
        load_pretrained(baseline, files["ours"], "ours")


def test_tsm_shift_follows_the_checkpoint(tmp_path, capsys):
    model = meta_model("tsm_r50", num_classes=3, num_frames=8)
    state = model.state_dict()
    cases = [({"model": state, "args": {"tsm_shift": "inplace"}}, "inplace", "saved arguments"),
             ({"model": state, "args": argparse.Namespace(tsm_shift="residual")}, "residual",
              "saved arguments"),
             ({"meta": {"epoch": 150}, "state_dict": state}, "inplace", "decisionforce/TPN"),
             ({"model": state}, "inplace", "records none")]  # the model's own stays
    for ckpt, place, said in cases:
        assert adopt_tsm_shift(model, ckpt, "f.pth") == place
        assert model.backbone.shift_place == place and said in capsys.readouterr().out
    assert adopt_tsm_shift(meta_model("slowonly_r50", num_classes=3), {"model": {}}, "f") is None
    # the fine-tuning script builds with --tsm_shift and records the place in its arguments
    args = _args(tmp_path, "--model", "tsm_r50", "--tsm_shift", "inplace", "--num_frames", "8",
                 "--mixup", "0", "--cutmix", "0")
    with torch.device("meta"):
        built = rcf.build_model(args)
    rcf.resolve_args(args, built)
    assert built.backbone.shift_place == "inplace" and args.tsm_shift == "inplace"
    vit = _args(tmp_path, "--model", "vit_tiny_patch16_224", "--input_size", "32",
                "--num_frames", "4", "--mixup", "0", "--cutmix", "0")
    rcf.resolve_args(vit, rcf.build_model(vit))
    assert vit.tsm_shift is None


def test_unknown_checkpoint_layout_is_a_clear_error(tmp_path):
    path = str(tmp_path / "vit.pth")
    save_checkpoint(path, {"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 1),
                                     "head.weight": torch.zeros(2, 1)}})
    with pytest.raises(ValueError, match=r"unrecognised CNN checkpoint layout \(2 tensors; "
                                         r"first keys \['blocks\.0\.attn\.qkv\.weight'"):
        load_pretrained(meta_model("tsm_r50", num_classes=3), path, path)
    with pytest.raises(ValueError, match="an ImageNet ResNet initialises the backbone with "
                                         "--imagenet_init"):
        load_pretrained(meta_model("tsm_r50", num_classes=3),
                        {"conv1.weight": torch.zeros(64, 3, 7, 7)}, "resnet50.pth")


# --------------------------------------------------------------------------------------------
# the recipe: SGD with Nesterov momentum, multi-step schedule, auxiliary loss, flags
# --------------------------------------------------------------------------------------------

def _args(tmp_path, *argv):
    args = rcf.get_args_parser().parse_args(["--data_path", str(tmp_path), *argv])
    args.distributed, args.nb_classes = False, 3
    return args


def test_sgd_nesterov_multistep_schedule_and_weight_decay_on_every_parameter(tmp_path):
    args = _args(tmp_path, "--model", "tsm_r50", "--opt", "sgd", "--momentum", "0.9",
                 "--lr", "0.01", "--weight_decay", "1e-4", "--sched", "multistep",
                 "--decay_milestones", "75", "125", "--warmup_epochs", "0", "--epochs", "150",
                 "--batch_size", "8")
    head = ClsHead(16, 3)
    scale_lrs(args)
    opt = build_optimizer(head, args, filter_bias_and_bn=False)
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    spe = 10
    sched, warmup, total = build_lr_scheduler(opt, args, spe)
    base = args.lr * 8 / 256
    lrs = {}
    for update in (0, 75 * spe - 1, 75 * spe, 125 * spe - 1, 125 * spe, total - 1):
        sched.step_update(update)
        lrs[update] = opt.param_groups[0]["lr"]
    assert warmup == 0 and total == 1500
    assert lrs[0] == pytest.approx(base) and lrs[749] == pytest.approx(base)  # epochs 0-74
    assert lrs[750] == pytest.approx(base / 10) and lrs[1249] == pytest.approx(base / 10)
    assert lrs[1250] == pytest.approx(base / 100) and lrs[1499] == pytest.approx(base / 100)


def test_auxiliary_loss_term_and_cnn_flag_checks(tmp_path, capsys):
    logits, aux = torch.randn(4, 3), torch.randn(4, 3)
    targets = torch.tensor([0, 1, 2, 1])
    ce = torch.nn.CrossEntropyLoss()
    loss, terms = classification_loss(ce, AuxOutput(logits, aux, 0.5), targets)
    torch.testing.assert_close(terms["loss_aux"], 0.5 * ce(aux, targets))
    torch.testing.assert_close(loss, ce(logits, targets) + 0.5 * ce(aux, targets))
    assert classification_loss(ce, logits, targets)[1] == {}
    args = _args(tmp_path, "--model", "tpn_r50", "--layer_decay", "0.75", "--mixup", "0",
                 "--cutmix", "0")
    rcf.resolve_args(args, meta_model("tpn_r50", num_classes=3))
    assert args.layer_decay == 1.0 and args.drop_path == 0.0 and args.token_grid is None
    assert "--layer_decay 0.75, --drop_path 0.1 ignored" in capsys.readouterr().out
    vit = _args(tmp_path, "--model", "vit_tiny_patch16_224", "--fcn_test")
    with pytest.raises(ValueError, match="--fcn_test needs a fully convolutional model"):
        rcf.resolve_args(vit, create_classifier("vit_tiny_patch16_224", num_classes=3,
                                                img_size=32, num_frames=4))
    assert set(CNN_MODELS) == {"tpn_r50", "tpn_r101", "tsm_r50_tpn", "slowonly_r50",
                               "slowonly_r101", "tsm_r50"}
    assert create_classifier("vit_tiny_patch16_224", num_classes=3, img_size=32,
                             num_frames=4).fc_dropout.__class__.__name__ == "Identity"


def test_vit_and_cnn_classifiers_answer_the_same_interface(slowonly_r50):
    """timm's names on both families, and the properties the training code asks instead of
    checking types; the head applied to the features is the model's output."""
    vit = create_classifier("vit_tiny_patch16_224", num_classes=7, img_size=32,
                            num_frames=4).eval()
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_head(vit.forward_features(x).tokens), vit(x))
        feats, aux = slowonly_r50.forward_features(x)
        torch.testing.assert_close(slowonly_r50.forward_head(feats), slowonly_r50(x))
        torch.testing.assert_close(slowonly_r50.forward_head(feats, pre_logits=True),
                                   feats.mean(dim=(2, 3, 4)))
    assert aux is None and feats.shape[:2] == (2, 2048)
    assert vit.forward_head(torch.randn(2, 8, 192), pre_logits=True).shape == (2, 192)
    assert (vit.is_fully_convolutional, slowonly_r50.is_fully_convolutional) == (False, True)
    assert (vit.filter_bias_and_bn, slowonly_r50.filter_bias_and_bn) == (True, False)
    assert (vit.no_weight_decay(), slowonly_r50.no_weight_decay()) == ({"pos_embed"}, set())
    assert (vit.get_num_layers(), slowonly_r50.get_num_layers()) == (12, 3 + 4 + 6 + 3)
    assert meta_model("tpn_r101", num_classes=3).get_num_layers() == 3 + 4 + 23 + 3
    assert type(vit).__name__ == "VideoViTClassifier"  # not timm's VisionTransformer

# --------------------------------------------------------------------------------------------
# Something-Something V1: frame folders
# --------------------------------------------------------------------------------------------

def test_ssv1_frame_folders_and_annotations(tmp_path):
    from PIL import Image
    src = os.path.join(VIDEOS, "arm_wrestling_demo.mp4")
    frames = load_frames(src, lambda n, fps: np.arange(12), short_side=48)  # [12, 48, w, 3]
    folder = tmp_path / "frames" / "1234"
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i + 1:05d}.png")  # lossless: pixels can be compared
    got = load_frames(str(folder), lambda n, fps: np.array([0, 5, 11, 5]))
    assert np.array_equal(got, frames[[0, 5, 11, 5]])
    small = load_frames(str(folder), lambda n, fps: np.array([1]), short_side=24)
    assert small.shape[1] == 24
    (tmp_path / "labels.csv").write_text("Pushing something\nHolding something\n")
    (tmp_path / "train.csv").write_text("1234;Holding something\n")
    assert convert_ssv1(str(tmp_path / "train.csv"), str(tmp_path / "labels.csv")) == [("1234", 1)]
    lists = tmp_path / "lists"
    lists.mkdir()
    for split in ("train", "val", "test"):
        (lists / f"{split}.csv").write_text("1234 1\n")
    args = argparse.Namespace(data_set="SSV1", data_path=str(lists),
                              data_root=str(tmp_path / "frames"), num_frames=4, sampling_rate=1,
                              input_size=32, short_side_size=40, test_num_crop=3, fcn_test=True)
    test_set, nb_classes = build_dataset(False, True, args)
    assert nb_classes == 174 and len(test_set) == 2 * 3  # SSv1: 2 clips x 3 crops
    item = test_set[0]
    assert item["video"].shape == (3, 4, 40, 40) and item["label"] == 1  # fcn_test: 40 px crops
    (folder / "00013.png").write_text("not an image")
    with pytest.warns(RuntimeWarning, match="00013.png"):
        assert build_dataset(True, False, args)[0][0] is None  # skipped like a corrupted video


# --------------------------------------------------------------------------------------------
# a short tpn_r50 run on real clips, through the script, with the fully convolutional test
# --------------------------------------------------------------------------------------------

def test_tpn_r50_finetune_and_fully_convolutional_test_on_real_clips(imagenet_r50, tmp_path):
    data = str(tmp_path / "demo")
    clips = [os.path.join(VIDEOS, c) for c in
             ("arm_wrestling_demo.mp4", "kinetics_clip_test.avi", "short_clip_part0.mp4")]
    make_demo_splits(clips, data, short_side=32, num_train=1, num_test=1)
    out = str(tmp_path / "out")
    argv = ["--model", "tpn_r50", "--imagenet_init", imagenet_r50[1], "--data_set", "UCF101",
            "--nb_classes", "3", "--data_path", data, "--data_root", data, "--input_size", "32",
            "--short_side_size", "32", "--num_frames", "4", "--sampling_rate", "2",
            "--batch_size", "3", "--epochs", "1", "--opt", "sgd", "--lr", "0.01",
            "--weight_decay", "1e-4", "--clip_grad", "40", "--sched", "multistep",
            "--decay_milestones", "1", "--warmup_epochs", "0", "--layer_decay", "1",
            "--drop_path", "0", "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--aa",
            "none", "--reprob", "0", "--num_sample", "1", "--test_num_segment", "1",
            "--test_num_crop", "3", "--fcn_test", "--test_flip", "--num_workers", "0",
            "--device", "cpu", "--output_dir", out, "--no-auto_resume"]
    rcf.main(rcf.get_args_parser().parse_args(argv))
    log = [json.loads(line) for line in open(os.path.join(out, "log.json"))]
    assert len(log) == 1 and log[0]["train_clips"] == 3
    rec = log[0]
    assert np.isfinite(rec["train_loss"]) and rec["train_loss_aux"] > 0
    assert rec["train_loss"] == pytest.approx(rec["train_loss_cls"] + rec["train_loss_aux"])
    summary = json.load(open(os.path.join(out, "test_summary.json")))
    assert summary["num_videos"] == 3 and summary["num_views"] == 9
    assert summary["views_per_video"] == 3 and 0 <= summary["top1"] <= 100
    ckpt = torch.load(os.path.join(out, "checkpoint-0.pth"), weights_only=True)
    assert ckpt["model"]["cls_head.fc_cls.weight"].shape == (3, 2048)
    assert ckpt["args"]["layer_decay"] == 1.0 and ckpt["args"]["fc_drop_rate"] is None
