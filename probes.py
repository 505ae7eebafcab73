"""Probes of a frozen encoder's features: k-NN, linear and attentive.

- :func:`knn_scores`: weighted k-NN classification (Wu et al. 2018, as DINO's
  ``eval_knn.py``, Caron et al. 2021, Sec. 4.1): cosine similarity of L2-normalised
  features, the ``k`` nearest training features vote for their class with weight
  ``exp(similarity / T)``; ``k = 20``, ``T = 0.07``.
- :class:`LinearProbe` and :func:`train_linear`: MAE's linear probing (He et al. 2022,
  Sec. A.3 / ``main_linprobe.py``): a BatchNorm without affine parameters before a linear
  head (std-0.01 truncated-normal weights), LARS, no weight decay, linear warm-up then
  cosine to 0, trained on frozen (cached) features.
- :class:`AttentiveProbe`: V-JEPA's frozen evaluation (Bardes et al. 2024, Sec. 4): one
  cross-attention block whose learned query attends over the encoder's last-layer tokens,
  then a linear head; the attention is the project's :class:`modeling_encoder.Attention`
  (``Attention.cross``).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.optim import Lars
from timm.scheduler import CosineLRScheduler

from modeling_encoder import Attention

KNN_K, KNN_T = 20, 0.07  # DINO's k-NN settings


@torch.no_grad()
def knn_scores(train_features, train_labels, features, num_classes, k=KNN_K, temperature=KNN_T,
               chunk=1024):
    """Weighted k-NN class votes of every query, normalised to sum to 1.

    Args:
        train_features: ``[N, D]`` bank of training features (any scale: L2-normalised here).
        train_labels: ``[N]`` int64 in ``[0, num_classes)``.
        features: ``[M, D]`` queries (a test view each).
        num_classes: ``C``.
        k: neighbours (clipped to ``N``); temperature: ``T`` of the vote weights.
        chunk: queries per similarity block (bounds memory at ``chunk x N``).
    Returns:
        ``[M, C]`` float64: for each query, ``sum_{j in kNN} exp(cos_j / T)`` per class of the
        neighbours ``j``, divided by the total over classes (a distribution over classes, so
        the views of a video can be averaged as the multi-view test averages probabilities).
        Neighbours are the ``k`` highest similarities; among equal similarities the
        training feature listed first wins (stable sort).
    Raises:
        ValueError: an empty bank, or features of different widths.
    """
    if train_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature; the training list gave none")
    if train_features.shape[1] != features.shape[1]:
        raise ValueError(f"training features have width {train_features.shape[1]}, the test "
                         f"features {features.shape[1]}")
    bank = F.normalize(train_features.double(), dim=1)  # [N, D]
    k = min(k, bank.shape[0])
    out = torch.zeros(features.shape[0], num_classes, dtype=torch.float64)
    for start in range(0, features.shape[0], chunk):
        q = F.normalize(features[start:start + chunk].double(), dim=1)  # [m, D]
        sim = q @ bank.T  # [m, N]
        top_sim, top_idx = sim.sort(dim=1, descending=True, stable=True)
        weights = (top_sim[:, :k] / temperature).exp()  # [m, k]
        out[start:start + chunk].scatter_add_(1, train_labels[top_idx[:, :k]], weights)
    return out / out.sum(dim=1, keepdim=True)


class LinearProbe(nn.Module):
    """MAE's linear-probing head: ``BatchNorm1d(D, affine=False, eps=1e-6)`` then
    ``Linear(D, C)``; ``[B, D] -> [B, C]`` logits. The BatchNorm only standardises the
    features (MAE Sec. A.3: it does not change the linear model, but helps its optimisation)."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.norm(x))


def train_linear(features, labels, num_classes, *, epochs=90, lr=0.1, batch_size=1024,
                 warmup_epochs=10, weight_decay=0.0, seed=0, log=None):
    """Train a :class:`LinearProbe` on frozen features with MAE's recipe.

    LARS (timm's, trust coefficient 1e-3, momentum 0.9; the head's weight always adapted, its
    bias not, as MAE's LARS adapts only parameters with more than one dimension), lr
    ``lr x batch / 256``, per-update linear warm-up from 0 over ``warmup_epochs``, then
    cosine to 0 (timm's scheduler); shuffled batches from ``seed``.

    Args:
        features: ``[N, D]`` float (CPU); labels: ``[N]`` int64.
        epochs, lr (per 256 samples), batch_size, warmup_epochs, weight_decay: the recipe.
        log: called as ``log(epoch, mean_loss)`` after each epoch, or None.
    Returns:
        the trained probe in eval mode.
    Raises:
        ValueError: no training features.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("the linear probe needs training features; the training list gave none")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = LinearProbe(features.shape[1], num_classes)
    batch = min(batch_size, n)
    steps = math.ceil(n / batch)
    optimizer = Lars([{"params": [probe.head.weight], "always_adapt": True},
                      {"params": [probe.head.bias], "always_adapt": False, "weight_decay": 0.0}],
                     lr=lr * batch / 256, momentum=0.9, weight_decay=weight_decay)
    warmup = min(warmup_epochs * steps, epochs * steps - 1)
    sched = CosineLRScheduler(optimizer, t_initial=max(1, epochs * steps - warmup), lr_min=0.0,
                              warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True,
                              t_in_epochs=False)
    features, labels = features.float(), labels.long()
    for epoch in range(epochs):
        probe.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(steps):
            sched.step_update(epoch * steps + i)
            idx = order[i * batch:(i + 1) * batch]
            if idx.numel() < 2:  # BatchNorm statistics need two samples
                continue
            loss = F.cross_entropy(probe(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
        if log is not None:
            log(epoch, total / n)
    return probe.eval()


class CrossAttentionBlock(nn.Module):
    """V-JEPA's cross-attention block: ``q = q + Attn(q, LN(x))``, then
    ``q = q + MLP(LN(q))``; ``(q [B, Q, D], x [B, N, D]) -> [B, Q, D]``."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, q, x):
        q = q + self.attn.cross(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """V-JEPA's attentive classifier: a learned query (std-0.02 truncated normal) pools the
    frozen tokens through one :class:`CrossAttentionBlock`, a linear head classifies it.

    ``forward(tokens [B, N, D]) -> logits [B, C]``.
    """

    def __init__(self, dim, num_heads, num_classes, mlp_ratio=4.0):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = CrossAttentionBlock(dim, num_heads, mlp_ratio)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.query, std=0.02)
        for m in self.modules():  # V-JEPA's probe initialisation (timm's ViT's)
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, tokens):
        q = self.query.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return self.head(self.block(q, tokens)[:, 0])


class ProbedEncoder(nn.Module):
    """A frozen feature encoder (``extract_features.FeatureEncoder``: ``x -> (tokens,
    pooled)``) and a probe on its tokens: ``[B, 3, T, H, W] -> [B, C]``. Only the probe has
    ``requires_grad`` parameters; the encoder stays in eval mode (no dropout, no drop path)
    and runs without gradients whatever ``train()`` is asked."""

    def __init__(self, encoder, probe):
        super().__init__()
        self.encoder, self.probe = encoder, probe
        self.encoder.requires_grad_(False)
        self.num_classes = probe.head.out_features

    def train(self, mode=True):
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x):
        with torch.no_grad():
            tokens, _ = self.encoder(x)
        return self.probe(tokens)
