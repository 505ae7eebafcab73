"""The video classifier for fine-tuning (VideoMAE Sec. 4, "fine-tuning"): the shared ViT
encoder on all tokens, mean pooling, ``fc_norm`` and a linear head.

Subclassing :class:`VideoViTEncoder` keeps VideoMAE's fine-tuning state-dict keys
(``patch_embed.*``, ``blocks.i.*``, ``fc_norm.*``, ``head.*``), so official fine-tuned
checkpoints load without renaming.

Initialisation is VideoMAE's fine-tuning one (``modeling_finetune.py``): truncated normal
(std 0.02) Linear weights with zero biases, LayerNorms at (1, 0), PyTorch's default for the
Conv3d, and the head's weights (and zero bias) multiplied by ``init_scale``
(``--init_scale``, 0.001) so that the first logits are near zero.
"""
import torch
import torch.nn as nn

from modeling_encoder import VideoViTEncoder, init_finetune_weights


class VideoViTClassifier(VideoViTEncoder):
    """ViT video classifier (VideoMAE's ``modeling_finetune.VisionTransformer``: the same
    state-dict keys; named apart from timm's image ``VisionTransformer``).

    Args:
        num_classes: classes of the head (``--nb_classes``).
        fc_drop_rate: dropout before the head (``--fc_drop_rate``).
        init_scale: the head's initial weights and bias are multiplied by this after the
            truncated-normal init (``--init_scale``; VideoMAE: 0.001).
        **encoder_kwargs: :class:`VideoViTEncoder` arguments.
    """

    def __init__(self, num_classes=400, fc_drop_rate=0.0, init_scale=0.001, **encoder_kwargs):
        super().__init__(final_norm=False, weight_init="finetune", **encoder_kwargs)
        self.num_classes = num_classes
        self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self.head.apply(init_finetune_weights)
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    # The model interface the training code asks instead of checking types (the CNNs,
    # ``modeling_tpn.VideoResNetClassifier``, answer the same questions).
    is_fully_convolutional = False  # the position table fixes the input size
    # no weight decay on biases, norms and ``no_weight_decay()`` (VideoMAE's recipe;
    # timm's ``create_optimizer_v2(filter_bias_and_bn=)``)
    filter_bias_and_bn = True

    def group_matcher(self, coarse=False):
        """Parameter groups for timm's layer-wise lr decay (``create_optimizer_v2(...,
        layer_decay=)``): the stem (``patch_embed``; ``pos_embed`` is a fixed buffer) is layer
        0, block ``i`` is layer ``i + 1``, and everything else (``fc_norm``, ``head``) falls
        into timm's last group, ``depth + 1``. So layer ``l`` gets the lr scale
        ``layer_decay ** (depth + 1 - l)`` (BEiT / VideoMAE). ``coarse`` is accepted for
        timm's interface; both groupings are per block."""
        return dict(stem=r"^(?:patch_embed|pos_embed)", blocks=r"^blocks\.(\d+)")

    def forward_head(self, tokens, pre_logits=False):
        """``tokens [B, N, D]`` -> logits ``[B, num_classes]`` (or pooled ``[B, D]``)."""
        x = self.fc_norm(tokens.mean(dim=1))
        return x if pre_logits else self.head(self.fc_dropout(x))

    def forward(self, x):
        """``x [B, 3, T, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x).tokens)
