"""Hugging Face ``transformers`` interop: our VideoMAE-family models as transformers
``VideoMAEModel`` / ``VideoMAEForPreTraining`` / ``VideoMAEForVideoClassification`` and back.

The state-dict key mapping (q/k/v split and merge included) is in ``checkpoint.py``
(:func:`weights.hf_to_ours`, :func:`weights.ours_to_hf`), the one place keys are
remapped; this module maps the *configs* and builds the models around it.

Numerical differences that no weight mapping can remove (measured in ``tests/test_interop.py``):

- ``VideoMAEConfig.layer_norm_eps`` defaults to 1e-12 (so converted hub models typically run
  with it); ours (and the original VideoMAE) use 1e-6. Export writes 1e-6; import warns on another
  value unless ``match_eps=True``, which gives our model transformers' eps values.
- transformers builds ``fc_norm`` (classification) and the pixel decoder's final ``norm`` as
  ``nn.LayerNorm(dim)``, i.e. eps 1e-5, whatever the config says; the original uses 1e-6.
  An exported classifier therefore runs its ``fc_norm`` with eps 1e-5 in transformers.
- transformers' ``VideoMAEForVideoClassification`` with ``use_mean_pooling=False`` classifies
  the first token after a final norm; ours always mean-pools (no class token): refused.
- transformers takes clips as ``pixel_values [B, T, C, H, W]``; ours ``[B, C, T, H, W]``.
- transformers' VideoMAE has only the 1-D sinusoid position table: a model with MVD's 3-D
  table (``--pos_embed sincos_3d``) or a learned one is refused by :func:`to_hf`.

What does match: ``VideoMAEForPreTraining`` decodes as ours (and the original) does, i.e.
encoder on the visible tokens (+ its final ``layernorm`` unless ``use_mean_pooling``),
``encoder_to_decoder``, visible tokens + their sinusoid positions followed by
``mask_token`` + the hidden positions, predictions for the hidden tokens in mask order;
its ``norm_pix_loss`` target equals ours (``losses.pixel_targets``, unbiased std + 1e-6).
"""
import warnings

import torch.nn as nn

from checkpoint import load_checkpoint
from modeling_encoder import VideoViTEncoder
from modeling_finetune import VideoViTClassifier
from modeling_student import PretrainVisionTransformer
from weights import canonical_state_dict, load_pretrained, ours_to_hf

OUR_LN_EPS = 1e-6
HF_HARDCODED_LN_EPS = 1e-5  # transformers' fc_norm and decoder.norm: nn.LayerNorm(dim)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("Hugging Face interop needs transformers: pip install transformers") from e
    return transformers


def _encoder_of(model):
    return model.encoder if isinstance(model, PretrainVisionTransformer) else model


def hf_config(model, id2label=None):
    """A ``VideoMAEConfig`` describing our ``model`` (classifier, student or bare encoder).

    Args:
        model: :class:`VideoViTClassifier`, :class:`PretrainVisionTransformer` or
            :class:`VideoViTEncoder`.
        id2label: optional ``{class index: name}`` for the classifier's config.
    Raises:
        ValueError: a model transformers' VideoMAE cannot express (LayerNorm eps other than
            1e-6 in the blocks).
    """
    enc = _encoder_of(model)
    pe, blk = enc.patch_embed, enc.blocks[0]
    if blk.norm1.eps != OUR_LN_EPS:
        raise ValueError(f"block LayerNorm eps {blk.norm1.eps}, expected {OUR_LN_EPS}")
    kwargs = dict(image_size=pe.img_size, patch_size=pe.patch_size,
                  num_channels=pe.proj.in_channels, num_frames=pe.num_frames,
                  tubelet_size=pe.tubelet_size, hidden_size=enc.embed_dim,
                  num_hidden_layers=len(enc.blocks), num_attention_heads=enc.num_heads,
                  intermediate_size=blk.mlp.fc1.out_features, hidden_act="gelu",
                  layer_norm_eps=OUR_LN_EPS, qv_bias=blk.attn.q_bias is not None,
                  use_mean_pooling=not isinstance(enc.norm, nn.LayerNorm))
    if isinstance(model, VideoViTClassifier):
        kwargs.update(use_mean_pooling=True, num_labels=model.num_classes)
        if id2label:
            kwargs["id2label"] = {int(k): str(v) for k, v in id2label.items()}
    if isinstance(model, PretrainVisionTransformer) and model.decoder_depth > 0:
        dec = model.decoder.blocks[0]
        kwargs.update(decoder_hidden_size=model.mask_token.shape[-1],
                      decoder_num_hidden_layers=len(model.decoder.blocks),
                      decoder_num_attention_heads=dec.attn.num_heads,
                      decoder_intermediate_size=dec.mlp.fc1.out_features)
    return _transformers().VideoMAEConfig(**kwargs)


def _hf_class(model):
    t = _transformers()
    if isinstance(model, VideoViTClassifier):
        return t.VideoMAEForVideoClassification
    if isinstance(model, PretrainVisionTransformer) and model.decoder_depth > 0:
        return t.VideoMAEForPreTraining
    return t.VideoMAEModel


def check_position_table(model):
    """Raise ValueError (one line, naming ``--pos_embed``) when ``model`` uses MVD's 3-D
    sin-cos position table, which transformers' VideoMAE cannot express."""
    if _encoder_of(model).pos_embed_type == "sincos_3d":
        raise ValueError("the model uses the MVD 3-D sin-cos position table (--pos_embed "
                         "sincos_3d); transformers' VideoMAE has only the 1-D sinusoid table, so "
                         "it cannot be exported without changing its outputs")


def to_hf(model, id2label=None):
    """Our model as the matching transformers model (eval mode) with the same weights.

    A classifier becomes ``VideoMAEForVideoClassification``, a student with a pixel decoder
    ``VideoMAEForPreTraining`` and anything else (encoder, teacher's encoder, student without
    decoder) ``VideoMAEModel``. A student's distillation ``projector`` has no counterpart and
    is left out.

    Raises:
        ValueError: a learned or MVD 3-D position table (transformers' VideoMAE has only the
            fixed 1-D one), or any key the transformers model does not take exactly (all
            listed).
    """
    check_position_table(model)
    cls = _hf_class(model)
    _, state = canonical_state_dict(model.state_dict())
    if "pos_embed" in state:
        raise ValueError("the model carries a learned position table; transformers' VideoMAE "
                         "uses the fixed sinusoid table only")
    state = {k: v for k, v in state.items() if not k.startswith("projector.")}
    if cls.__name__ == "VideoMAEModel":
        state = {k: v for k, v in state.items()
                 if not k.startswith(("decoder.", "encoder_to_decoder.", "mask_token"))}
    hf = cls(hf_config(model, id2label)).eval()
    base = "" if cls.__name__ == "VideoMAEModel" else "videomae."
    result = hf.load_state_dict(ours_to_hf(state, base), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{cls.__name__} does not take the converted weights: missing "
                         f"{result.missing_keys[:12]}, unexpected {result.unexpected_keys[:12]}")
    return hf


def export_to_hf(model, out_dir, id2label=None):
    """Write our model as a transformers model directory (``save_pretrained``: config.json +
    model.safetensors) that ``VideoMAEForVideoClassification.from_pretrained(out_dir)`` (or
    the pre-training / bare model class) loads. Returns the transformers model."""
    hf = to_hf(model, id2label)
    hf.save_pretrained(out_dir)
    return hf


def encoder_kwargs_from_hf(config):
    """:class:`VideoViTEncoder` arguments of a ``VideoMAEConfig``.

    Raises:
        ValueError: settings ours cannot express (non-square images or patches, an
            activation other than exact GELU, an MLP width that is not a whole ratio).
    """
    def square(v, name):
        v = tuple(v) if isinstance(v, (list, tuple)) else (v, v)
        if v[0] != v[1]:
            raise ValueError(f"{name} {v} is not square; ours needs H = W")
        return int(v[0])

    if config.hidden_act != "gelu":
        raise ValueError(f"hidden_act {config.hidden_act!r}: ours uses exact GELU ('gelu')")
    ratio = config.intermediate_size / config.hidden_size
    if int(config.hidden_size * ratio) != config.intermediate_size:
        raise ValueError(f"intermediate_size {config.intermediate_size} is not expressible as "
                         f"a ratio of hidden_size {config.hidden_size}")
    return dict(img_size=square(config.image_size, "image_size"),
                patch_size=square(config.patch_size, "patch_size"),
                num_frames=config.num_frames, tubelet_size=config.tubelet_size,
                in_chans=config.num_channels, embed_dim=config.hidden_size,
                depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
                mlp_ratio=ratio, qkv_bias=config.qv_bias)


def check_layer_norm_eps(config):
    """Warn when the config's LayerNorm eps is not ours (1e-6); returns True when it is."""
    if config.layer_norm_eps == OUR_LN_EPS:
        return True
    warnings.warn(f"the Hugging Face config has layer_norm_eps={config.layer_norm_eps}; ours "
                  f"(and the original VideoMAE) use {OUR_LN_EPS}, so outputs differ slightly "
                  f"from the transformers model (use match_eps=True to copy its eps values)",
                  stacklevel=3)
    return False


def _our_model_for(state, config):
    """An untrained model of ours shaped like the transformers checkpoint ``state``."""
    kw = encoder_kwargs_from_hf(config)
    if any(k.startswith("classifier.") for k in state):
        if not config.use_mean_pooling:
            raise ValueError("VideoMAEForVideoClassification with use_mean_pooling=False "
                             "classifies the first token; ours mean-pools all tokens")
        return VideoViTClassifier(num_classes=config.num_labels, **kw)
    if any(k.startswith("decoder.") for k in state):
        ratio = config.decoder_intermediate_size / config.decoder_hidden_size
        if ratio != 4:
            raise ValueError(f"decoder_intermediate_size {config.decoder_intermediate_size} is "
                             f"not 4 x decoder_hidden_size; ours has a fixed MLP ratio of 4")
        return PretrainVisionTransformer(dict(kw, final_norm=not config.use_mean_pooling),
                                         config.decoder_num_hidden_layers,
                                         config.decoder_hidden_size,
                                         config.decoder_num_attention_heads)
    return VideoViTEncoder(final_norm=not config.use_mean_pooling, **kw)


def match_hf_eps(model, config):
    """Give our ``model`` transformers' LayerNorm eps values: ``config.layer_norm_eps`` in
    the blocks and final norm, 1e-5 in ``fc_norm`` and the decoder's final ``norm``."""
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            hardcoded = name in ("fc_norm", "decoder.norm")
            m.eps = HF_HARDCODED_LN_EPS if hardcoded else config.layer_norm_eps
    return model


def from_hf(source, match_eps=False):
    """Our model with the weights of a transformers VideoMAE model.

    Args:
        source: a transformers VideoMAE model, or a directory written by ``save_pretrained``
            (config.json + model.safetensors / pytorch_model.bin; no transformers model is
            instantiated).
        match_eps: copy transformers' LayerNorm eps values (see the module docstring) to
            reproduce its outputs exactly; default keeps ours (1e-6), with a warning when the
            config's eps differs.
    Returns:
        ``(model, config)``: a :class:`VideoViTClassifier` (from ``...ForVideoClassification``),
        :class:`PretrainVisionTransformer` (from ``...ForPreTraining``; train it with
        ``--normlize_target`` as the config's ``norm_pix_loss`` says) or
        :class:`VideoViTEncoder` (from ``VideoMAEModel``), in eval mode.
    Raises:
        ValueError: settings ours cannot express, or any key that does not map or is
            missing (q/v biases included), all named.
    """
    if isinstance(source, str):
        config = _transformers().VideoMAEConfig.from_pretrained(source)
        state, name = load_checkpoint(source), source
    else:
        config, state, name = source.config, source.state_dict(), type(source).__name__
    model = _our_model_for(state, config)
    load_pretrained(model, state, name, strict=True)
    if match_eps:
        match_hf_eps(model, config)
    else:
        check_layer_norm_eps(config)
    return model.eval(), config
