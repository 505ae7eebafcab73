"""The TF/Keras port's (innat/VideoMAE) legacy h5 weight files: synthetic files written here
with h5py the way Keras 2's ``save_weights`` writes them (per-layer groups, ``weight_names``
bytes or str and chunked, nested dataset paths, shuffled ``dense_N`` counters, DHWIO Conv3D
and ``(in, out)`` Dense kernels, separate q/v biases) convert, load strictly, and give the
outputs of a NumPy forward written here from the Keras layout (clips ``(B, T, H, W, C)``).

Max abs differences measured (our float32 model vs the float64 NumPy forward, CPU, printed by
``pytest -s``): classifier logits 3.5e-7 and pixel predictions 1.3e-6 (width 64, 2 blocks, 32
tokens); ViT-tiny size (12 blocks) through ``--finetune``: logits 1.1e-6; through ``--path_t``:
teacher tokens (before any norm, magnitudes in the tens) 1.3e-5.
"""
import math
import re

import h5py
import numpy as np
import pytest
import torch

import run_class_finetuning as rcf
import run_mmkd_pretraining as rmp
from checkpoint import load_checkpoint
from keras_interop import load_keras_weights
from modeling_finetune import VideoViTClassifier
from modeling_student import PretrainVisionTransformer
from tools import convert_checkpoint
from weights import checkpoint_kind, load_pretrained

GEOMETRY = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2)  # 2 x 4 x 4 = 32 tokens
SMALL = dict(dim=64, depth=2, heads=4, dec_dim=32, dec_depth=2, dec_heads=2, classes=5)
TOL = 1e-4


# --------------------------------------------------------------------------------------------
# the Keras model's weights (its layout) and a NumPy forward of it
# --------------------------------------------------------------------------------------------

def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _norm(rng, dim):
    return _rand(rng, dim, scale=0.1) + 1, _rand(rng, dim, scale=0.1)  # gamma, beta


def _block_params(rng, dim):
    s, h = dim ** -0.5, (4 * dim) ** -0.5
    return dict(norm1=_norm(rng, dim), qkv=_rand(rng, dim, 3 * dim, scale=s),
                q_bias=_rand(rng, dim, scale=0.3), v_bias=_rand(rng, dim, scale=0.3),
                proj=(_rand(rng, dim, dim, scale=s), _rand(rng, dim, scale=0.1)),
                norm2=_norm(rng, dim),
                fc1=(_rand(rng, dim, 4 * dim, scale=s), _rand(rng, 4 * dim, scale=0.1)),
                fc2=(_rand(rng, 4 * dim, dim, scale=h), _rand(rng, dim, scale=0.1)))


def keras_params(seed, dim, depth, classes=None, dec_dim=None, dec_depth=0, patch=8, tubelet=2):
    """Random weights in the Keras layout: Conv3D kernel (kt, kh, kw, in, out), Dense (in, out)."""
    rng = np.random.default_rng(seed)
    p = dict(patch=(_rand(rng, tubelet, patch, patch, 3, dim, scale=0.05),
                    _rand(rng, dim, scale=0.1)),
             blocks=[_block_params(rng, dim) for _ in range(depth)])
    if classes:
        p.update(fc_norm=_norm(rng, dim), head=(_rand(rng, dim, classes, scale=dim ** -0.5),
                                                _rand(rng, classes, scale=0.1)))
    if dec_depth:
        out = 3 * tubelet * patch * patch
        p.update(norm=_norm(rng, dim), e2d=_rand(rng, dim, dec_dim, scale=dim ** -0.5),
                 mask_token=_rand(rng, 1, 1, dec_dim, scale=0.5),
                 dec_blocks=[_block_params(rng, dec_dim) for _ in range(dec_depth)],
                 dec_norm=_norm(rng, dec_dim),
                 dec_head=(_rand(rng, dec_dim, out, scale=dec_dim ** -0.5),
                           _rand(rng, out, scale=0.1)))
    return p


def sinusoid(n, d):
    """VideoMAE's 1-D table, entry by entry."""
    t = np.zeros((n, d))
    for pos in range(n):
        for j in range(d):
            angle = pos / 10000 ** (2 * (j // 2) / d)
            t[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return t


def layer_norm(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * gamma + beta


_erf = np.vectorize(math.erf)


def keras_block(x, p, heads):
    """The port's TFBlock: pre-norm attention (q/v biases, zero k bias) and GELU MLP."""
    b, n, c = x.shape
    hd = c // heads
    qkv = layer_norm(x, *p["norm1"]) @ p["qkv"] + np.concatenate([p["q_bias"], np.zeros(c),
                                                                   p["v_bias"]])
    q, k, v = qkv.reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    a = (q * hd ** -0.5) @ k.transpose(0, 1, 3, 2)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    x = x + (a @ v).transpose(0, 2, 1, 3).reshape(b, n, c) @ p["proj"][0] + p["proj"][1]
    h = layer_norm(x, *p["norm2"]) @ p["fc1"][0] + p["fc1"][1]
    return x + (0.5 * h * (1 + _erf(h / math.sqrt(2)))) @ p["fc2"][0] + p["fc2"][1]


def keras_tokens(p, clip):
    """Conv3D (stride = kernel) on ``clip (B, T, H, W, C)`` + position table -> ``(B, N, D)``."""
    kernel, bias = p["patch"]
    kt, kh, kw, c, d = kernel.shape
    b, t, h, w, _ = clip.shape
    x = clip.reshape(b, t // kt, kt, h // kh, kh, w // kw, kw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    x = x.reshape(b, -1, kt * kh * kw * c) @ kernel.reshape(-1, d) + bias
    return x + sinusoid(x.shape[1], d)


def keras_classifier(p, clip, heads):
    x = keras_tokens(p, clip.astype(np.float64))
    for blk in p["blocks"]:
        x = keras_block(x, blk, heads)
    return layer_norm(x.mean(1), *p["fc_norm"]) @ p["head"][0] + p["head"][1]


def keras_pretrain(p, clip, mask, heads, dec_heads):
    """The port's TFPretrainVisionTransformer: encoder on the visible tokens, decoder on
    [visible + positions, mask token + hidden positions], pixels of the hidden tokens."""
    x = keras_tokens(p, clip.astype(np.float64))
    b, n, d = x.shape
    x = x[~mask].reshape(b, -1, d)
    for blk in p["blocks"]:
        x = keras_block(x, blk, heads)
    x = layer_norm(x, *p["norm"]) @ p["e2d"]
    pos = np.broadcast_to(sinusoid(n, x.shape[-1]), (b, n, x.shape[-1]))
    hidden = pos[mask].reshape(b, -1, x.shape[-1])
    x = np.concatenate([x + pos[~mask].reshape(x.shape), p["mask_token"] + hidden], axis=1)
    for blk in p["dec_blocks"]:
        x = keras_block(x, blk, dec_heads)
    return layer_norm(x[:, -hidden.shape[1]:], *p["dec_norm"]) @ p["dec_head"][0] + p["dec_head"][1]


# --------------------------------------------------------------------------------------------
# writing them as Keras 2's legacy save_weights does
# --------------------------------------------------------------------------------------------

class Counters:
    """Keras' process-wide name counters (``dense``, ``dense_7``, ...), drawn shuffled so that
    neither their values nor the alphabetical order of the datasets tells the true order."""

    def __init__(self, seed):
        self.rng, self.left = np.random.default_rng(seed), {}

    def uid(self, prefix):
        if prefix not in self.left:
            self.left[prefix] = list(self.rng.permutation(500))
        return int(self.left[prefix].pop())

    def __call__(self, prefix):
        n = self.uid(prefix)
        return f"{prefix}_{n}" if n else prefix


def dense(layer, kernel_bias):
    return [(f"{layer}/kernel:0", kernel_bias[0]), (f"{layer}/bias:0", kernel_bias[1])]


def norm(layer, gamma_beta):
    return [(f"{layer}/gamma:0", gamma_beta[0]), (f"{layer}/beta:0", gamma_beta[1])]


def block_weights(p, scope, block, attn, names, scoped_bias):
    """One TFBlock's ``(weight name, value)`` in Keras' order: a ``keras.Model`` (TFBlock,
    TFAttention) lists its sub-layers' weights before its own (the q/v biases)."""
    s = f"{scope}{block}/"
    ln1, ln2, mlp = names("layer_normalization"), names("layer_normalization"), names("tf_mlp")
    qkv, proj, fc1, fc2 = (names("dense") for _ in range(4))
    bias_scope = f"{s}{attn}/" if scoped_bias else ""  # the port adds them outside any scope
    return (norm(s + ln1, p["norm1"]) + [(f"{s}{attn}/{qkv}/kernel:0", p["qkv"])]
            + dense(f"{s}{attn}/{proj}", p["proj"])
            + [(f"{bias_scope}q_bias_id{names.uid('q_bias') + 1}:0", p["q_bias"]),
               (f"{bias_scope}v_bias_id{names.uid('v_bias') + 1}:0", p["v_bias"])]
            + norm(s + ln2, p["norm2"])
            + dense(f"{s}{mlp}/{fc1}", p["fc1"]) + dense(f"{s}{mlp}/{fc2}", p["fc2"]))


def finetune_layers(p, seed=0, prefix="", scoped_bias=False):
    """``model.layers`` of the port's TFVisionTransformer with their weights, and the
    model's own (top-level) weights."""
    names = Counters(seed)
    layers = [("patch_embed", dense(f"{prefix}patch_embed/patch_embed_proj", p["patch"])),
              ("pos_drop", [])]
    layers += [(f"TFBlock{i}", block_weights(blk, prefix, f"TFBlock{i}", f"TFAttention{i}", names,
                                             scoped_bias))
               for i, blk in enumerate(p["blocks"], start=1)]
    layers += [("norm_identity", []), ("fc_norm", norm(f"{prefix}fc_norm", p["fc_norm"])),
               ("fc_dropout_identity", []), ("head", dense(f"{prefix}head", p["head"]))]
    return layers, []


def pretrain_layers(p, seed=0, prefix="", scoped_bias=False):
    """``model.layers`` of the port's TFPretrainVisionTransformer (encoder, decoder,
    encoder_to_decoder) and its own weight, the mask token."""
    names = Counters(seed)
    enc = f"{prefix}TFPretrainVisionTransformerEncoder/"
    dec = f"{prefix}TFPretrainVisionTransformerDecoder/"
    encoder = dense(f"{enc}patch_embed_encoder/patch_embed_proj", p["patch"])
    for i, blk in enumerate(p["blocks"], start=1):
        encoder += block_weights(blk, enc, f"TFBlockEncoder{i}", f"TFAttentionEncoder{i}", names,
                                 scoped_bias)
    encoder += norm(f"{enc}norm_encoder", p["norm"])
    decoder = []
    for i, blk in enumerate(p["dec_blocks"], start=1):
        decoder += block_weights(blk, dec, f"TFBlockDecoder{i}", f"TFAttentionDecoder{i}", names,
                                 scoped_bias)
    decoder += norm(f"{dec}norm_decoder", p["dec_norm"])
    decoder += dense(f"{dec}head_decoder", p["dec_head"])
    layers = [("TFPretrainVisionTransformerEncoder", encoder),
              ("TFPretrainVisionTransformerDecoder", decoder),
              ("encoder_to_decoder", [(f"{prefix}encoder_to_decoder/kernel:0", p["e2d"])])]
    return layers, [("mask_token_pretrained:0", p["mask_token"])]


def _put_names(node, key, names, as_str, chunks):
    """Keras' save_attributes_to_hdf5_group: bytes (np.asarray of bytes) or str, split into
    ``key0``, ``key1``, ... when ``chunks`` > 1."""
    if not names:
        node.attrs[key] = []
        return
    parts = [names[i[0]:i[-1] + 1] for i in np.array_split(np.arange(len(names)), chunks) if len(i)]
    values = [list(part) if as_str else np.asarray([n.encode("utf8") for n in part])
              for part in parts]
    if len(values) == 1:
        node.attrs[key] = values[0]
    else:
        for i, v in enumerate(values):
            node.attrs[f"{key}{i}"] = v


def write_h5(path, layers, top_level, as_str=False, chunks=1, whole_model=False):
    """A legacy Keras-2 weight file (``save_weights``; with ``whole_model`` as ``save`` writes
    it: under ``model_weights``, beside an optimizer group). ``as_str``: True, False or
    'mixed' (by group)."""
    with h5py.File(path, "w") as root:
        f = root
        if whole_model:
            root.create_group("optimizer_weights").create_dataset("iter:0", data=np.int64(3))
            f = root.create_group("model_weights")
        _put_names(f, "layer_names", [name for name, _ in layers], as_str is True, chunks)
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.9.1"
        groups = sorted(layers) + [("top_level_model_weights", top_level)]
        for i, (name, weights) in enumerate(groups):
            g = f.create_group(name)
            text = as_str if as_str != "mixed" else i % 2 == 1
            _put_names(g, "weight_names", [w for w, _ in weights], text, chunks)
            for w, value in weights:
                g.create_dataset(w, data=value)
    return path


# --------------------------------------------------------------------------------------------
# our models
# --------------------------------------------------------------------------------------------

def our_classifier(s=SMALL):
    return VideoViTClassifier(num_classes=s["classes"], embed_dim=s["dim"], depth=s["depth"],
                              num_heads=s["heads"], **GEOMETRY).eval()


def our_pretrainer(s=SMALL):
    encoder = dict(embed_dim=s["dim"], depth=s["depth"], num_heads=s["heads"], **GEOMETRY)
    return PretrainVisionTransformer(encoder, s["dec_depth"], s["dec_dim"], s["dec_heads"]).eval()


def clip_and_mask(b=2, t=4, size=32, n=32, hidden=24, seed=3):
    rng = np.random.default_rng(seed)
    clip = rng.standard_normal((b, t, size, size, 3)).astype(np.float32)  # Keras (B, T, H, W, C)
    mask = np.zeros((b, n), dtype=bool)
    for row in mask:
        row[rng.choice(n, hidden, replace=False)] = True
    return clip, mask


def to_ours(clip):
    return torch.from_numpy(clip.transpose(0, 4, 1, 2, 3).copy())  # (B, C, T, H, W)


VARIANTS = {  # how the names are stored; none of it may change the result
    "bytes-chunked": dict(as_str=False, chunks=3, prefix="", scoped_bias=False, seed=0),
    "str-prefixed": dict(as_str=True, chunks=1, prefix="TFVideoMAE_S_16x224_FT/", scoped_bias=True,
                         seed=1),
    "mixed": dict(as_str="mixed", chunks=2, prefix="m/", scoped_bias=False, seed=2),
}


def _write(tmp_path, layers_fn, p, variant, name="w.h5"):
    v = VARIANTS[variant]
    layers, top = layers_fn(p, v["seed"], v["prefix"], v["scoped_bias"])
    return write_h5(str(tmp_path / name), layers, top, v["as_str"], v["chunks"])


# --------------------------------------------------------------------------------------------
# numerics
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_finetuned_h5_loads_strictly_and_gives_the_keras_logits(tmp_path, variant):
    s = SMALL
    p = keras_params(0, s["dim"], s["depth"], classes=s["classes"])
    path = _write(tmp_path, finetune_layers, p, variant)
    assert checkpoint_kind(load_checkpoint(path)) == "finetune"
    model = our_classifier()
    assert load_pretrained(model, path, path, strict=True) == ([], [])
    clip, _ = clip_and_mask()
    with torch.no_grad():
        ours = model(to_ours(clip)).double().numpy()
    ref = keras_classifier(p, clip, s["heads"])
    print(f"{variant}: logits max abs diff {np.abs(ours - ref).max():.2e}")
    assert np.abs(ref).max() > 0.5  # the comparison is not between near-zero numbers
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pretraining_h5_loads_strictly_and_gives_the_keras_pixels(tmp_path, variant):
    s = SMALL
    p = keras_params(1, s["dim"], s["depth"], dec_dim=s["dec_dim"], dec_depth=s["dec_depth"])
    path = _write(tmp_path, pretrain_layers, p, variant)
    state = load_checkpoint(path)
    assert checkpoint_kind(state) == "pretrain"
    assert {"encoder.norm.weight", "encoder_to_decoder.weight", "mask_token",
            "decoder.blocks.1.attn.v_bias", "decoder.head.bias"} <= set(state)
    model = our_pretrainer()
    assert load_pretrained(model, path, path, strict=True) == ([], [])
    clip, mask = clip_and_mask()
    with torch.no_grad():
        ours = model(to_ours(clip), torch.from_numpy(mask)).pixels.double().numpy()
    ref = keras_pretrain(p, clip, mask, s["heads"], s["dec_heads"])
    print(f"{variant}: pixels max abs diff {np.abs(ours - ref).max():.2e}")
    assert ours.shape == (2, 24, 384) and np.abs(ref).max() > 0.5
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_counter_suffixes_name_encoding_and_chunking_do_not_change_the_weights(tmp_path):
    s = SMALL
    p = keras_params(2, s["dim"], s["depth"], dec_dim=s["dec_dim"], dec_depth=s["dec_depth"])
    states = [load_keras_weights(_write(tmp_path, pretrain_layers, p, v, f"{v}.h5"))
              for v in sorted(VARIANTS)]
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert all(torch.equal(other[k], states[0][k]) for k in other)
    for v in VARIANTS.values():  # ordering by the counters would have mis-assigned weights
        assert _counters_out_of_order(pretrain_layers(p, v["seed"])[0])


def _counters_out_of_order(layers):
    """Whether some block's Dense layers have counter suffixes out of the block's order."""
    found = {}
    for _, weights in layers:
        for name, _ in weights:
            m = re.search(r"(TFBlock[A-Za-z]*\d+)/.*dense(?:_(\d+))?/kernel", name)
            if m:
                found.setdefault(m[1], []).append(int(m[2] or 0))
    return any(nums != sorted(nums) for nums in found.values())


# --------------------------------------------------------------------------------------------
# entry points: --finetune, --path_t, the converter
# --------------------------------------------------------------------------------------------

TINY = dict(dim=192, depth=12, heads=3, dec_dim=96, dec_depth=1, dec_heads=3, classes=4)
TINY_FLAGS = ["--input_size", "32", "--num_frames", "4", "--device", "cpu"]


def test_finetune_flag_reads_the_h5_file(tmp_path):
    p = keras_params(4, TINY["dim"], TINY["depth"], classes=TINY["classes"], patch=16)
    path = write_h5(str(tmp_path / "TFVideoMAE_T_FT.h5"), *finetune_layers(p), as_str=True)
    args = rcf.get_args_parser().parse_args(
        ["--data_path", str(tmp_path), "--model", "vit_tiny_patch16_224", "--nb_classes", "4",
         "--finetune", path, *TINY_FLAGS])
    model = rcf.build_model(args).eval()
    clip, _ = clip_and_mask(n=8, hidden=4)
    with torch.no_grad():
        ours = model(to_ours(clip)).double().numpy()
    ref = keras_classifier(p, clip, TINY["heads"])
    print(f"--finetune: logits max abs diff {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_path_t_and_finetune_read_a_pretraining_h5_file(tmp_path):
    p = keras_params(5, TINY["dim"], TINY["depth"], dec_dim=TINY["dec_dim"],
                     dec_depth=TINY["dec_depth"], patch=16)
    path = write_h5(str(tmp_path / "TFVideoMAE_T_PT.hdf5"), *pretrain_layers(p), chunks=4)
    anno = tmp_path / "train.csv"
    anno.write_text("a.mp4 0\n")
    args = rmp.get_args_parser().parse_args(
        ["--data_path", str(anno), "--model", "pretrain_videomae_tiny_patch16_224", "--model_t",
         "pretrain_videomae_tiny_patch16_224", "--path_t", path, *TINY_FLAGS])
    args.use_teacher = True
    _, teacher = rmp.build_models(args)
    clip, _ = clip_and_mask(n=8, hidden=4)
    with torch.no_grad():
        tokens = teacher.encoder.forward_features(to_ours(clip)).tokens.double().numpy()
    ref = keras_tokens(p, clip.astype(np.float64))
    for blk in p["blocks"]:
        ref = keras_block(ref, blk, TINY["heads"])
    print(f"--path_t: teacher tokens max abs diff {np.abs(tokens - ref).max():.2e}")
    np.testing.assert_allclose(tokens, ref, atol=TOL, rtol=0)
    # the same file initialises fine-tuning: the encoder loads, fc_norm and head are new
    args = rcf.get_args_parser().parse_args(
        ["--data_path", str(tmp_path), "--model", "vit_tiny_patch16_224", "--nb_classes", "4",
         "--finetune", path, *TINY_FLAGS])
    model = rcf.build_model(args)
    torch.testing.assert_close(model.blocks[11].attn.qkv.weight,
                               torch.from_numpy(p["blocks"][11]["qkv"].T.copy()))


def test_whole_model_h5_reads_its_model_weights(tmp_path):
    p = keras_params(8, 64, 2, classes=5)
    plain = load_keras_weights(write_h5(str(tmp_path / "w.h5"), *finetune_layers(p)))
    whole = load_keras_weights(write_h5(str(tmp_path / "m.h5"), *finetune_layers(p),
                                        whole_model=True))
    assert plain.keys() == whole.keys() and all(torch.equal(plain[k], whole[k]) for k in plain)


def test_converter_writes_and_inspects_h5_weights(tmp_path, capsys):
    s = SMALL
    p = keras_params(6, s["dim"], s["depth"], dec_dim=s["dec_dim"], dec_depth=s["dec_depth"])
    path = _write(tmp_path, pretrain_layers, p, "bytes-chunked", "TFVideoMAE_PT.h5")
    out = str(tmp_path / "ours.pth")
    convert_checkpoint.main(["from-keras", "--h5", path, "--output", out])
    assert "wrote pretrain weights" in capsys.readouterr().out
    direct, converted = our_pretrainer(), our_pretrainer()
    load_pretrained(direct, path, path, strict=True)
    load_pretrained(converted, out, out, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(),
                                                  converted.state_dict().values()))
    convert_checkpoint.main(["inspect", path])
    assert '"kind": "pretrain"' in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# bad files: one line naming the file and what did not fit
# --------------------------------------------------------------------------------------------

def _drop_block(layers):
    return [(n, w) for n, w in layers if n != "TFBlock1"]


def _bad_qkv(layers):
    return [(n, [(k, v[:, :100] if "TFAttention2/" in k and v.shape == (64, 192) else v)
                 for k, v in w]) for n, w in layers]


def _extra_weight(layers):
    return layers + [("pos_embed_layer", [("pos_embed_layer/pos_embed:0", np.zeros((1, 32, 64)))])]


def _lone_bias(layers):
    return [(n, [(k, v) for k, v in w if not k.startswith("v_bias")]) for n, w in layers]


@pytest.mark.parametrize("change, message", [
    (_drop_block, "block TFBlock1 is missing (blocks found: 2)"),
    (_bad_qkv, "TFBlock2 attn.qkv Dense 64->192 kernel has shape (64, 100), expected (64, 192)"),
    (_extra_weight, "1 weights with no counterpart in VideoMAE: ['pos_embed_layer/pos_embed:0']"),
    (_lone_bias, "TFBlock1 has a q_bias without its pair"),
])
def test_structure_errors_are_one_line(tmp_path, change, message):
    p = keras_params(7, 64, 2, classes=5)
    layers, top = finetune_layers(p)
    path = write_h5(str(tmp_path / "bad.h5"), change(layers), top)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert message in str(e.value) and path in str(e.value) and "\n" not in str(e.value)


def test_file_errors_are_one_line(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not weights\n")
    plain = str(tmp_path / "plain.hdf5")
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    numbers = str(tmp_path / "numbers.h5")
    with h5py.File(numbers, "w") as f:
        f.attrs["layer_names"] = [1.0, 2.0]
    listed = str(tmp_path / "listed.h5")
    with h5py.File(listed, "w") as f:
        f.attrs["layer_names"] = [b"head"]
        f.create_group("head").attrs["weight_names"] = [b"head/kernel:0"]
    for path, message in ((str(text), "is not an HDF5 file"),
                          (plain, "is HDF5 but not a Keras weight file (no 'layer_names'"),
                          (numbers, "attribute 'layer_names' of '/' holds a float64 (1.0), not a name"),
                          (listed, "layer 'head' lists the weight 'head/kernel:0', which is not "
                                   "a numeric dataset")):
        with pytest.raises(ValueError) as e:
            load_checkpoint(path)
        assert message in str(e.value) and path in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.h5"))
