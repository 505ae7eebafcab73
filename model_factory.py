"""The project's own model factory: the names VideoMAE/MVD/MMKD users know, kept out of
timm's global registry (which owns ``vit_small_patch16_224`` and friends for images).

- ``pretrain_videomae_{tiny,small,base,large,huge}_patch16_224``: as a student
  (:func:`create_student`) or as a teacher (:func:`create_teacher`), as in the reference's
  ``--model`` / ``--model_t``;
- ``vit_{tiny,small,base,large,huge}_patch16_224``: the fine-tuning classifier
  (:func:`create_classifier`);
- the CNNs of TPN's model zoo (``modeling_tpn``; :data:`CNN_MODELS`), classifiers too:
  ``tpn_r50``, ``tpn_r101`` (slow-only 3-D ResNet + TPN), ``tsm_r50_tpn`` (TSM ResNet-50 +
  TPN) and their backbones alone, ``slowonly_r50``, ``slowonly_r101``, ``tsm_r50``.
"""
from modeling_encoder import VideoViTEncoder
from modeling_finetune import VisionTransformer
from modeling_student import PretrainVisionTransformer
from modeling_teacher import Teacher
from modeling_tpn import CNN_CONFIGS, create_cnn

# width, depth, heads of the encoder; width and heads of VideoMAE's pixel decoder
ARCHS = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=96, decoder_num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=192, decoder_num_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=384, decoder_num_heads=6),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_num_heads=8),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, decoder_embed_dim=640, decoder_num_heads=8),
}
PRETRAIN_MODELS = {f"pretrain_videomae_{s}_patch16_224": s for s in ARCHS}
CNN_MODELS = sorted(CNN_CONFIGS)
CLASSIFIER_MODELS = {f"vit_{s}_patch16_224": s for s in ARCHS}


def _arch(name, table, flag):
    if name not in table:
        raise ValueError(f"{flag} {name!r} is not a known model; choose from {sorted(table)}")
    return dict(ARCHS[table[name]])


def _encoder_kwargs(arch, img_size=224, num_frames=16, tubelet_size=2, drop_path_rate=0.0,
                    use_checkpoint=False, **extra):
    return dict(img_size=img_size, num_frames=num_frames, tubelet_size=tubelet_size,
                drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint,
                embed_dim=arch["embed_dim"], depth=arch["depth"], num_heads=arch["num_heads"],
                **extra)


def create_student(name, decoder_depth=4, teacher_dim=None, views=("global", "local"),
                   num_k=10, kd_T=1.0, teacher_proj=False, pairing="slice", **kwargs):
    """A :class:`PretrainVisionTransformer` of size ``name`` (``--model``); ``teacher_proj``
    and ``pairing`` as there.

    ``kwargs``: ``img_size``, ``num_frames``, ``tubelet_size``, ``drop_path_rate``,
    ``use_checkpoint``, ``pos_embed`` (the fixed position table of the encoder and the pixel
    decoder, ``'sincos_1d'`` or ``'sincos_3d'``). Raises ValueError for an unknown name.
    """
    arch = _arch(name, PRETRAIN_MODELS, "--model")
    return PretrainVisionTransformer(_encoder_kwargs(arch, **kwargs), decoder_depth,
                                     arch["decoder_embed_dim"], arch["decoder_num_heads"],
                                     teacher_dim, views, num_k, kd_T, teacher_proj, pairing)


def create_teacher(name, sees_all_tokens=False, **kwargs):
    """A frozen :class:`Teacher` of size ``name`` (``--model_t``), random until loaded;
    ``kwargs`` as in :func:`create_student`."""
    arch = _arch(name, PRETRAIN_MODELS, "--model_t")
    return Teacher(VideoViTEncoder(final_norm=False, **_encoder_kwargs(arch, **kwargs)),
                   sees_all_tokens)


def create_classifier(name, num_classes=400, fc_drop_rate=None, init_scale=0.001, **kwargs):
    """The fine-tuning classifier ``name`` (``--model``): a :class:`VisionTransformer` of
    that size, or one of the :data:`CNN_MODELS` (``modeling_tpn.create_cnn``).

    ``fc_drop_rate``: dropout before the head; None = the family's recipe (ViT 0, CNN 0.5).
    ``init_scale``: the ViT's new head is scaled by it (``--init_scale``).
    ``kwargs``: as in :func:`create_student`; a CNN reads ``num_frames`` and
    ``use_checkpoint`` only (it takes any input size, has no drop path and no position
    table). Raises ValueError for an unknown name.
    """
    if name in CNN_CONFIGS:
        return create_cnn(name, num_classes, kwargs.get("num_frames", 8),
                          0.5 if fc_drop_rate is None else fc_drop_rate,
                          kwargs.get("use_checkpoint", False))
    arch = _arch(name, CLASSIFIER_MODELS, "--model")
    return VisionTransformer(num_classes=num_classes, fc_drop_rate=fc_drop_rate or 0.0,
                             init_scale=init_scale, **_encoder_kwargs(arch, **kwargs))
