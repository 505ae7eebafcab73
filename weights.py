"""Loading weights into the ViT models from every checkpoint layout users have, with the
position table they were trained with (VideoMAE's 1-D or MVD's 3-D table, recognised when
stored, or recorded in our ``args``; :func:`adopt_position_table`).

Layouts (``checkpoint_kind``): ours and VideoMAE / MMKD pre-training (``encoder.*`` keys
plus decoder / projector), MVD pre-training (bare encoder keys plus its feature decoders and
stored tables), fine-tuned classifiers (``blocks.*``, ``fc_norm``, ``head``), bare
encoders, and Hugging Face ``transformers`` VideoMAE (``videomae.*``, separate q/k/v), inside
``model`` / ``module`` (DeepSpeed) / ``state_dict`` wrappers, with DDP ``module.`` prefixes,
as ``.pth`` / ``.bin`` / ``.safetensors`` files or Hugging Face / DeepSpeed directories
(read by ``checkpoint.load_checkpoint``).

All ViT key remapping happens in one place, :func:`vit_checkpoint_filter` (timm's
``checkpoint_filter_fn`` pattern): any layout -> the *canonical* layout (encoder keys bare, as
in a VideoMAE fine-tuned checkpoint; ``fc_norm``, ``head``, ``encoder_to_decoder``,
``mask_token``, ``decoder.*``, ``projector.*`` at the top) -> the target model's keys. A
model family with its own layouts loads itself: :func:`load_pretrained` hands a model that
has a ``load_pretrained`` method (the CNNs, ``modeling_tpn.VideoResNetClassifier``) the
loaded checkpoint. The Hugging Face name table and its inverse (:func:`hf_to_ours`,
:func:`ours_to_hf`) live here too; ``hf_interop.py`` builds the ``transformers`` configs and
models around them.
"""
import re

import torch

from checkpoint import load_checkpoint, saved_args, unwrap_state_dict
from modeling_encoder import VideoViTEncoder
from pos_embed import (POS_EMBED_TABLES, learned_table_for_grid, position_table_name,
                       recognise_position_table)


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


def vit_checkpoint_filter(ckpt, model, src_grid=None):
    """Any supported checkpoint -> a state dict in ``model``'s keys (the one place keys are
    remapped).

    Args:
        ckpt: a loaded checkpoint (any wrapper) or state dict.
        model: the target: a classifier / :class:`VideoViTEncoder` (encoder keys bare) or a
            module with an ``encoder`` attribute (student, teacher: ``encoder.*``).
        src_grid: ``(t, h, w)`` of a learned position table in the checkpoint, when it
            cannot be inferred (see ``pos_embed._infer_grid``).
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
        table = learned_table_for_grid(table, model.patch_embed.grid_size, src_grid)
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
    :func:`vit_checkpoint_filter`) in the model's encoder as a persistent buffer, so that the
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
    :func:`vit_checkpoint_filter`.

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
    family_loader = getattr(model, "load_pretrained", None)
    if family_loader is not None:  # a family with its own layouts (the CNNs) loads itself
        return family_loader(ckpt, source, strict)
    state = vit_checkpoint_filter(ckpt, model, src_grid)
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

