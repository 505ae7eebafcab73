"""The TF/Keras VideoMAE port's weights (innat/VideoMAE, commit 0f12db59) read with ``h5py``,
no TensorFlow, into our canonical VideoMAE layout (``checkpoint.py``'s module docstring).

The port publishes legacy Keras-2 HDF5 ``save_weights`` files (``TFVideoMAE_{S,B,L}_16x224_
{FT,PT}.h5``, the SSv2 and UCF101 ones). Keras' ``save_weights_to_hdf5_group`` writes a root
attribute ``layer_names``, one group per layer of ``model.layers`` whose ``weight_names``
attribute lists the layer's weights in tracking order (trainable first), and one dataset per
weight at that name, ``/`` making nested groups (``TFBlock1/TFAttention1/dense_7/kernel:0``);
a model's own weights (the pre-training ``mask_token``) sit in ``top_level_model_weights``.
Attributes too long for an HDF5 header are split as ``name0``, ``name1``, ...; names are bytes
or str. A whole-model ``save`` holds the same under ``model_weights``.

Mapping (METHOD.md, "The TF/Keras port's weight files"): a block is found by its index
(``TFBlock<i>`` fine-tuned, ``TFBlockEncoder<i>`` / ``TFBlockDecoder<i>`` pre-training, 1-based)
in the weight's path or its layer's name; inside a block, by order and shape: the first and
second LayerNorm are ``norm1`` / ``norm2``, the four Dense layers are ``attn.qkv`` (no bias),
``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, and ``q_bias*`` / ``v_bias*`` are the attention's
biases. The ``dense_N`` / ``layer_normalization_N`` / ``q_bias_idN`` suffixes are Keras'
process-wide counters, different in every file, and never looked at. The port's q/v biases are
created outside any name scope (and listed after the attention's Dense weights, a
``keras.Model`` listing its sub-layers' weights first), so in a pre-training file (one group for
the whole encoder) they belong to the block of the weights around them. Kernels: Dense ``(in, out)`` -> Linear
``(out, in)``; Conv3D ``(kt, kh, kw, in, out)`` -> ``(out, in, kt, kh, kw)``. The port takes
clips as ``(B, T, H, W, C)``; its tokens are ordered ``(t, h, w)`` like ours, and its position
tables are VideoMAE's fixed 1-D sinusoid ones (not stored).
"""
import os
import re

import numpy as np
import torch

_BLOCK = re.compile(r"TFBlock(Encoder|Decoder)?(\d+)")
_BLOCK_PREFIX = {"": "blocks", "Encoder": "encoder.blocks", "Decoder": "decoder.blocks"}
# Layers outside the blocks, by the name the port gives them (fixed, no counter suffix).
_TOP = {"patch_embed_proj": "patch_embed.proj", "norm": "norm", "fc_norm": "fc_norm",
        "head": "head", "norm_encoder": "encoder.norm", "encoder_to_decoder": "encoder_to_decoder",
        "norm_decoder": "decoder.norm", "head_decoder": "decoder.head"}
_PARAM = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_QV_BIAS = re.compile(r"([qv])_bias.*")


class _Weight:
    """One stored weight: its layer group, its Keras name, its value, and where it belongs."""

    def __init__(self, group, name, value):
        self.group, self.name, self.value = group, name, value
        parts = name.split("/")
        self.leaf = parts[-1].split(":")[0]  # kernel, bias, gamma, beta, q_bias_id7, ...
        self.layer = "/".join(parts[:-1])  # the path of the Keras layer that owns it
        found = [m for m in map(_BLOCK.fullmatch, parts[:-1] + [group]) if m]
        self.block = (found[0][1] or "", int(found[0][2])) if found else None


def _names(node, name, path):
    """A list-of-names attribute of an HDF5 node as str, joined from ``name0``, ``name1``, ...
    when Keras chunked it (bytes or str entries); None when absent.

    Raises:
        ValueError: an entry that is not a name.
    """
    if name in node.attrs:
        chunks = [node.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in node.attrs:
            chunks.append(node.attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    names = [v.decode("utf8") if isinstance(v, bytes) else v
             for chunk in chunks for v in np.atleast_1d(chunk)]
    bad = [v for v in names if not isinstance(v, str)]
    if bad:
        raise ValueError(f"Keras weight file {path!r}: attribute {name!r} of {node.name!r} holds "
                         f"a {type(bad[0]).__name__} ({bad[0]}), not a name")
    return names


def read_keras_h5(path):
    """The weights of a legacy Keras HDF5 weight file, in the file's order.

    Returns:
        list of ``(layer group, weight name, numpy array)`` over ``layer_names``, then
        ``top_level_model_weights``.
    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: not HDF5, not a Keras weight file, or a listed weight missing or not numeric.
    """
    import h5py  # only needed for this format

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {path!r} is not an HDF5 file ({reason})") from None
    with f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        layers = _names(root, "layer_names", path)
        if layers is None:
            raise ValueError(f"{path!r} is HDF5 but not a Keras weight file (no 'layer_names' "
                             f"attribute): expected the TF/Keras VideoMAE port's save_weights .h5")
        if "top_level_model_weights" in root and "top_level_model_weights" not in layers:
            layers = layers + ["top_level_model_weights"]  # the model's own weights
        out = []
        for layer in layers:
            if not isinstance(root.get(layer), h5py.Group):
                raise ValueError(f"Keras weight file {path!r}: layer {layer!r} is listed in "
                                 f"layer_names but has no group")
            group = root[layer]
            for name in _names(group, "weight_names", path) or []:
                data = group.get(name)
                if not isinstance(data, h5py.Dataset) or data.dtype.kind not in "fiu":
                    raise ValueError(f"Keras weight file {path!r}: layer {layer!r} lists the "
                                     f"weight {name!r}, which is not a numeric dataset in the file")
                out.append((layer, name, np.asarray(data)))
    return out


def _assign_qv_biases(weights, path):
    """Put each q/v bias stored without a block in its path into the block of the weights
    before and after it in its group (the port creates them outside any name scope)."""
    for w in weights:
        if w.block is not None or not _QV_BIAS.fullmatch(w.leaf):
            continue
        same = [v for v in weights if v.group == w.group]
        k = same.index(w)
        before = next((v.block for v in reversed(same[:k]) if v.block), None)
        after = next((v.block for v in same[k + 1:] if v.block), None)
        if before is None or before != after:
            raise ValueError(f"Keras weight file {path!r}: cannot tell which block the "
                             f"attention bias {w.name!r} belongs to")
        w.block = before


def _expect(path, what, value, shape):
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"Keras weight file {path!r}: {what} has shape {tuple(value.shape)}, "
                         f"expected {tuple(shape)}")


def _linear(path, label, layer, shape_in, shape_out, bias):
    """One Dense layer's ``{leaf: value}`` -> ``(weight (out, in), bias or None)``."""
    what = f"{label} Dense {shape_in}->{shape_out}"
    if set(layer) != ({"kernel", "bias"} if bias else {"kernel"}):
        raise ValueError(f"Keras weight file {path!r}: {what} has weights {sorted(layer)}, "
                         f"expected {['bias', 'kernel'] if bias else ['kernel']}")
    _expect(path, f"{what} kernel", layer["kernel"], (shape_in, shape_out))
    if bias:
        _expect(path, f"{what} bias", layer["bias"], (shape_out,))
    return layer["kernel"].T, layer.get("bias")


def _block(path, label, prefix, weights):
    """One transformer block's Keras weights (in file order) -> our ``{key: array}``."""
    layers, biases = {}, {}
    for w in weights:
        qv = _QV_BIAS.fullmatch(w.leaf)
        if qv:
            if qv[1] in biases:
                raise ValueError(f"Keras weight file {path!r}: {label} has two {qv[1]}_bias")
            biases[qv[1]] = w.value
        elif w.leaf in _PARAM:
            layers.setdefault(w.layer, {})[w.leaf] = w.value
        else:
            raise ValueError(f"Keras weight file {path!r}: {label} has a weight {w.name!r} "
                             f"with no counterpart in a VideoMAE block")
    norms = [v for v in layers.values() if "gamma" in v or "beta" in v]
    dense = [v for v in layers.values() if not ("gamma" in v or "beta" in v)]
    if len(norms) != 2 or len(dense) != 4:
        raise ValueError(f"Keras weight file {path!r}: {label} has {len(norms)} LayerNorm and "
                         f"{len(dense)} Dense layers, expected 2 (norm1, norm2) and 4 (qkv, "
                         f"proj, fc1, fc2)")
    dim = norms[0].get("gamma", norms[0].get("beta")).shape[0]
    out = {}
    for name, norm in zip(("norm1", "norm2"), norms):
        if set(norm) != {"gamma", "beta"}:
            raise ValueError(f"Keras weight file {path!r}: {label} {name} has weights "
                             f"{sorted(norm)}, expected ['beta', 'gamma']")
        _expect(path, f"{label} {name} gamma", norm["gamma"], (dim,))
        _expect(path, f"{label} {name} beta", norm["beta"], (dim,))
        out[f"{name}.weight"], out[f"{name}.bias"] = norm["gamma"], norm["beta"]
    hidden = dense[2]["kernel"].shape[-1] if "kernel" in dense[2] else 0  # MLP width
    shapes = {"attn.qkv": (dim, 3 * dim, False), "attn.proj": (dim, dim, True),
              "mlp.fc1": (dim, hidden, True), "mlp.fc2": (hidden, dim, True)}
    for (name, (n_in, n_out, bias)), layer in zip(shapes.items(), dense):
        weight, b = _linear(path, f"{label} {name}", layer, n_in, n_out, bias)
        out[f"{name}.weight"] = weight
        if bias:
            out[f"{name}.bias"] = b
    if set(biases) not in (set(), {"q", "v"}):
        raise ValueError(f"Keras weight file {path!r}: {label} has a {''.join(biases)}_bias "
                         f"without its pair (VideoMAE attention has q and v biases or none)")
    for name, value in biases.items():
        _expect(path, f"{label} {name}_bias", value, (dim,))
        out[f"attn.{name}_bias"] = value
    return {f"{prefix}.{k}": v for k, v in out.items()}


def _top_level(w, pretrain):
    """Our key of a weight outside the blocks, or None when it has no counterpart."""
    if w.leaf.startswith("mask_token"):
        return "mask_token"
    owner = w.layer.rsplit("/", 1)[-1]
    if owner not in _TOP or w.leaf not in _PARAM:
        return None
    key = _TOP[owner]
    if pretrain and key == "patch_embed.proj":
        key = "encoder." + key
    return f"{key}.{_PARAM[w.leaf]}"


def _check_block_indices(path, blocks):
    """Blocks of each kind must be numbered 1..n without a gap."""
    for kind in sorted({k for k, _ in blocks}):
        found = sorted(i for k, i in blocks if k == kind)
        missing = sorted(set(range(1, found[-1] + 1)) - set(found))
        if missing:
            raise ValueError(f"Keras weight file {path!r}: block TFBlock{kind}{missing[0]} is "
                             f"missing (blocks found: {', '.join(map(str, found))})")


def keras_to_ours(weights, path):
    """The port's weights (:func:`read_keras_h5`) -> our canonical state dict.

    Fine-tuned files give ``patch_embed.proj``, ``blocks.i.*``, ``fc_norm``, ``head``;
    pre-training files ``encoder.patch_embed.proj``, ``encoder.blocks.i.*``, ``encoder.norm``,
    ``encoder_to_decoder``, ``mask_token``, ``decoder.blocks.i.*``, ``decoder.norm``,
    ``decoder.head`` (VideoMAE's ``PretrainVisionTransformer`` keys).

    Raises:
        ValueError (one line, naming ``path``): no blocks, a block missing or of the wrong
            structure or shapes, fine-tuned and pre-training blocks mixed, or weights with no
            counterpart in VideoMAE.
    """
    weights = [_Weight(*w) for w in weights]
    _assign_qv_biases(weights, path)
    blocks = {}
    for w in weights:
        if w.block:
            blocks.setdefault(w.block, []).append(w)
    kinds = {k for k, _ in blocks}
    if not kinds:
        raise ValueError(f"Keras weight file {path!r} has no TFBlock<i> / TFBlockEncoder<i> "
                         f"layers: not a weight file of the TF/Keras VideoMAE port")
    if "" in kinds and kinds != {""}:
        raise ValueError(f"Keras weight file {path!r} mixes fine-tuned (TFBlock<i>) and "
                         f"pre-training (TFBlockEncoder<i> / TFBlockDecoder<i>) blocks")
    _check_block_indices(path, blocks)
    pretrain = kinds != {""}
    arrays, unknown = {}, []
    for (kind, index), ws in sorted(blocks.items()):
        prefix = f"{_BLOCK_PREFIX[kind]}.{index - 1}"  # Keras counts blocks from 1
        arrays.update(_block(path, f"TFBlock{kind}{index}", prefix, ws))
    for w in weights:
        if w.block:
            continue
        key = _top_level(w, pretrain)
        if key is None:
            unknown.append(w.name)
        elif key in arrays:
            raise ValueError(f"Keras weight file {path!r}: two weights map to our {key} "
                             f"(the second is {w.name!r})")
        else:
            arrays[key] = w.value
    if unknown:
        raise ValueError(f"Keras weight file {path!r}: {len(unknown)} weights with no "
                         f"counterpart in VideoMAE: {unknown[:8]}")
    key = "encoder.patch_embed.proj.weight" if pretrain else "patch_embed.proj.weight"
    if key in arrays:
        kernel = arrays[key]
        if kernel.ndim != 5:
            raise ValueError(f"Keras weight file {path!r}: patch_embed_proj kernel has shape "
                             f"{tuple(kernel.shape)}, expected Conv3D's (kt, kh, kw, in, out)")
        arrays[key] = kernel.transpose(4, 3, 0, 1, 2)  # (out, in, kt, kh, kw)
    for name in ("head", "encoder_to_decoder", "decoder.head"):
        if f"{name}.weight" in arrays:
            arrays[f"{name}.weight"] = arrays[f"{name}.weight"].T  # Dense (in, out) -> (out, in)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def load_keras_weights(path):
    """Read a TF/Keras port ``.h5`` weight file into our canonical state dict (see
    :func:`keras_to_ours`); what :func:`checkpoint.load_checkpoint` returns for ``.h5`` /
    ``.hdf5`` paths, so ``--finetune``, ``--path_t`` and the converter read them.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: one line naming ``path`` and what did not fit.
    """
    return keras_to_ours(read_keras_h5(path), path)
