"""Checkpoints: atomic saving, safe loading (``weights_only=True``: a checkpoint never runs
code; the reference scripts' pickled ``argparse.Namespace`` is the one object allowed besides
tensors), auto-resume, and loading weights from every checkpoint layout users have, with the
position table they were trained with (VideoMAE's 1-D or MVD's 3-D table, recognised when
stored, or recorded in our ``args``; :func:`adopt_position_table`).

Layouts (``checkpoint_kind``): ours and VideoMAE / MMKD pre-training (``encoder.*`` keys
plus decoder / projector), MVD pre-training (bare encoder keys plus its feature decoders and
stored tables), fine-tuned classifiers (``blocks.*``, ``fc_norm``, ``head``), bare
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
import argparse
import os
import re
import shutil

import torch
import torch.nn.functional as F

import modeling_resnet3d
import modeling_tpn
from modeling_encoder import (POS_EMBED_TABLES, VideoViTEncoder, sincos_3d_table,
                              sinusoid_table)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, read-only or failing storage).
    The message is one line naming the file, the reason and the free space left."""

    @classmethod
    def from_exception(cls, path, e):
        """The error for ``e`` (an ``OSError``, or the ``RuntimeError`` torch's zip writer
        raises) met while writing ``path``; its errno is looked for along the exception chain."""
        chain = [e]
        while len(chain) < 10 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        reasons = [x.strerror for x in chain if isinstance(x, OSError) and x.strerror]
        reason = reasons[0] if reasons else (str(e).strip().splitlines() or [type(e).__name__])[0]
        return cls(f"cannot write checkpoint {path}: {reason} ({_free_space(path)} free on "
                   f"its file system); earlier checkpoints are untouched")


def _free_space(path):
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024


# Largest |weight| a checkpoint is written with. Trained ViT and CNN weights (BatchNorm
# statistics included) are O(1)-O(100); a run whose loss exploded on its last update holds
# weights of 1e20 and beyond while its loss still looks finite.
WEIGHT_BOUND = 1e6


class DivergedWeightsError(CheckpointWriteError):
    """The weights to be saved are non-finite or beyond :data:`WEIGHT_BOUND`; nothing was
    written. A CheckpointWriteError, so every script stops on it as on a failed write."""


def weights_problem(state, bound=WEIGHT_BOUND):
    """Why the floating tensors of ``state`` (a state dict) are not sane, or None: the first
    key holding a NaN / inf, else the key with the largest ``|w|`` when that exceeds
    ``bound``."""
    worst, worst_key = 0.0, None
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()) or not value.numel():
            continue
        if not torch.isfinite(value).all():
            return f"{key} holds NaN or inf"
        m = value.detach().abs().max().item()
        if m > worst:
            worst, worst_key = m, key
    return f"max |w| {worst:.3g} in {worst_key} (bound {bound:g})" if worst > bound else None


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: into a temporary file ``<path>.tmp.<pid>`` in
    the same directory, flushed to disk, then renamed over ``path``, so a crash never leaves a
    torn file and the previous checkpoint stays until the new one is complete. Temporary
    files of killed runs are removed when the next run claims the directory
    (``run_dir.claim_output_dir``). Weights (``state['model']``) that are non-finite or
    beyond :data:`WEIGHT_BOUND` are never written, so the newest checkpoint of a run always
    holds sane weights.

    Raises:
        DivergedWeightsError: (a CheckpointWriteError) insane weights; one line naming the
            tensor and the last checkpoint of the directory, whose weights were sane.
        CheckpointWriteError: the file could not be written (disk full, ...); the temporary
            file is removed first.
    """
    problem = weights_problem(state.get("model") or {}) if isinstance(state, dict) else None
    if problem:
        last = latest_checkpoint(os.path.dirname(os.path.abspath(path)))
        raise DivergedWeightsError(f"not writing checkpoint {path}: the weights diverged "
                                   f"({problem}); last checkpoint whose weights were sane: "
                                   f"{last or 'none written yet'}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise CheckpointWriteError.from_exception(path, e) from None


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


# Globals a checkpoint may hold beyond torch's tensors-only defaults. VideoMAE's, MVD's and
# MMKD's ``save_model`` pickle the run's ``argparse.Namespace`` as ``args``: a plain attribute
# container whose unpickling calls no code. Allowed only inside our own loads (a context
# manager), never process-wide.
SAFE_GLOBALS = (argparse.Namespace,)
RESAVE_TOOL = "tools/resave_checkpoint.py"
# What a weight file may be, for messages about files that are none of it.
EXPECTED_FILES = ("a torch.save checkpoint (zip archive or legacy pickle), a .safetensors file, "
                  "or a Hugging Face / DeepSpeed directory")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds globals safe loading refuses (``refused``: their names)."""

    def __init__(self, message, refused):
        super().__init__(message)
        self.refused = refused


def load_checkpoint(path):
    """Load a checkpoint file or directory (see :func:`checkpoint_file`) on the CPU:
    ``.safetensors`` with safetensors, anything else with ``torch.load(weights_only=True)``
    with :data:`SAFE_GLOBALS` (``argparse.Namespace``) allowed, so the files the VideoMAE,
    MVD and MMKD training scripts write load as they are, and nothing in a file runs code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: (a ValueError) one line naming the file and the globals safe
            loading refuses, with the command that re-saves a trusted file as tensors only
            (:data:`RESAVE_TOOL`).
        ValueError: one line naming the file when it is not a checkpoint at all (text,
            empty, truncated) or cannot be read.
    """
    if str(path).lower().endswith((".h5", ".hdf5")):  # the TF/Keras port's weights, via h5py
        from keras_interop import load_keras_weights
        return _checked_dtypes(load_keras_weights(path), path)  # already canonical
    release = read_release_config(path)
    path = checkpoint_file(path)
    if release is not None:  # weights + the run's recorded settings, as a checkpoint has them
        return _checked_dtypes({"model": _load_safetensors(path),
                                "args": release.get("args") or {}}, path)
    if path.endswith(".safetensors"):
        return _checked_dtypes(_load_safetensors(path), path)
    return _checked_dtypes(_load_torch(path), path)


# A release directory (tools/export_release.py): model.safetensors (weights only) and a
# config.json carrying this marker, the model's settings and the run's arguments.
RELEASE_FORMAT = "video-distillation-release/1"


def read_release_config(path):
    """The ``config.json`` of a release directory (:data:`RELEASE_FORMAT`), or None for
    anything else (a file, a Hugging Face or DeepSpeed directory)."""
    config = os.path.join(str(path), "config.json")
    if not os.path.isdir(str(path)) or not os.path.isfile(config):
        return None
    import json
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {config}: {e}") from None
    return data if isinstance(data, dict) and data.get("release_format") == RELEASE_FORMAT else None


# Non-floating tensors a model legitimately holds: BatchNorm's update counter.
_INTEGER_BUFFERS = ("num_batches_tracked",)


def _checked_dtypes(ckpt, path):
    """``ckpt`` with its weights checked: integer / bool weights (a file of indices or masks,
    or a broken conversion: it would load as a model of zeros) are refused; float64 weights
    are cast to float32 in place, with a note. Returns ``ckpt``.

    Raises:
        ValueError: one line naming the file and the non-floating keys with their dtypes.
    """
    weights = ckpt
    for key in ("model", "module", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            weights = ckpt[key]
            break
    if not isinstance(weights, dict):
        return ckpt
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    bad = [k for k, v in tensors.items()
           if not v.is_floating_point() and not k.endswith(_INTEGER_BUFFERS)]
    if bad:
        shown = ", ".join(f"{k} ({str(tensors[k].dtype).replace('torch.', '')})" for k in bad[:6])
        raise ValueError(f"checkpoint {path!r} holds {len(bad)} non-floating weight tensors "
                         f"({shown}{' ...' if len(bad) > 6 else ''}); model weights are "
                         f"float32, float16 or bfloat16: it is not a model's weights, or was "
                         f"converted wrongly")
    doubles = [k for k, v in tensors.items() if v.dtype == torch.float64]
    for k in doubles:
        weights[k] = tensors[k].float()
    if doubles:
        print(f"note: {path}: {len(doubles)} float64 weight tensors (e.g. {doubles[0]}) cast "
              f"to float32")
    return ckpt


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable .safetensors file ({_one_line(e)}); "
                         f"expected {EXPECTED_FILES}") from None


def _load_torch(path):
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path!r}: {e.strerror or e}") from None
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # whatever the safe unpickler meets in a bad file: one line
        refused = _refused_globals(path, e)
        if refused:
            raise UnsafeCheckpointError(
                f"checkpoint {path!r} holds Python objects that safe loading (torch.load "
                f"weights_only=True) refuses because unpickling them could run code: "
                f"{', '.join(refused)}. If you trust the file, re-save its weights as tensors "
                f"only: python {RESAVE_TOOL} {path} {_resaved_name(path)}", refused) from None
        raise ValueError(f"{path!r} is not a checkpoint: it is {_describe_file(head, e)}; "
                         f"expected {EXPECTED_FILES}") from None


# torch's advice around the actual reason of a refusal, which our messages replace
_TORCH_BOILERPLATE = ("Weights only load failed", "In PyTorch 2.6", "(1)", "(2)", "Please file",
                      "Check the documentation", "Re-running")


def _one_line(e):
    """The reason in an exception's text, in one short line: torch's boilerplate and
    terminal colour codes removed, the first sentence of what remains."""
    text = _ANSI.sub("", str(e)).split("WeightsUnpickler error:")[-1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(_TORCH_BOILERPLATE)]
    if not lines:
        return type(e).__name__
    first = lines[0].split(". ")[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "..."


def _refused_globals(path, e):
    """The globals ``torch.load(weights_only=True)`` refused in ``path`` (all of them for a
    zip checkpoint, read without unpickling; the first one otherwise), or [] when ``e`` is
    not such a refusal."""
    m = re.search(r"GLOBAL (\S+)", _ANSI.sub("", str(e)))  # "[Un]supported ... GLOBAL x.y ..."
    if not m:
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: only the name in torch's message
        found = []
    return [g for g in found if g not in allowed] or [m.group(1)]


def _resaved_name(path):
    root, ext = os.path.splitext(path)
    return f"{root}_tensors{ext or '.pth'}"


def _describe_file(head, e):
    """What a file that ``torch.load`` could not read looks like (``head``: its first
    bytes), for the message."""
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return f"a damaged zip archive, truncated or not written by torch.save ({_one_line(e)})"
    if head.startswith(b"\x80"):
        return f"a pickle that safe loading cannot read ({_one_line(e)})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as u:  # text whose 64th byte cuts a character is still text
        if u.start < len(head) - 3:
            return f"binary data starting with {head[:16]!r}"
        text = head[:u.start].decode("utf-8")
    text = text.lstrip("\ufeff")  # a byte-order mark
    if all(c.isprintable() or c.isspace() for c in text):
        return f"a text file starting with {text.strip()[:40]!r}"
    return f"binary data starting with {head[:16]!r}"


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
        ``*.attention.attention.*``), ``'pretrain'`` (``encoder.*``: VideoMAE / MMKD
        pre-training, our student or teacher; MVD pre-training: bare encoder keys with
        ``mask_token_img`` / ``mask_token_vid``), ``'finetune'`` (bare encoder keys with
        ``fc_norm`` / ``head``) or ``'encoder'`` (bare encoder keys only).
    Raises:
        ValueError: none of these; the message shows the first keys.
    """
    keys = list(unwrap_state_dict(ckpt))
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings."))
           or ".attention.attention." in k for k in keys):
        return "hf"
    if any(k.startswith("encoder.") for k in keys) or any(k in keys for k in _MVD_DECODER_KEYS):
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
_PRETRAINING_PARTS = ("decoder", "encoder_to_decoder", "mask_token", "projector", "down_")
# MVD's feature decoders: their mask tokens mark its layout; their stored fixed tables
_MVD_DECODER_KEYS = ("mask_token_img", "mask_token_vid")
_DECODER_TABLES = ("pos_embed_img", "pos_embed_vid")


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
    return {k: v for k, v in state.items() if k not in _DECODER_TABLES
            and (k.startswith(_ENCODER_ROOTS) or not k.startswith(_PRETRAINING_PARTS))}


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


# A fixed table stored in half precision (fp16 / bf16 rounding <= 2e-3) still matches its
# formula; a trained table is far from both.
TABLE_ATOL = 5e-3


def position_table_name(kind):
    """``'MVD 3-D sin-cos table'``, ``'VideoMAE 1-D sinusoid table'`` or ``'learned
    position table'``, for messages."""
    return POS_EMBED_TABLES.get(kind, "learned position table")


def recognise_position_table(table, grid, src_grid=None):
    """Which fixed formula a stored ``pos_embed`` is, by comparison with both
    (:func:`modeling_encoder.sinusoid_table`, :func:`modeling_encoder.sincos_3d_table`).

    Args:
        table: ``[1, n, D]`` or ``[n, D]``.
        grid: the model's ``(t, h, w)``; the table's own grid is inferred from it (see
            :func:`_infer_grid`) unless ``src_grid`` gives it.
    Returns:
        ``(kind, src)``: ``kind`` a :data:`POS_EMBED_TABLES` key or ``'learned'``; ``src``
        the table's grid, None when it cannot be told (a 1-D table needs none).
    """
    n, d = table.numel() // table.shape[-1], table.shape[-1]
    x = table.detach().float().reshape(1, n, d)
    if torch.allclose(x, sinusoid_table(n, d), atol=TABLE_ATOL):
        return "sincos_1d", None
    try:
        src = tuple(src_grid) if src_grid else _infer_grid(n, grid)
    except ValueError:
        return "learned", None
    if d % 16 == 0 and torch.allclose(x, sincos_3d_table(src, d), atol=TABLE_ATOL):
        return "sincos_3d", src
    return "learned", src


def _position_table(table, grid, src_grid=None):
    """A checkpoint's ``pos_embed`` for a model of token grid ``grid``: None when it is a
    fixed table (the model builds its own, for any size), else the learned table resized to
    ``grid`` (``[1, N, D]``). Raises ValueError when a learned table's grid cannot be told."""
    kind, src = recognise_position_table(table, grid, src_grid)
    if kind != "learned":
        return None
    n, d = table.numel() // table.shape[-1], table.shape[-1]
    src = src or _infer_grid(n, grid)  # raises, asking for src_grid
    return table.reshape(1, n, d) if src == tuple(grid) else resize_pos_embed(table, src, grid)


def checkpoint_position_table(ckpt, grid, src_grid=None):
    """What a checkpoint says about its position table.

    Returns:
        ``(kind, evidence)``: its stored ``pos_embed`` recognised (:func:`recognise_position_table`;
        evidence ``'stored'``: MVD pre-training files, learned tables), else the ``pos_embed``
        of its saved run arguments (ours record ``--pos_embed``; evidence ``'args'``), else
        ``('sincos_3d', 'mvd_args')`` when those arguments are MVD fine-tuning's
        (:func:`mvd_finetune_flags`), else ``(None, None)`` (VideoMAE's fine-tuned and
        Hugging Face files record none).
    """
    _, state = canonical_state_dict(ckpt)
    if "pos_embed" in state:
        return recognise_position_table(state["pos_embed"], grid, src_grid)[0], "stored"
    saved = saved_args(ckpt)
    kind = saved.get("pos_embed")
    if kind in POS_EMBED_TABLES:
        return kind, "args"
    if mvd_finetune_flags(saved):  # MVD's classifier builds the 3-D table and stores none
        return "sincos_3d", "mvd_args"
    return None, None


# Flags only MVD's run_class_finetuning.py has (VideoMAE's, MMKD's and ours have none of
# them): a fine-tuned file whose saved arguments carry them was written by MVD.
MVD_FINETUNE_FLAGS = ("use_cls_token", "merge_test", "eval_log_name", "remove_pos_emb")


def mvd_finetune_flags(saved):
    """The :data:`MVD_FINETUNE_FLAGS` in ``saved`` (a :func:`saved_args` dict).

    Raises:
        ValueError: the file was fine-tuned with ``--use_cls_token`` (a class token, which
            our classifiers do not have)."""
    found = [f for f in MVD_FINETUNE_FLAGS if f in saved]
    if found and saved.get("use_cls_token"):
        raise ValueError("the checkpoint was fine-tuned by MVD with --use_cls_token (a class "
                         "token before the patch tokens); our classifiers mean-pool the patch "
                         "tokens and have no class token")
    return found


def saved_args(ckpt):
    """The run arguments a checkpoint saved, as a dict: ours (``vars(args)``) or the
    reference scripts' ``argparse.Namespace``; ``{}`` when it has none."""
    saved = ckpt.get("args") if isinstance(ckpt, dict) else None
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    return saved if isinstance(saved, dict) else {}


def adopt_position_table(model, ckpt, source, src_grid=None):
    """Give ``model`` the fixed position table its checkpoint was trained with, and print
    which table it uses.

    The checkpoint's word wins over the table ``model`` was built with (``--pos_embed``): a
    recognised fixed table it stores, or the one its saved arguments record; a note says so
    when they differ (the weights were trained with the checkpoint's table; any other gives
    wrong features silently). A learned table is left to :func:`load_pretrained`. A file
    that records none (VideoMAE's fine-tuned and Hugging Face files) leaves the model's own;
    MVD's fine-tuned files get the 3-D table, recognised from MVD-only flags in their saved
    arguments (:data:`MVD_FINETUNE_FLAGS`).

    Args:
        model: an encoder, classifier, student or teacher (``patch_embed``,
            ``pos_embed_type``, ``set_position_table``).
        ckpt: the loaded checkpoint; source: its name for the message.
    Returns:
        the kind the model uses now.
    """
    kind, evidence = checkpoint_position_table(ckpt, model.patch_embed.grid_size, src_grid)
    own = model.pos_embed_type
    where = {"stored": "stored in", "args": "recorded in the arguments of"}.get(
        evidence, f"which MVD's fine-tuning builds (the saved arguments carry MVD's flags "
                  f"{', '.join(mvd_finetune_flags(saved_args(ckpt)))}) for")
    if kind is None:
        print(f"position table: {position_table_name(own)} (--pos_embed {own}); {source} "
              f"records none")
    elif kind != "learned" and kind != own:
        model.set_position_table(kind)
        print(f"position table: {position_table_name(kind)}, {where} {source}, instead of "
              f"--pos_embed {own}")
    elif kind != "learned":
        print(f"position table: {position_table_name(kind)}, {where} {source}")
    return model.pos_embed_type


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
        under the model's key (``[encoder.]pos_embed``); a fixed table (1-D or 3-D) is dropped
        (:func:`adopt_position_table` gives the model its kind), and so are the fixed tables
        MVD stores for its feature decoders (``pos_embed_img``, ``pos_embed_vid``: our
        decoders build theirs like the encoder's).
    Raises:
        ValueError: unknown layout, unmappable HF keys, ungridded position table, a learned
            feature-decoder table.
    """
    _, state = canonical_state_dict(ckpt)
    prefix = "encoder." if isinstance(getattr(model, "encoder", None), VideoViTEncoder) else ""
    for key in _DECODER_TABLES:
        if key in state:
            kind, _ = recognise_position_table(state.pop(key), model.patch_embed.grid_size)
            if kind == "learned":
                raise ValueError(f"the checkpoint's feature-decoder table {key} is neither MVD's "
                                 f"3-D nor VideoMAE's 1-D fixed table; learned decoder tables "
                                 f"are not supported")
    table = state.pop("pos_embed", None)
    if table is not None:
        table = _position_table(table, model.patch_embed.grid_size, src_grid)
        if table is not None:
            state["pos_embed"] = table
    return {(prefix + k if k.startswith(_ENCODER_ROOTS) else k): v for k, v in state.items()}


class KeyMismatchError(ValueError):
    """A state dict that does not fit its module: the first line names the checkpoint and
    the module, each further line one kind of mismatch (wrong shape, missing, unexpected)."""


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
        KeyMismatchError: (a ValueError) listing every missing, unexpected or wrongly shaped
            key that is not allowed.
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
        raise KeyMismatchError("\n".join(lines))
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
            encoder.pos_embed_type = "learned"
            print(f"position table: the checkpoint's learned position table {tuple(table.shape)}")


def load_pretrained(model, ckpt, source, strict=False, src_grid=None):
    """Load any supported checkpoint (a path, or a loaded checkpoint) into ``model`` through
    :func:`checkpoint_filter_fn`.

    Every encoder weight (``patch_embed``, ``blocks``: q/v biases included) must be present and
    of the right shape. Unless ``strict``, everything else may be new (a classifier's
    ``fc_norm`` / head, a student's decoder) or left over (a pre-training decoder, projector or
    final norm), and a head of another number of classes is dropped (VideoMAE's behaviour).
    The position table follows the checkpoint (:func:`adopt_position_table`; a learned one
    is installed, resized to the model's grid).

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
    adopt_position_table(model, ckpt, source, src_grid)
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
    adopt_tsm_shift(model, ckpt, source, layout)
    if strict:
        return load_weights(model, state, source)
    own = model.state_dict()
    for k in [k for k, v in state.items() if k in own and own[k].shape != v.shape
              and re.match(r"(cls_head\.fc_cls|neck\.aux_head\.fc)\.", k)]:
        del state[k]
    return load_weights(model, state, source, allow_missing=(r"(?!backbone\.)",),
                        allow_unexpected=(r"(?!backbone\.)",))


def checkpoint_shift_place(ckpt, layout):
    """The TSM shift place (``modeling_resnet3d.TSM_SHIFT_PLACES``) a CNN checkpoint was trained
    with, and the evidence, or ``(None, None)`` when it does not tell.

    mmaction2's files use the residual shift (``shift_place='blockres'``); decisionforce/TPN's
    (its neck layout, or its mmcv ``{'meta', 'state_dict'}`` wrapper around torchvision keys
    for the baselines) the in-place one (its default ``tsm_position``); ours record
    ``tsm_shift`` in their saved arguments.

    Args:
        ckpt: the loaded checkpoint (with its wrapper); layout:
            ``modeling_tpn.checkpoint_layout``'s.
    """
    if layout == "mmaction2":
        return "residual", "the mmaction2 layout"
    if layout == "original" or (isinstance(ckpt, dict) and "state_dict" in ckpt
                                and "meta" in ckpt and "model" not in ckpt):
        return "inplace", "the decisionforce/TPN layout"
    place = saved_args(ckpt).get("tsm_shift")
    return ((place, "the saved arguments") if place in modeling_resnet3d.TSM_SHIFT_PLACES
            else (None, None))


def adopt_tsm_shift(model, ckpt, source, layout=None):
    """Give a TSM classifier the shift place its checkpoint was trained with
    (:func:`checkpoint_shift_place`) and print which it uses; like the position table, the
    checkpoint's word wins over ``--tsm_shift`` (the other place gives other features from
    the same weights). Nothing for other models.

    Returns:
        the place the model uses now, or None (not a TSM model).
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, modeling_resnet3d.TSMResNet):
        return None
    if layout is None:
        layout = modeling_tpn.checkpoint_layout(unwrap_state_dict(ckpt))
    place, evidence = checkpoint_shift_place(ckpt, layout)
    own = backbone.shift_place
    if place is None:
        print(f"TSM shift: {own} (--tsm_shift); {source} records none")
    elif place != own:
        backbone.set_shift_place(place)
        print(f"TSM shift: {modeling_resnet3d.TSM_SHIFT_PLACES[place]}, from {evidence} of "
              f"{source}, instead of --tsm_shift {own}")
    else:
        print(f"TSM shift: {modeling_resnet3d.TSM_SHIFT_PLACES[place]}, from {evidence} of {source}")
    return backbone.shift_place


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


def load_image_teacher(teacher, path):
    """Load an ImageMAE ViT (MAE's ``mae_pretrain_vit_*.pth``, or any timm-layout ViT
    checkpoint) into an :class:`modeling_teacher.ImageTeacher`
    (``--image_teacher_model_ckpt_path``).

    As MVD loads its teachers: the ``model`` / ``module`` wrapper unwrapped, ``backbone.``
    stripped, ``head.*`` dropped and every ``pos_embed`` skipped (the teacher keeps MAE's fixed
    2-D table); also an MAE decoder (``decoder*``, ``mask_token``) is dropped. The rest goes
    through timm's own ``checkpoint_filter_fn`` (patch-embedding layouts). The final norm may
    be missing or left over (the teacher reads the last block before it); every other ViT
    weight must be there and fit.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a checkpoint, refused globals, or weights that do not fit (named).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn as timm_vit_filter
    state = unwrap_state_dict(load_checkpoint(path))
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if "pos_embed" not in k
             and not k.startswith(("head.", "decoder", "mask_token"))}
    state = timm_vit_filter(state, teacher.vit)
    return load_weights(teacher.vit, state, path, allow_missing=(r"pos_embed$", r"(fc_)?norm\."),
                        allow_unexpected=(r"(fc_)?norm\.",))


def checkpoint_candidates(directory):
    """The checkpoints a run wrote in ``directory``, newest first: ours
    (``checkpoint-<epoch>.pth``, and the rolling ``checkpoint-latest.pth`` before every one
    written before it) and DeepSpeed tag directories (``checkpoint-<epoch>/``) up to the one its
    ``latest`` file names (a newer tag directory is an unfinished save; without ``latest`` no
    DeepSpeed save finished; ``latest`` naming the rolling ``checkpoint-latest/``: every
    numbered one). Empty when there are none."""
    if not directory or not os.path.isdir(directory):
        return []
    latest_tag = None
    if os.path.isfile(os.path.join(directory, "latest")):
        with open(os.path.join(directory, "latest")) as f:
            latest_tag = f.read().strip()
    latest_epoch = re.fullmatch(r"checkpoint-(\d+)", latest_tag or "")
    found = []
    for name in os.listdir(directory):
        m = re.fullmatch(r"checkpoint-(\d+)(\.pth)?", name)
        path = os.path.join(directory, name)
        if not m or name == latest_tag:
            continue
        if m[2] and os.path.isfile(path):
            found.append((int(m[1]), path))
        elif (not m[2] and latest_tag and os.path.isdir(path)
              and (latest_epoch is None or int(m[1]) < int(latest_epoch[1]))):
            found.append((int(m[1]), path))
    newest = [os.path.join(directory, latest_tag)] if latest_tag else []
    numbered = [p for _, p in sorted(found, reverse=True)]
    rolling = os.path.join(directory, "checkpoint-latest.pth")
    if os.path.isfile(rolling):  # a kept file written after it: killed before the link
        t = os.path.getmtime(rolling)
        at = next((i for i, p in enumerate(numbered) if os.path.getmtime(p) < t), len(numbered))
        numbered.insert(at, rolling)
    return newest + numbered


def latest_checkpoint(output_dir):
    """The newest checkpoint in ``output_dir`` (:func:`checkpoint_candidates`), or None."""
    found = checkpoint_candidates(output_dir)
    return found[0] if found else None


def first_loadable(paths, load=load_checkpoint, warn=print):
    """``(path, load(path))`` for the first of ``paths`` (newest first) that loads. Each one
    that does not (corrupt, truncated, refused by safe loading) is skipped with a warning
    naming it, so a run killed while writing its newest checkpoint resumes from the one
    before.

    Raises:
        ValueError / FileNotFoundError: the only path does not load (its own error), or none
            of several does (naming the newest; the warnings name the others).
    """
    errors = []
    for path in paths:
        try:
            return path, load(path)
        except (ValueError, FileNotFoundError) as e:
            if len(paths) == 1:
                raise
            errors.append(e)
            warn(f"warning: skipping checkpoint {path}, which does not load: {e}")
    raise ValueError(f"none of the {len(paths)} checkpoints in "
                     f"{os.path.dirname(os.path.normpath(paths[0]))} loads (newest "
                     f"{paths[0]}: {errors[0]})")


def load_resume_checkpoint(resume, output_dir, auto_resume=True):
    """The checkpoint a run resumes from, loaded safely: ``resume`` (``--resume``: a file, a
    DeepSpeed tag directory, or a run's output directory, meaning its newest checkpoint that
    loads), else with ``auto_resume`` the newest checkpoint of ``output_dir`` that loads.

    Returns:
        ``(path, checkpoint)``, or ``(None, None)`` when there is nothing to resume from.
    Raises:
        FileNotFoundError / ValueError: one line naming the file or directory.
    """
    if resume:
        if os.path.isdir(resume) and not os.listdir(resume):
            raise FileNotFoundError(f"--resume {resume} is an empty directory; expected a "
                                    f"checkpoint file or a directory a run saved checkpoints in")
        candidates = checkpoint_candidates(resume)
        return first_loadable(candidates) if candidates else (resume, load_checkpoint(resume))
    if auto_resume and output_dir:
        candidates = checkpoint_candidates(output_dir)
        if candidates:
            return first_loadable(candidates)
    return None, None
