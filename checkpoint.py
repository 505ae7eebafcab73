"""Checkpoints: atomic saving, safe loading (``weights_only=True``: a checkpoint never runs
code), auto-resume, and loading weights from every checkpoint layout users have.

Layouts (``checkpoint_kind``): ours and VideoMAE / MVD / MMKD pre-training (``encoder.*`` keys
plus decoder / projector), fine-tuned classifiers (``blocks.*``, ``fc_norm``, ``head``), bare
encoders, and Hugging Face ``transformers`` VideoMAE (``videomae.*``, separate q/k/v), inside
``model`` / ``module`` (DeepSpeed) / ``state_dict`` wrappers, with DDP ``module.`` prefixes,
as ``.pth`` / ``.bin`` / ``.safetensors`` files or Hugging Face / DeepSpeed directories.

All key remapping happens in one place, :func:`checkpoint_filter_fn` (timm's pattern): any
layout -> the *canonical* layout (encoder keys bare, as in a VideoMAE fine-tuned checkpoint;
``fc_norm``, ``head``, ``encoder_to_decoder``, ``mask_token``, ``decoder.*``, ``projector.*``
at the top) -> the target model's keys. The CNNs (``modeling_tpn``) have their own layouts
(ours, decisionforce/TPN's, mmaction2's), mapped by ``modeling_tpn.checkpoint_filter_fn``
(:func:`load_pretrained` dispatches on the model), and their ImageNet initialisation
(:func:`load_imagenet_init`). The Hugging Face name table and its inverse
(:func:`hf_to_ours`, :func:`ours_to_hf`) live here too; ``hf_interop.py`` builds the
``transformers`` configs and models around them.
"""
import glob
import os
import pickle
import re

import torch
import torch.nn.functional as F

import modeling_tpn
from modeling_encoder import VideoViTEncoder, sinusoid_table


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: into a temporary file in the same directory,
    flushed to disk, then renamed over ``path``, so a crash never leaves a torn file and the
    previous checkpoint stays until the new one is complete."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# Weight files looked for inside a directory, in order: Hugging Face (save_pretrained), then
# DeepSpeed (``engine.save_checkpoint``: a tag directory, or its parent with a ``latest`` file).
_DIR_FILES = ("model.safetensors", "pytorch_model.bin", "mp_rank_00_model_states.pt")


def checkpoint_file(path):
    """The weight file of ``path``: ``path`` itself, or the file inside a Hugging Face
    directory or a DeepSpeed checkpoint directory (following its ``latest`` tag).

    Raises:
        FileNotFoundError: nothing at ``path``, or a directory without a known weight file.
    """
    if path and os.path.isfile(path):
        return path
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):  # DeepSpeed: <dir>/latest names the tag directory
        with open(latest) as f:
            path = os.path.join(path, f.read().strip())
    for name in _DIR_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"checkpoint directory {path!r} holds none of {list(_DIR_FILES)} "
                            f"(sharded Hugging Face weights are not supported)")


def load_checkpoint(path):
    """Load a checkpoint file or directory (see :func:`checkpoint_file`) on the CPU:
    ``.safetensors`` with safetensors, anything else with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a tensors-only checkpoint (would need to run code) or is
            not a checkpoint at all.
    """
    path = checkpoint_file(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path!r} safely (weights_only=True): {first}") from e


def unwrap_state_dict(ckpt):
    """The parameter dict inside a checkpoint: its ``model``, ``module`` (DeepSpeed) or
    ``state_dict`` entry, or the checkpoint itself; DDP's ``module.`` prefixes removed.
    Idempotent: a plain state dict comes back unchanged."""
    for key in ("model", "module", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()
            if isinstance(v, torch.Tensor)}


def checkpoint_kind(ckpt):
    """Which layout a checkpoint (or state dict) has.

    Returns:
        ``'hf'`` (transformers VideoMAE: ``videomae.*`` / ``embeddings.*`` /
        ``*.attention.attention.*``), ``'pretrain'`` (``encoder.*``: VideoMAE / MVD / MMKD
        pre-training, our student or teacher), ``'finetune'`` (bare encoder keys with
        ``fc_norm`` / ``head``) or ``'encoder'`` (bare encoder keys only).
    Raises:
        ValueError: none of these; the message shows the first keys.
    """
    keys = list(unwrap_state_dict(ckpt))
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings."))
           or ".attention.attention." in k for k in keys):
        return "hf"
    if any(k.startswith("encoder.") for k in keys):
        return "pretrain"
    if any(k.startswith(("head.", "fc_norm.")) for k in keys):
        return "finetune"
    if any(k.startswith(("blocks.", "patch_embed.")) for k in keys):
        return "encoder"
    raise ValueError(f"unrecognised checkpoint layout ({len(keys)} tensors; first keys "
                     f"{keys[:6]}): expected VideoMAE/MVD/MMKD, ours or Hugging Face VideoMAE")


# ---------------------------------------------------------------------------------------------
# Hugging Face VideoMAE <-> ours (canonical layout). HF splits q/k/v into three Linears
# (query and value with biases, key without); ours has one ``qkv.weight [3D, D]`` plus
# ``q_bias`` / ``v_bias``. Older hub files spell the biases ``attention.attention.q_bias``.
# ---------------------------------------------------------------------------------------------
_HF_BLOCK = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj",
             "layernorm_after": "norm2", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
_HF_LAYERS = {"encoder.layer": "blocks", "decoder.decoder_layers": "decoder.blocks"}
_HF_TOP = {"embeddings.patch_embeddings.projection": "patch_embed.proj", "layernorm": "norm",
           "fc_norm": "fc_norm", "classifier": "head", "encoder_to_decoder": "encoder_to_decoder",
           "decoder.norm": "decoder.norm", "decoder.head": "decoder.head"}
_HF_ATTN = "attention.attention."
_HF_ENCODER_ROOTS = ("embeddings.", "encoder.", "layernorm.")  # under ``videomae.``


def _merge_qkv(prefix, parts):
    """HF ``query``/``key``/``value`` of one block -> our ``qkv.weight``, ``q_bias``, ``v_bias``.

    Raises:
        ValueError: a projection weight is missing, or a non-zero key bias (ours has none).
    """
    need = [f"{n}.weight" for n in ("query", "key", "value")]
    missing = [n for n in need if n not in parts]
    if missing:
        raise ValueError(f"Hugging Face checkpoint lacks {[_HF_ATTN + n for n in missing]} of "
                         f"our {prefix}")
    k_bias = parts.get("key.bias")
    if k_bias is not None and k_bias.abs().max() > 0:
        raise ValueError(f"{prefix}: the checkpoint has a non-zero key bias; VideoMAE attention "
                         f"has none (q and v biases only)")
    out = {prefix + "attn.qkv.weight": torch.cat([parts[n] for n in need], dim=0)}  # [3D, D]
    for ours, names in (("q_bias", ("query.bias", "q_bias")), ("v_bias", ("value.bias", "v_bias"))):
        found = [parts[n] for n in names if n in parts]
        if found:
            out[prefix + "attn." + ours] = found[0]
    return out


def hf_to_ours(state):
    """A transformers ``VideoMAEModel`` / ``VideoMAEForPreTraining`` /
    ``VideoMAEForVideoClassification`` state dict -> the canonical layout.

    Raises:
        ValueError: keys with no counterpart in ours (all listed), or a broken q/k/v.
    """
    out, qkv, unknown = {}, {}, []
    for key, value in state.items():
        name = key[len("videomae."):] if key.startswith("videomae.") else key
        layer = re.fullmatch(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)", name)
        if layer:
            prefix = f"{_HF_LAYERS[layer[1]]}.{layer[2]}."
            module, _, param = layer[3].rpartition(".")
            if module in _HF_BLOCK:
                out[f"{prefix}{_HF_BLOCK[module]}.{param}"] = value
            elif layer[3].startswith(_HF_ATTN):
                qkv.setdefault(prefix, {})[layer[3][len(_HF_ATTN):]] = value
            else:
                unknown.append(key)
            continue
        module, _, param = name.rpartition(".")
        if name == "mask_token":
            out[name] = value
        elif module in _HF_TOP:
            out[f"{_HF_TOP[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Hugging Face keys without a counterpart in ours ({len(unknown)}): "
                         f"{unknown[:12]}")
    for prefix, parts in qkv.items():
        out.update(_merge_qkv(prefix, parts))
    return out


def ours_to_hf(state, base_prefix="videomae."):
    """The canonical layout -> transformers names; encoder keys get ``base_prefix``
    (``'videomae.'`` for the pre-training / classification models, ``''`` for
    ``VideoMAEModel``). The inverse of :func:`hf_to_ours`.

    Raises:
        ValueError: keys with no Hugging Face counterpart (e.g. ``projector.*``), all listed.
    """
    inv_block = {v: k for k, v in _HF_BLOCK.items()}
    inv_layers = {v: k for k, v in _HF_LAYERS.items()}
    inv_top = {v: k for k, v in _HF_TOP.items()}
    out, unknown = {}, []
    for key, value in state.items():
        block = re.fullmatch(r"(blocks|decoder\.blocks)\.(\d+)\.(.+)\.(\w+)", key)
        module, _, param = key.rpartition(".")
        if block:
            prefix = f"{inv_layers[block[1]]}.{block[2]}."
            module, param = block[3], block[4]
            if module == "attn.qkv" and param == "weight":
                for n, w in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{prefix}{_HF_ATTN}{n}.weight"] = w
            elif module == "attn" and param in ("q_bias", "v_bias"):
                out[f"{prefix}{_HF_ATTN}{'query' if param == 'q_bias' else 'value'}.bias"] = value
            elif module in inv_block:
                out[f"{prefix}{inv_block[module]}.{param}"] = value
            else:
                unknown.append(key)
        elif key == "mask_token":
            out[key] = value
        elif module in inv_top:
            out[f"{inv_top[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"keys without a Hugging Face VideoMAE counterpart ({len(unknown)}): "
                         f"{unknown[:12]}")
    return {(base_prefix + k if k.startswith(_HF_ENCODER_ROOTS) else k): v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# the one filter: any layout -> the target model's keys
# ---------------------------------------------------------------------------------------------
_ENCODER_ROOTS = ("patch_embed.", "blocks.", "norm.", "pos_embed")
_PRETRAINING_PARTS = ("decoder", "encoder_to_decoder", "mask_token", "projector")


def canonical_state_dict(ckpt):
    """Any supported checkpoint -> ``(kind, state)`` with ``state`` in the canonical layout
    (module docstring). Raises ValueError for an unknown layout or unmappable HF keys."""
    state = unwrap_state_dict(ckpt)
    kind = checkpoint_kind(state)
    if kind == "hf":
        state = hf_to_ours(state)
    elif kind == "pretrain":
        state = {k[len("encoder."):] if k.startswith("encoder.") else k: v
                 for k, v in state.items()}
    return kind, state


def encoder_state_dict(state):
    """Keys relative to the encoder: a pre-training checkpoint's encoder entries (decoder,
    projector and mask token dropped), or a fine-tuned checkpoint's keys as they are
    (``fc_norm`` / ``head`` included); Hugging Face checkpoints are renamed first."""
    _, state = canonical_state_dict(state)
    return {k: v for k, v in state.items()
            if k.startswith(_ENCODER_ROOTS) or not k.startswith(_PRETRAINING_PARTS)}


def resize_pos_embed(table, src_grid, dst_grid):
    """Trilinear resize of a position table over the token grid.

    Args:
        table: ``[1, t*h*w, D]`` (or ``[t*h*w, D]``), tokens frame-major ``(t, h, w)``.
        src_grid, dst_grid: ``(t, h, w)`` token grids of the table and of the target.
    Returns:
        ``[1, T*H*W, D]`` in ``table``'s dtype.
    Raises:
        ValueError: ``table`` does not have ``prod(src_grid)`` tokens.
    """
    d = table.shape[-1]
    n = table.numel() // d
    if n != src_grid[0] * src_grid[1] * src_grid[2]:
        raise ValueError(f"position table of {n} tokens does not fit the grid {tuple(src_grid)}")
    x = table.reshape(1, *src_grid, d).permute(0, 4, 1, 2, 3).float()  # [1, D, t, h, w]
    x = F.interpolate(x, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return x.permute(0, 2, 3, 4, 1).reshape(1, -1, d).to(table.dtype)  # [1, N, D]


def _infer_grid(n, dst_grid):
    """A ``(t, h, w)`` grid of ``n`` tokens: ``dst_grid`` itself, or keeping its ``t`` with a
    square ``h = w``, or keeping its ``(h, w)``. Raises ValueError when none fits."""
    t, h, w = dst_grid
    if n == t * h * w:
        return tuple(dst_grid)
    side = round((n / t) ** 0.5)
    if n % t == 0 and side * side * t == n:
        return (t, side, side)
    if n % (h * w) == 0:
        return (n // (h * w), h, w)
    raise ValueError(f"cannot tell the (t, h, w) grid of a {n}-token position table for the "
                     f"model's grid {tuple(dst_grid)}; pass src_grid")


def _position_table(table, grid, src_grid=None):
    """A checkpoint's ``pos_embed`` for a model of token grid ``grid``: None when it is the
    fixed sinusoid table (the model builds its own, for any size), else the learned table
    resized to ``grid`` (``[1, N, D]``)."""
    n, d = table.numel() // table.shape[-1], table.shape[-1]
    if torch.allclose(table.float().reshape(1, n, d), sinusoid_table(n, d), atol=1e-4):
        return None
    src = tuple(src_grid) if src_grid else _infer_grid(n, grid)
    return table.reshape(1, n, d) if src == tuple(grid) else resize_pos_embed(table, src, grid)


def checkpoint_filter_fn(ckpt, model, src_grid=None):
    """Any supported checkpoint -> a state dict in ``model``'s keys (the one place keys are
    remapped).

    Args:
        ckpt: a loaded checkpoint (any wrapper) or state dict.
        model: the target: a classifier / :class:`VideoViTEncoder` (encoder keys bare) or a
            module with an ``encoder`` attribute (student, teacher: ``encoder.*``).
        src_grid: ``(t, h, w)`` of a learned position table in the checkpoint, when it
            cannot be inferred (see :func:`_infer_grid`).
    Returns:
        state dict. A learned ``pos_embed`` comes back resized to the model's token grid
        under the model's key (``[encoder.]pos_embed``); a fixed sinusoid table is dropped.
    Raises:
        ValueError: unknown layout, unmappable HF keys, ungridded position table.
    """
    _, state = canonical_state_dict(ckpt)
    prefix = "encoder." if isinstance(getattr(model, "encoder", None), VideoViTEncoder) else ""
    table = state.pop("pos_embed", None)
    if table is not None:
        table = _position_table(table, model.patch_embed.grid_size, src_grid)
        if table is not None:
            state["pos_embed"] = table
    return {(prefix + k if k.startswith(_ENCODER_ROOTS) else k): v for k, v in state.items()}


def load_weights(module, state, source, allow_missing=(), allow_unexpected=()):
    """Load ``state`` into ``module``, failing loudly instead of leaving weights random.

    Args:
        module: target ``nn.Module``.
        state: parameter dict, keys relative to ``module``.
        source: name of the checkpoint for messages.
        allow_missing / allow_unexpected: regexes of keys that may be absent / left over
            (e.g. a new classification head, a pre-training final norm).
    Returns:
        ``(missing, unexpected)`` key lists that were allowed.
    Raises:
        ValueError: listing every missing, unexpected or wrongly shaped key that is not allowed.
    """
    own = module.state_dict()
    shape_bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_missing = [k for k in missing if not any(re.match(p, k) for p in allow_missing)]
    bad_unexpected = [k for k in unexpected if not any(re.match(p, k) for p in allow_unexpected)]
    if shape_bad or bad_missing or bad_unexpected:
        lines = [f"checkpoint {source} does not fit {type(module).__name__}:"]
        for title, keys in (("wrong shape", shape_bad), ("missing", bad_missing),
                            ("unexpected", bad_unexpected)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:12])
                             + (" ..." if len(keys) > 12 else ""))
        raise ValueError("\n".join(lines))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


# The encoder proper: these must all be in the checkpoint and fit, always; anything else
# (heads, norms after the blocks, decoders, projectors) may be new or left over.
_ENCODER_CORE = r"(encoder\.)?(patch_embed|blocks)\."
_NOT_ENCODER_CORE = rf"(?!{_ENCODER_CORE})"


def _apply_position_table(model, state):
    """Install the learned ``pos_embed`` of ``state`` (already resized to the model's grid by
    :func:`checkpoint_filter_fn`) in the model's encoder as a persistent buffer, so that the
    model's own checkpoints keep it; the key stays in ``state`` and loads like any other. The
    table stays fixed: our encoder does not train position tables.

    Raises:
        ValueError: the table's width is not the encoder's.
    """
    for key in ("pos_embed", "encoder.pos_embed"):
        if key in state:
            encoder = model.encoder if key.startswith("encoder.") else model
            table = state[key]
            if table.shape != encoder.pos_embed.shape:
                raise ValueError(f"position table {key} {tuple(table.shape)} does not fit the "
                                 f"model's {tuple(encoder.pos_embed.shape)}")
            encoder.register_buffer("pos_embed", table.to(encoder.pos_embed.dtype).clone(),
                                    persistent=True)
            print(f"using the checkpoint's learned position table {tuple(table.shape)}")


def load_pretrained(model, ckpt, source, strict=False, src_grid=None):
    """Load any supported checkpoint (a path, or a loaded checkpoint) into ``model`` through
    :func:`checkpoint_filter_fn`.

    Every encoder weight (``patch_embed``, ``blocks``: q/v biases included) must be present and
    of the right shape. Unless ``strict``, everything else may be new (a classifier's
    ``fc_norm`` / head, a student's decoder) or left over (a pre-training decoder, projector or
    final norm), and a head of another number of classes is dropped (VideoMAE's behaviour).

    Returns:
        ``(missing, unexpected)``: the allowed missing / unused keys, for the log.
    Raises:
        FileNotFoundError: no checkpoint at ``source``.
        ValueError: naming every missing, unexpected or wrongly shaped key not allowed.
    """
    if isinstance(ckpt, str):
        ckpt = load_checkpoint(ckpt)
    if isinstance(model, modeling_tpn.VideoResNetClassifier):
        return _load_cnn(model, ckpt, source, strict)
    state = checkpoint_filter_fn(ckpt, model, src_grid)
    _apply_position_table(model, state)
    if strict:
        return load_weights(model, state, source)
    own = model.state_dict()
    dropped = [k for k, v in state.items() if k in own and own[k].shape != v.shape
               and not re.match(_ENCODER_CORE, k)]
    for k in dropped:
        del state[k]
    return load_weights(model, state, source, allow_missing=(_NOT_ENCODER_CORE,),
                        allow_unexpected=(_NOT_ENCODER_CORE,))


def _load_cnn(model, ckpt, source, strict=False):
    """:func:`load_pretrained` for a ``modeling_tpn.VideoResNetClassifier``: any CNN layout
    (``modeling_tpn.checkpoint_filter_fn``). Unless ``strict``, the backbone must be complete
    and fit, the neck and heads may be new (a baseline checkpoint into a TPN model) or left
    over, and heads of another number of classes are dropped (fine-tuning on another data
    set)."""
    layout, state = modeling_tpn.checkpoint_filter_fn(unwrap_state_dict(ckpt))
    print(f"{source}: {layout} CNN checkpoint layout")
    if strict:
        return load_weights(model, state, source)
    own = model.state_dict()
    for k in [k for k, v in state.items() if k in own and own[k].shape != v.shape
              and re.match(r"(cls_head\.fc_cls|neck\.aux_head\.fc)\.", k)]:
        del state[k]
    return load_weights(model, state, source, allow_missing=(r"(?!backbone\.)",),
                        allow_unexpected=(r"(?!backbone\.)",))


def load_imagenet_init(model, path):
    """Initialise a CNN classifier's backbone from torchvision ImageNet ResNet weights at
    ``path`` (``--imagenet_init``: the state dict of ``torchvision.models.resnet50`` /
    ``resnet101``, as their ``.pth`` files hold it, possibly in a ``state_dict`` / ``model``
    wrapper), loaded safely; the ImageNet ``fc`` is dropped and 2-D kernels are inflated where
    the backbone is 3-D (``modeling_tpn.imagenet_to_backbone``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a tensors-only checkpoint, or a missing, left-over or wrongly shaped
            backbone weight (all listed; e.g. a ResNet-50 file for a ResNet-101).
    """
    state = modeling_tpn.imagenet_to_backbone(unwrap_state_dict(load_checkpoint(path)),
                                              model.backbone)
    return load_weights(model.backbone, state, path)


def load_teacher(teacher, path):
    """Load a teacher's encoder from any pre-training, fine-tuned or Hugging Face checkpoint
    at ``path`` (``--path_t``). A final norm, classifier head or pixel decoder in the file is
    ignored; anything the encoder needs and does not find is an error."""
    return load_pretrained(teacher.encoder, path, path)


def latest_checkpoint(output_dir):
    """The newest checkpoint in ``output_dir``: the ``checkpoint-<epoch>.pth`` of the highest
    epoch, else ``output_dir`` itself when DeepSpeed saved there (its ``latest`` tag file);
    None when there is neither or ``output_dir`` is empty."""
    if not output_dir:
        return None
    found = []
    for p in glob.glob(os.path.join(output_dir, "checkpoint-*.pth")):
        m = re.fullmatch(r"checkpoint-(\d+)\.pth", os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    if found:
        return max(found)[1]
    return output_dir if os.path.isfile(os.path.join(output_dir, "latest")) else None
