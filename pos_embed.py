"""Position tables of the ViT encoders (timm's ``layers/pos_embed.py`` role): the fixed
tables (VideoMAE's 1-D sinusoid table, MVD's 3-D sin-cos table, MAE's 2-D sin-cos table of
images), ``--pos_embed``, recognising which fixed formula a stored table is, and resizing a
learned table to another token grid. Pure tensor functions: no model, no file.
"""
import numpy as np
import torch
import torch.nn.functional as F


def sinusoid_table(num_positions, dim):
    """Fixed 1-D sinusoidal position table ``[1, num_positions, dim]`` (float32).

    Entry ``(p, j)`` is ``sin`` (even ``j``) or ``cos`` (odd ``j``) of
    ``p / 10000 ** (2 * (j // 2) / dim)``: the table VideoMAE and Hugging Face's VideoMAE use.
    """
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def _sincos_halves(pos, dim):
    """MAE's 1-D sin-cos encoding ``[len(pos), dim]``: ``sin(pos * w_k)`` in the first half of
    the channels, ``cos(pos * w_k)`` in the second, ``w_k = 10000 ** (-k / (dim / 2))``."""
    omega = 1.0 / np.power(10000.0, np.arange(dim // 2) / (dim / 2))
    angle = np.outer(pos, omega)  # [P, dim / 2]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def sincos_3d_table(grid, dim):
    """Fixed 3-D sin-cos position table ``[1, t*h*w, dim]`` (float32) of MVD (Wang et al.,
    CVPR 2023; METHOD.md, "MVD exactly"): ``dim / 4`` channels encode the temporal index,
    ``3 dim / 4`` the spatial position as MAE's 2-D sin-cos table (He et al. 2022) whose
    first half encodes ``w`` and second half ``h``; each part is :func:`_sincos_halves`.
    Channels ``[temporal, spatial]``, tokens frame-major ``(t, h, w)``.

    Args:
        grid: ``(t, h, w)`` token grid.
        dim: channels; a multiple of 16 (each half of each part is a sin/cos pair).
    Raises:
        ValueError: ``dim`` is not a multiple of 16.
    """
    if dim % 16:
        raise ValueError(f"--pos_embed sincos_3d: the 3-D sin-cos position table needs a "
                         f"width divisible by 16, got {dim}")
    tt, hh, ww = (a.ravel() for a in np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"))
    spatial = 3 * dim // 8  # channels of w, then as many of h
    table = np.concatenate([_sincos_halves(tt, dim // 4), _sincos_halves(ww, spatial),
                            _sincos_halves(hh, spatial)], axis=1)  # [t*h*w, dim]
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def sincos_2d_table(grid, dim, class_token=False):
    """MAE's fixed 2-D sin-cos position table of images (He et al. 2022, ``models_mae.py``):
    ``[1, (1 +) h*w, dim]`` float32, the first half of the channels encoding ``w``, the second
    ``h`` (each :func:`_sincos_halves`), tokens row-major ``(h, w)``; with ``class_token`` a
    leading row of zeros for the class token. MVD's image teachers use it
    (``modeling_teacher.ImageTeacher``).

    Args:
        grid: ``(h, w)`` patch grid.
        dim: channels; a multiple of 4.
    Raises:
        ValueError: ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position table needs a width divisible by 4, got {dim}")
    hh, ww = (a.ravel() for a in np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"))
    table = np.concatenate([_sincos_halves(ww, dim // 2), _sincos_halves(hh, dim // 2)], axis=1)
    if class_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


# The fixed position tables a model can be built with (``--pos_embed``), and their names in
# messages. A table loaded from a checkpoint that is neither is "learned".
POS_EMBED_TABLES = {"sincos_1d": "VideoMAE 1-D sinusoid table",
                    "sincos_3d": "MVD 3-D sin-cos table"}


def add_pos_embed_arg(parser, default="sincos_1d", help=None):
    """``--pos_embed``, the one flag of every script that builds a ViT: which fixed table
    (:data:`POS_EMBED_TABLES`) the model gets when its checkpoint stores or records none."""
    parser.add_argument("--pos_embed", default=default, choices=sorted(POS_EMBED_TABLES),
                        help=help or "fixed position table: sincos_1d = VideoMAE's 1-D sinusoid "
                        "table, sincos_3d = MVD's 3-D sin-cos table (MVD's fine-tuned files "
                        "record none); a checkpoint that stores or records its table "
                        "overrides this")


def position_table(kind, grid, dim):
    """The fixed table ``kind`` (a :data:`POS_EMBED_TABLES` key) for a ``(t, h, w)`` token
    grid: ``[1, t*h*w, dim]`` float32.

    Raises:
        ValueError: an unknown ``kind`` (named after ``--pos_embed``), or a width the
            3-D table cannot take.
    """
    if kind == "sincos_1d":
        return sinusoid_table(int(np.prod(grid)), dim)
    if kind == "sincos_3d":
        return sincos_3d_table(grid, dim)
    raise ValueError(f"--pos_embed {kind!r} is not a known position table; choose from "
                     f"{sorted(POS_EMBED_TABLES)}")


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
    (:func:`sinusoid_table`, :func:`sincos_3d_table`).

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


def learned_table_for_grid(table, grid, src_grid=None):
    """A checkpoint's ``pos_embed`` for a model of token grid ``grid``: None when it is a
    fixed table (the model builds its own, for any size), else the learned table resized to
    ``grid`` (``[1, N, D]``). Raises ValueError when a learned table's grid cannot be told."""
    kind, src = recognise_position_table(table, grid, src_grid)
    if kind != "learned":
        return None
    n, d = table.numel() // table.shape[-1], table.shape[-1]
    src = src or _infer_grid(n, grid)  # raises, asking for src_grid
    return table.reshape(1, n, d) if src == tuple(grid) else resize_pos_embed(table, src, grid)
