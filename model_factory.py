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
- MVD's names: ``pretrain_masked_video_student_{small,base,large,huge}_patch16_224`` (and
  ``tiny``), the same student with MVD's 3-D table and feature decoders
  (:func:`create_student`); ``pretrain_videomae_teacher_{base,large,huge}_patch16_224``, the
  video teacher (:func:`create_teacher`); ``mae_teacher_vit_{base,large}_patch16`` and
  ``mae_teacher_vit_huge_patch14`` (and ``tiny`` / ``small`` ``_patch16``), ImageMAE image
  teachers built from timm's ``VisionTransformer`` (:func:`create_image_teacher`).
"""
import torch.nn as nn

from modeling_encoder import VideoViTEncoder, init_pretrain_weights
from modeling_finetune import VideoViTClassifier
from modeling_student import PretrainVisionTransformer
from modeling_teacher import ImageTeacher, Teacher
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
# MVD's names (run_mvd_pretraining.py): its student, which defaults to the 3-D table, and its
# video teacher, which is our teacher of the same size
MVD_STUDENT_MODELS = {f"pretrain_masked_video_student_{s}_patch16_224": s for s in ARCHS}
TEACHER_MODELS = {**PRETRAIN_MODELS,
                  **{f"pretrain_videomae_teacher_{s}_patch16_224": s for s in ARCHS}}
# ImageMAE ViTs (MVD's image teachers): width, depth, heads, patch; tiny and small are ours,
# for tests and the demo
IMAGE_TEACHER_MODELS = {
    "mae_teacher_vit_tiny_patch16": dict(embed_dim=192, depth=12, num_heads=3, patch_size=16),
    "mae_teacher_vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16),
    "mae_teacher_vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
    "mae_teacher_vit_large_patch16": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16),
    "mae_teacher_vit_huge_patch14": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}


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
                   num_k=10, kd_T=1.0, teacher_proj=False, pairing="slice", feature_dims=None,
                   feat_decoder_depth=2, feat_decoder_embed_dim=None, feat_decoder_num_heads=None,
                   **kwargs):
    """A :class:`PretrainVisionTransformer` of size ``name`` (``--model``: a
    ``pretrain_videomae_*`` or MVD's ``pretrain_masked_video_student_*`` name, the latter
    with MVD's 3-D table unless ``pos_embed`` says otherwise); the other arguments as there.

    ``kwargs``: ``img_size``, ``num_frames``, ``tubelet_size``, ``drop_path_rate``,
    ``use_checkpoint``, ``pos_embed`` (the fixed position table of the encoder and the
    decoders, ``'sincos_1d'`` or ``'sincos_3d'``). Raises ValueError for an unknown name.
    """
    if name in MVD_STUDENT_MODELS:
        arch = dict(ARCHS[MVD_STUDENT_MODELS[name]])
        kwargs.setdefault("pos_embed", "sincos_3d")
    else:
        arch = _arch(name, PRETRAIN_MODELS, "--model")
    return PretrainVisionTransformer(_encoder_kwargs(arch, **kwargs), decoder_depth,
                                     arch["decoder_embed_dim"], arch["decoder_num_heads"],
                                     teacher_dim, views, num_k, kd_T, teacher_proj, pairing,
                                     feature_dims, feat_decoder_depth, feat_decoder_embed_dim,
                                     feat_decoder_num_heads)


def create_teacher(name, sees_all_tokens=False, flag="--model_t", **kwargs):
    """A frozen :class:`Teacher` of size ``name`` (``--model_t``, or MVD's
    ``--video_teacher_model``: ``pretrain_videomae_teacher_*``; ``flag`` names it in the
    error), random until loaded; ``kwargs`` as in :func:`create_student`."""
    arch = _arch(name, TEACHER_MODELS, flag)
    return Teacher(VideoViTEncoder(final_norm=False, **_encoder_kwargs(arch, **kwargs)),
                   sees_all_tokens)


def create_image_teacher(name, img_size=224, tubelet_size=2):
    """A frozen :class:`ImageTeacher` ``name`` (MVD's ``--image_teacher_model``) for frames of
    ``img_size`` pixels (``--teacher_input_size``), random until loaded
    (``weights.load_image_teacher``): timm's ``VisionTransformer`` with a class token, no
    head and no pooling. Raises ValueError for an unknown name or a size the patch does not
    divide."""
    from timm.models.vision_transformer import VisionTransformer as ImageViT
    if name not in IMAGE_TEACHER_MODELS:
        raise ValueError(f"--image_teacher_model {name!r} is not a known model; choose from "
                         f"{sorted(IMAGE_TEACHER_MODELS)}")
    arch = IMAGE_TEACHER_MODELS[name]
    if img_size % arch["patch_size"]:
        raise ValueError(f"--teacher_input_size {img_size} must be divisible by the patch size "
                         f"{arch['patch_size']} of {name}")
    vit = ImageViT(img_size=img_size, num_classes=0, global_pool="", class_token=True,
                   qkv_bias=True, mlp_ratio=4.0, weight_init="skip", **arch)
    # MAE's initialisation (xavier Linears, class token N(0, 0.02)) rather than timm's, which
    # takes seconds for the large ViTs: a teacher is loaded anyway
    nn.init.normal_(vit.cls_token, std=0.02)
    vit.apply(init_pretrain_weights)
    return ImageTeacher(vit, tubelet_size)


def create_classifier(name, num_classes=400, fc_drop_rate=None, init_scale=0.001, **kwargs):
    """The fine-tuning classifier ``name`` (``--model``): a :class:`VideoViTClassifier` of
    that size, or one of the :data:`CNN_MODELS` (``modeling_tpn.create_cnn``).

    ``fc_drop_rate``: dropout before the head; None = the family's recipe (ViT 0, CNN 0.5).
    ``init_scale``: the ViT's new head is scaled by it (``--init_scale``).
    ``kwargs``: as in :func:`create_student`, plus ``tsm_shift`` (the TSM backbones' shift
    place, ``modeling_resnet3d.TSM_SHIFT_PLACES``; None = residual; a ViT ignores it). A CNN reads
    ``num_frames``, ``use_checkpoint`` and ``tsm_shift`` only (it takes any input size, has no
    drop path and no position table). Raises ValueError for an unknown name.
    """
    tsm_shift = kwargs.pop("tsm_shift", None) or "residual"
    if name in CNN_CONFIGS:
        return create_cnn(name, num_classes, kwargs.get("num_frames", 8),
                          0.5 if fc_drop_rate is None else fc_drop_rate,
                          kwargs.get("use_checkpoint", False), tsm_shift)
    arch = _arch(name, CLASSIFIER_MODELS, "--model")
    return VideoViTClassifier(num_classes=num_classes, fc_drop_rate=fc_drop_rate or 0.0,
                              init_scale=init_scale, **_encoder_kwargs(arch, **kwargs))
