"""What MMKD distils, drawn on one real clip (Li et al., "Mask Again", ACM MM 2023, Sec. 3).

    python run_vis.py --model pretrain_videomae_small_patch16_224 \
        --model_t pretrain_videomae_base_patch16_224 --path_t teacher.pth \
        --mask_type tube --mask_ratio 0.9 --num_k 10 --idx 100 --idx_f 3 \
        video.mp4 vis_out/ student.pth

Positionals: the video, the output directory and (optional) the student checkpoint; the
teacher's checkpoint is ``--path_t``. A missing checkpoint means random weights (for a smoke
run: the pictures then show an untrained network). The clip is the centre window of dense
sampling (``--num_frames`` frames ``--sampling_rate`` apart), short side resized to
``--input_size`` and centre-cropped, as in evaluation. Teacher and student encode the same
visible tokens (MMKD's recipe). Written to the output directory:

- ``frames.png``, ``frames.gif``: the sampled frames.
- ``mask.png``: the first frame of every tubelet (temporal slice ``t'``) with the hidden
  patches greyed and the query token outlined.
- ``attention_global.png`` / ``attention_local.png``: for the query token (``--idx_f``,
  ``--idx``), the teacher's and the student's last-block attention
  ``softmax(A / kd_T)`` averaged over heads, over all visible keys (MM-hidden global) or
  within each temporal slice (MM-hidden local); boxes mark the top ``--num_k`` entries of
  the head-averaged row (the loss keeps the top-k of every head separately).
- ``reconstruction.png`` (student with a pixel decoder and hidden tokens): original, student
  input and reconstruction. With ``--normlize_target`` the decoder predicts per-patch
  normalised pixels, so every predicted patch is un-normalised with the mean and std of the
  TRUE patch: its average colour and contrast come from the original, only the pattern
  inside the patch is the model's.
- ``vis.json``: what was drawn (query token, kept top-k tokens, boxes drawn, files).
"""
import argparse
import contextlib
import io
import json
import os
import re
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from checkpoint import (KeyMismatchError, adopt_position_table, load_checkpoint,  # noqa: E402
                        load_teacher, load_weights, saved_args, unwrap_state_dict)
from datasets.sampling import dense_test_indices  # noqa: E402
from datasets.transforms import EvalTransform  # noqa: E402
from datasets.video_io import VideoDecodeError, load_frames  # noqa: E402
from flag_checks import check_flags  # noqa: E402
from losses import pixel_targets  # noqa: E402
from masking_generator import MASK_GENERATORS, build_masking_generator  # noqa: E402
from model_factory import PRETRAIN_MODELS, create_student, create_teacher  # noqa: E402
from modeling_encoder import add_pos_embed_arg  # noqa: E402

PANEL_IN = 2.2  # inches per frame panel
MIN_WIDTH_IN = 6.5
DPI = 100
HIDDEN_RGBA = (0.5, 0.5, 0.5, 0.8)  # greyed hidden patches: the scene stays recognisable
HEAT_CMAP, HEAT_ALPHA = "inferno", 0.6
TOPK_COLOR, QUERY_COLOR = "lime", "cyan"
FILES = ("frames.png", "frames.gif", "mask.png", "attention_global.png",
         "attention_local.png", "reconstruction.png", "vis.json")


def get_args_parser():
    p = argparse.ArgumentParser("MMKD visualisation",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("video_path", help="a video file")
    a("save_path", help="output directory for the figures")
    a("model_path", nargs="?", default="", help="student checkpoint; absent = random student")
    a("--model", default="pretrain_videomae_small_patch16_224", choices=sorted(PRETRAIN_MODELS),
      help="student")
    a("--model_t", default="pretrain_videomae_base_patch16_224", choices=sorted(PRETRAIN_MODELS),
      help="teacher")
    a("--path_t", default="", help="teacher checkpoint; empty = random teacher")
    a("--decoder_depth", type=int, default=None,
      help="student pixel-decoder blocks; default: as in the student checkpoint, 0 without one")
    a("--normlize_target", action=argparse.BooleanOptionalAction, default=True,
      help="the decoder predicts per-patch normalised pixels (VideoMAE's spelling)")
    a("--mask_type", default="tube", choices=sorted(MASK_GENERATORS))
    a("--mask_ratio", type=float, default=0.9)
    a("--num_k", type=int, default=10, help="top-k attention entries marked (MM-hidden)")
    a("--kd_T", type=float, default=1.0, help="attention softmax temperature")
    a("--idx", type=int, default=None,
      help="query patch within its frame, 0..H'*W'-1 (row-major); default: the centre patch")
    a("--idx_f", type=int, default=0, help="query temporal slice (tubelet), 0..T'-1")
    a("--input_size", type=int, default=224)
    a("--num_frames", type=int, default=16)
    add_pos_embed_arg(p)
    a("--sampling_rate", type=int, default=4)
    a("--seed", type=int, default=0, help="seed of the mask and of random weights")
    a("--device", default="cpu")
    return p


# ----------------------------------------------------------------------------- set-up

def load_student_state(path):
    """``(parameter dict, saved run arguments or {})`` of a student checkpoint (pre-training
    ``encoder.*`` keys, or an encoder-only / fine-tuned file)."""
    ckpt = load_checkpoint(path)
    return unwrap_state_dict(ckpt), saved_args(ckpt)


def warn_if_trained_otherwise(args, saved):
    """A note when the student checkpoint was trained at another geometry (it still loads:
    the position table is recomputed, but the maps are then off the training distribution)."""
    differ = [f"--{k} {saved[k]}" for k in ("input_size", "num_frames", "model")
              if k in saved and saved[k] != getattr(args, k)]
    if differ:
        print(f"note: the student checkpoint was trained with {', '.join(differ)}; "
              f"drawing with the flags given")


def decoder_depth_of(state):
    """Pixel-decoder blocks in a student state dict (0 when it has none)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.blocks\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def build_models(args, student_state):
    """Student (no projector: only its encoder and decoder are drawn) and frozen teacher,
    random until :func:`load_models`."""
    if args.decoder_depth is None:
        args.decoder_depth = decoder_depth_of(student_state) if student_state else 0
    geometry = dict(img_size=args.input_size, num_frames=args.num_frames,
                    pos_embed=args.pos_embed)
    student = create_student(args.model, decoder_depth=args.decoder_depth, views=(), **geometry)
    teacher = create_teacher(args.model_t, **geometry)
    return student.eval(), teacher


def load_models(args, student, teacher, student_state, saved=None):
    """Load the checkpoints given (``saved``: the student's saved run arguments, which may
    record its position table); ValueError naming the flags and keys when one does not fit."""
    geometry = f"--input_size {args.input_size} --num_frames {args.num_frames}"
    if student_state is not None:
        adopt_position_table(student, {"model": student_state, "args": saved or {}},
                             args.model_path)
        with explain(f"student checkpoint {args.model_path} does not fit --model {args.model} "
                     f"--decoder_depth {args.decoder_depth} {geometry}"):
            if any(k.startswith("encoder.") for k in student_state):
                load_weights(student, student_state, args.model_path,
                             allow_unexpected=(r"projector\.",))
            else:  # an encoder-only or fine-tuned checkpoint
                load_weights(student.encoder, student_state, args.model_path,
                             allow_missing=(r"norm\.",), allow_unexpected=(r"fc_norm\.", r"head\."))
    if args.path_t:
        with explain(f"teacher checkpoint --path_t {args.path_t} does not fit --model_t "
                     f"{args.model_t} {geometry}"):
            load_teacher(teacher, args.path_t)


@contextlib.contextmanager
def explain(what):
    """Re-raise a ``load_weights`` key mismatch as ``what: <its key lists>`` (other errors,
    e.g. an unsafe or unreadable file, go up as they are)."""
    try:
        yield
    except KeyMismatchError as e:
        lines = str(e).splitlines()
        raise ValueError(f"{what}: " + "; ".join(line.strip() for line in lines[1:])) from None


def resolve_query(mask, grid, idx_f, idx):
    """The query token ``(token, moved)``: token ``idx_f * H'W' + idx`` when visible, else the
    visible token nearest to it in ``(t', h, w)`` grid distance (ties: lowest index).

    Raises:
        ValueError: ``--idx`` / ``--idx_f`` outside the token grid.
    """
    t, h, w = grid
    if not 0 <= idx_f < t:
        raise ValueError(f"--idx_f {idx_f} is outside [0, {t - 1}]: the clip has {t} temporal "
                         f"slices (--num_frames / tubelet size)")
    if not 0 <= idx < h * w:
        raise ValueError(f"--idx {idx} is outside [0, {h * w - 1}]: a frame has {h}x{w} patches")
    token = idx_f * h * w + idx
    if not mask[token]:
        return token, False
    coords = np.stack(np.unravel_index(np.arange(mask.size), grid), 1)  # [N, 3]
    dist = ((coords - coords[token]) ** 2).sum(1).astype(float)
    dist[mask] = np.inf
    return int(dist.argmin()), True


def check_num_k(num_k, mask, grid):
    """``--num_k`` must fit the fewest visible keys of a temporal slice (the local view)."""
    per_slice = int((~mask.reshape(grid[0], -1)).sum(1).min())
    if not 1 <= num_k <= per_slice:
        raise ValueError(f"--num_k {num_k} must be in [1, {per_slice}]: a temporal slice has "
                         f"{per_slice} visible tokens (the keys of the local view)")


def load_clip(path, num_frames, sampling_rate, input_size):
    """The centre dense-sampling window of ``path``: ``(clip [1, 3, T, S, S] normalised,
    display frames [T, S, S, 3] in [0, 1], info dict)``. Raises VideoDecodeError."""
    info = {}

    def indices_fn(n, fps):
        info.update(num_video_frames=int(n), fps=float(fps))
        info["indices"] = dense_test_indices(n, num_frames, sampling_rate, 1, 0)
        return info["indices"]

    frames = load_frames(path, indices_fn)
    clip = EvalTransform(input_size, input_size)(frames)  # [3, T, S, S]
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1, 1)
    shown = (clip * std + mean).clamp(0, 1).permute(1, 2, 3, 0).numpy()  # [T, S, S, 3]
    info["indices"] = [int(i) for i in info["indices"]]
    return clip[None], shown, info


# ----------------------------------------------------------------------------- model reads

@torch.no_grad()
def last_block_logits(encoder, x, bool_masked_pos):
    """Pre-softmax logits ``[heads, N_vis, N_vis]`` of the encoder's last block."""
    out = encoder.forward_features(x, bool_masked_pos, maps_from=(-1,))
    return out.maps[len(encoder.blocks) - 1].logits[0].float()


def global_attention(logits, q, kd_T, num_k):
    """MM-hidden global row of query ``q``: ``softmax(A / kd_T)`` over all visible keys,
    averaged over heads ``[N_vis]``, and the indices of its top ``num_k`` entries."""
    p = (logits[:, q] / kd_T).softmax(-1).mean(0)  # [N_vis]
    return p, p.topk(num_k).indices


def local_attention(logits, q, key_slice, kd_T, num_k):
    """MM-hidden local row of query ``q``: within every temporal slice ``s`` a softmax over
    that slice's visible keys, averaged over heads. Returns ``p [N_vis]`` (each slice's
    entries sum to 1) and a list of the top-``num_k`` key indices of every slice.

    ``key_slice``: ``[N_vis]`` temporal slice of every visible token.
    """
    p = torch.zeros(logits.shape[-1])
    kept = []
    for s in torch.unique(key_slice).tolist():
        keys = (key_slice == s).nonzero().squeeze(1)  # [n_s]
        p_s = (logits[:, q, keys] / kd_T).softmax(-1).mean(0)  # [n_s]
        p[keys] = p_s
        kept.append(keys[p_s.topk(num_k).indices])
    return p, kept


def patch_stats(patches, channels=3):
    """Per-channel mean and std (unbiased, + 1e-6, as ``losses.pixel_targets``) of
    ``patches [..., P * channels]`` in ``(p0 p1 p2 c)`` order: two ``[..., 1, channels]``."""
    x = patches.unflatten(-1, (-1, channels))
    return x.mean(-2, keepdim=True), x.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6


def unnormalize_patches(pred, true_patches):
    """Predicted per-patch normalised pixels ``[M, P * 3]`` -> pixels, using the mean and
    std of the TRUE patches ``[M, P * 3]`` (what VideoMAE's visualisation does)."""
    mean, std = patch_stats(true_patches)
    return (pred.unflatten(-1, (-1, 3)) * std + mean).flatten(-2)


@torch.no_grad()
def reconstruct(student, x, bool_masked_pos, normalize_target):
    """``(frames [T, S, S, 3] in [0, 1], hidden-token MSE in the loss's target space)``:
    visible patches from the clip, hidden ones predicted by the student's pixel decoder."""
    pe = student.patch_embed
    args = (pe.tubelet_size, pe.patch_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    pred = student(x, bool_masked_pos).pixels[0].float()  # [N_hid, t*p*p*3]
    hidden = bool_masked_pos[0]
    target = pixel_targets(x, bool_masked_pos, *args, normalize=normalize_target)[0]
    mse = float(torch.nn.functional.mse_loss(pred, target))
    raw = pixel_targets(x, torch.ones_like(bool_masked_pos), *args, normalize=False)[0]  # [N, P]
    patches = raw.clone()
    patches[hidden] = unnormalize_patches(pred, raw[hidden]) if normalize_target else pred
    t, h, w = pe.grid_size
    frames = rearrange(patches, "(t h w) (p0 p1 p2 c) -> (t p0) (h p1) (w p2) c", t=t, h=h, w=w,
                       p0=pe.tubelet_size, p1=pe.patch_size, p2=pe.patch_size)
    return frames.clamp(0, 1).cpu().numpy(), mse


# ----------------------------------------------------------------------------- drawing

def figure_size(rows, cols, extra_w=0.0, title_lines=2, legend=False):
    """Figure size in inches for ``rows x cols`` frame panels of ``PANEL_IN``, ``extra_w``
    inches of colour bars and labels, a title of ``title_lines`` lines and an optional legend
    row (at least ``MIN_WIDTH_IN`` wide, so that the title stays readable)."""
    width = max(cols * PANEL_IN + extra_w, MIN_WIDTH_IN)
    return width, rows * (PANEL_IN + 0.3) + 0.2 * title_lines + 0.3 + 0.35 * legend


def new_figure(rows, cols, title, extra_w=0.0, legend=False):
    """A constrained-layout figure of :func:`figure_size` (as tall as its wrapped title
    needs), its axes ``[rows, cols]``."""
    width = figure_size(rows, cols, extra_w)[0]
    chars = max(40, int(width * 12))
    title = "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))
    size = figure_size(rows, cols, extra_w, title.count("\n") + 1, legend)
    fig, axes = plt.subplots(rows, cols, figsize=size, dpi=DPI, squeeze=False,
                             layout="constrained")
    fig.suptitle(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def save(fig, out_dir, name):
    """Save as a dithered 256-colour PNG: a third of the bytes of a true-colour one, with the
    box, legend and colour-bar colours kept (octree palette)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    plt.close(fig)
    image = Image.open(buf).convert("RGB")
    palette = image.quantize(256, method=Image.Quantize.FASTOCTREE)
    path = os.path.join(out_dir, name)
    image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    return path


def box(ax, token, grid, patch, color, gid=None, lw=2.0, ls="-", inset=0.0):
    """Outline the patch of ``token`` (its spatial position) on ``ax``, ``inset`` pixels
    inside its border (the query's box sits inside a top-k box around the same patch)."""
    _, h, w = np.unravel_index(token, grid)
    ax.add_patch(Rectangle((w * patch - 0.5 + inset, h * patch - 0.5 + inset), patch - 2 * inset,
                           patch - 2 * inset, fill=False, ec=color, lw=lw, ls=ls, gid=gid,
                           clip_on=False))


def hidden_overlay(mask_slice, patch):
    """RGBA image ``[H'*p, W'*p, 4]`` greying the hidden patches of one slice ``[H', W']``."""
    rgba = np.zeros(mask_slice.shape + (4,))
    rgba[mask_slice] = HIDDEN_RGBA
    return rgba.repeat(patch, 0).repeat(patch, 1)


def slice_label(s, tubelet, indices):
    frames = indices[s * tubelet:(s + 1) * tubelet]
    return f"slice t'={s}\nvideo frames {', '.join(map(str, frames))}"


def draw_frames(shown, info, out_dir):
    """All sampled frames, 8 per row."""
    t = len(shown)
    cols = min(t, 8)
    rows = -(-t // cols)
    fig, axes = new_figure(rows, cols, f"The {t} sampled frames: every {info['sampling_rate']}th "
                           f"frame of the centre window of the {info['num_video_frames']}-frame "
                           f"video, {shown.shape[1]} px centre crop (the model input)")
    for i, ax in enumerate(axes.flat):
        if i < t:
            ax.imshow(shown[i], interpolation="nearest")
            ax.set_title(f"frame {i} (video #{info['indices'][i]})", fontsize=9)
        else:
            ax.axis("off")
    return save(fig, out_dir, "frames.png")


def save_gif(shown, out_dir, ms_per_frame=150):
    """``frames.gif``: the sampled frames ``[T, S, S, 3]`` at model resolution, looping."""
    images = [Image.fromarray((f * 255).round().astype(np.uint8)) for f in shown]
    path = os.path.join(out_dir, "frames.gif")
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return path


def draw_mask(shown, mask, query, moved, geo, args, info, out_dir):
    """One panel per temporal slice: hidden patches greyed, the query token outlined."""
    t, h, w = geo["grid"]
    tub, patch = geo["tubelet"], geo["patch"]
    per_slice = mask.reshape(t, h, w)
    hid = int(mask.sum())
    title = (f"{args.mask_type} mask, --mask_ratio {args.mask_ratio}: {hid} of {mask.size} tokens "
             f"hidden (grey), {mask.size - hid} visible "
             f"({(~per_slice).sum((1, 2)).tolist()} per slice); student and teacher encode "
             f"only the visible ones. First frame of each {tub}-frame tubelet shown.\n"
             + query_text(query, moved, geo, args))
    fig, axes = new_figure(1, t, title, legend=True)
    for s, ax in enumerate(axes[0]):
        ax.imshow(shown[s * tub], interpolation="nearest")
        ax.imshow(hidden_overlay(per_slice[s], patch))
        ax.set_title(slice_label(s, tub, info["indices"]), fontsize=9)
        if query // (h * w) == s:
            box(ax, query, geo["grid"], patch, QUERY_COLOR, lw=2.5)
    fig.legend(handles=legend_handles(topk=False), loc="outside lower center", ncol=2, fontsize=9)
    return save(fig, out_dir, "mask.png")


def query_text(query, moved, geo, args):
    t, h, w = np.unravel_index(query, geo["grid"])
    where = f"Query token: slice t'={t}, patch {h * geo['grid'][2] + w} (row {h}, column {w})"
    if moved:
        where += (f" -- the requested --idx_f {args.idx_f} --idx {args.idx} is hidden, so the "
                  f"nearest visible token is used")
    return where


def legend_handles(topk=True, num_k=None):
    handles = [Patch(fc=HIDDEN_RGBA, ec="none", label="hidden patch (not seen by either model)"),
               Line2D([], [], color=QUERY_COLOR, lw=2.5, label="query token")]
    if topk:
        handles.append(Line2D([], [], color=TOPK_COLOR, lw=2, label=f"top-{num_k} kept entries"))
    return handles


def heat_grid(p, vis_tokens, num_tokens, grid):
    """Attention ``p [N_vis]`` placed on the token grid ``[T', H', W']`` (NaN where hidden)."""
    full = np.full(num_tokens, np.nan)
    full[vis_tokens] = p
    return full.reshape(grid)


def mass_labels(kind, heat, kept_tokens):
    """Per-slice captions: the row's mass in the slice and the kept part of it (global), or
    the kept part of the slice's distribution (local)."""
    t = heat.shape[0]
    flat = np.nan_to_num(heat.reshape(t, -1))  # [T', H'W']
    kept = np.zeros_like(flat)
    kept.reshape(-1)[kept_tokens] = flat.reshape(-1)[kept_tokens]
    kept_mass, slice_mass = kept.sum(1), flat.sum(1)
    if kind == "global":
        return [f"mass in slice {m:.2f}, kept {k:.2f}" for m, k in zip(slice_mass, kept_mass)]
    return [f"top-k mass {k:.2f} of 1" for k in kept_mass]


def draw_attention_row(axes, shown, mask, heat, kept_tokens, query, geo, vmax, captions):
    """One model's row: the heat map of every slice over its first frame, hidden patches
    greyed, the kept entries boxed (gid ``'topk'``), the query outlined."""
    t, h, w = geo["grid"]
    tub, patch = geo["tubelet"], geo["patch"]
    size = h * patch
    for s, ax in enumerate(axes):
        ax.imshow(shown[s * tub], interpolation="nearest")
        ax.imshow(heat[s], cmap=HEAT_CMAP, alpha=HEAT_ALPHA, vmin=0, vmax=vmax,
                  interpolation="nearest", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        ax.imshow(hidden_overlay(mask.reshape(t, h, w)[s], patch))
        for token in kept_tokens:
            if token // (h * w) == s:
                box(ax, token, geo["grid"], patch, TOPK_COLOR, gid="topk")
        if query // (h * w) == s:
            box(ax, query, geo["grid"], patch, QUERY_COLOR, lw=2.0, inset=0.2 * patch)
        ax.set_xlabel(captions[s], fontsize=9)


def count_boxes(axes):
    return sum(1 for ax in axes for p in ax.patches if p.get_gid() == "topk")


def draw_attention(kind, rows, shown, mask, query, moved, geo, args, info, out_dir):
    """``attention_{kind}.png``: a row per model (teacher, student) and a column per slice.

    ``rows``: list of ``(label, p [N_vis], kept_tokens)``; returns the boxes drawn per row.
    """
    t = geo["grid"][0]
    vis_tokens = np.flatnonzero(~mask)
    what = (f"MM-hidden GLOBAL view: softmax over all visible keys of the clip, so the {t} "
            f"panels of a row together sum to 1" if kind == "global" else
            "MM-hidden LOCAL view: a separate softmax over the visible keys of each temporal "
            "slice, so every panel sums to 1")
    title = (f"{what}. Attention row of the query token (cyan) in the last block, "
             f"softmax(A / kd_T), kd_T={args.kd_T:g}, averaged over heads. Green boxes: the "
             f"top-{args.num_k} (--num_k) entries of that row"
             f"{'' if kind == 'global' else ' in each slice'} (the loss keeps the top-k of "
             f"every head separately).\n" + query_text(query, moved, geo, args))
    fig, axes = new_figure(len(rows), t, title, extra_w=1.3, legend=True)
    drawn = []
    for r, (label, p, kept) in enumerate(rows):
        heat = heat_grid(p, vis_tokens, mask.size, geo["grid"])
        kept_tokens = vis_tokens[np.concatenate(kept)]
        vmax = float(np.nanmax(heat))
        draw_attention_row(axes[r], shown, mask, heat, kept_tokens, query, geo, vmax,
                           mass_labels(kind, heat, kept_tokens))
        axes[r, 0].set_ylabel(label, fontsize=10)
        colors = ScalarMappable(Normalize(0, vmax), HEAT_CMAP)  # opaque, unlike the overlay
        fig.colorbar(colors, ax=axes[r].tolist(), fraction=0.03, pad=0.01,
                     label=f"P(query -> key){'' if kind == 'global' else ' in slice'}")
        drawn.append(count_boxes(axes[r]))
    for s, ax in enumerate(axes[0]):
        ax.set_title(slice_label(s, geo["tubelet"], info["indices"]), fontsize=9)
    fig.legend(handles=legend_handles(num_k=args.num_k), loc="outside lower center", ncol=3,
               fontsize=9)
    save(fig, out_dir, f"attention_{kind}.png")
    return drawn


def draw_reconstruction(shown, masked_shown, recon, mse, geo, args, info, out_dir):
    """Rows: original, student input, reconstruction; a column per slice (first frame)."""
    t = geo["grid"][0]
    tub = geo["tubelet"]
    how = ("The decoder predicts per-patch NORMALISED pixels (--normlize_target): each predicted "
           "patch is un-normalised with the mean and std of the TRUE patch, so its average colour "
           "and contrast come from the original; only the pattern inside it is predicted."
           if args.normlize_target else "The decoder predicts raw pixels (--no-normlize_target).")
    title = (f"Pixel reconstruction by the student's decoder (--decoder_depth "
             f"{args.decoder_depth}): visible patches copied from the clip, hidden patches "
             f"predicted. Hidden-patch MSE in the loss's target space: {mse:.3f}.\n{how}")
    fig, axes = new_figure(3, t, title, extra_w=0.45)
    rows = (("original", shown), ("student input\n(hidden = grey)", masked_shown),
            ("reconstruction", recon))
    for r, (label, frames) in enumerate(rows):
        for s in range(t):
            axes[r, s].imshow(frames[s * tub], interpolation="nearest")
        axes[r, 0].set_ylabel(label, fontsize=10)
    for s, ax in enumerate(axes[0]):
        ax.set_title(slice_label(s, tub, info["indices"]), fontsize=9)
    return save(fig, out_dir, "reconstruction.png")


def masked_frames(shown, mask, geo):
    """Display frames ``[T, S, S, 3]`` as the student gets them: hidden patches solid grey."""
    t, h, w = geo["grid"]
    hidden = mask.reshape(t, 1, h, 1, w, 1).repeat(geo["tubelet"], 1).repeat(geo["patch"], 3)
    hidden = hidden.repeat(geo["patch"], 5).reshape(shown.shape[:3])  # [T, S, S]
    out = shown.copy()
    out[hidden] = HIDDEN_RGBA[:3]
    return out


# ----------------------------------------------------------------------------- main

def check_device(name):
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def prepare(args):
    """Models, mask, query token and clip; every bad input fails here with a ValueError,
    FileNotFoundError or VideoDecodeError naming the flag, key or file."""
    device = check_device(args.device)
    torch.manual_seed(args.seed)
    student_state, saved = load_student_state(args.model_path) if args.model_path else (None, {})
    warn_if_trained_otherwise(args, saved)
    student, teacher = build_models(args, student_state)
    pe = student.patch_embed
    geo = dict(grid=tuple(pe.grid_size), tubelet=pe.tubelet_size, patch=pe.patch_size)
    mask = build_masking_generator(args.mask_type, pe.grid_size, args.mask_ratio, seed=args.seed)()
    if args.idx is None:
        args.idx = (pe.grid_size[1] // 2) * pe.grid_size[2] + pe.grid_size[2] // 2
    query, moved = resolve_query(mask, geo["grid"], args.idx_f, args.idx)
    check_num_k(args.num_k, mask, geo["grid"])
    load_models(args, student, teacher, student_state, saved)
    x, shown, info = load_clip(args.video_path, args.num_frames, args.sampling_rate,
                               args.input_size)
    info["sampling_rate"] = args.sampling_rate
    student, teacher, x = student.to(device), teacher.to(device), x.to(device)
    return student, teacher, x, mask, query, moved, geo, shown, info


def attention_rows(student, teacher, x, bool_masked_pos, q_vis, key_slice, args):
    """``{'global': rows, 'local': rows}``, teacher first; a row is ``(label, p [N_vis],
    kept)`` with ``kept`` a list of arrays of visible-token rows (one array for the global
    view, one per temporal slice for the local one)."""
    out = {"global": [], "local": []}
    for label, model in ((teacher_label(args), teacher), (student_label(args), student)):
        logits = last_block_logits(model.encoder, x, bool_masked_pos).cpu()  # [h, N_vis, N_vis]
        p, kept = global_attention(logits, q_vis, args.kd_T, args.num_k)
        out["global"].append((label, p.numpy(), [kept.numpy()]))
        p, kept = local_attention(logits, q_vis, key_slice, args.kd_T, args.num_k)
        out["local"].append((label, p.numpy(), [k.numpy() for k in kept]))
    return out


def short(name):
    return name.replace("pretrain_videomae_", "ViT-").replace("_patch16_224", "")


def teacher_label(args):
    return f"teacher {short(args.model_t)}\n(frozen, {'loaded' if args.path_t else 'RANDOM'})"


def student_label(args):
    return f"student {short(args.model)}\n({'loaded' if args.model_path else 'RANDOM'})"


def record_attention(kind, rows, drawn, vis_tokens):
    """The sidecar entry of one attention figure: per model the kept tokens (token indices;
    a list per slice for the local view), the boxes drawn and the row over visible tokens."""
    entry = {}
    for (label, p, kept), n in zip(rows, drawn):
        tokens = [vis_tokens[k].tolist() for k in kept]
        entry[label.split()[0]] = {"kept_tokens": tokens if kind == "local" else tokens[0],
                                   "boxes_drawn": n, "max_probability": float(p.max()),
                                   "probabilities": p.tolist()}
    return entry


def summary_header(args, info, geo, mask, query, moved):
    """What ``vis.json`` says about the inputs: clip, mask, query token, models."""
    per_frame = geo["grid"][1] * geo["grid"][2]
    return {"video": args.video_path, "frame_indices": info["indices"],
            "grid": list(geo["grid"]), "mask_type": args.mask_type, "mask_ratio": args.mask_ratio,
            "hidden_tokens": np.flatnonzero(mask).tolist(), "num_k": args.num_k, "kd_T": args.kd_T,
            "query": {"token": int(query), "slice": int(query // per_frame),
                      "idx": int(query % per_frame), "requested": [args.idx_f, args.idx],
                      "moved": moved},
            "student": {"model": args.model, "checkpoint": args.model_path or None,
                        "decoder_depth": args.decoder_depth},
            "teacher": {"model": args.model_t, "checkpoint": args.path_t or None},
            "attention": {}, "reconstruction": None}


def visualise(args):
    """Draw every figure; returns the ``vis.json`` summary."""
    student, teacher, x, mask, query, moved, geo, shown, info = prepare(args)
    os.makedirs(args.save_path, exist_ok=True)
    bool_masked_pos = torch.from_numpy(mask)[None].to(x.device)  # [1, N]
    vis_tokens = np.flatnonzero(~mask)
    q_vis = int(np.searchsorted(vis_tokens, query))  # the query's row among visible tokens
    per_frame = geo["grid"][1] * geo["grid"][2]
    key_slice = torch.from_numpy(vis_tokens // per_frame)  # [N_vis]
    files = [draw_frames(shown, info, args.save_path), save_gif(shown, args.save_path),
             draw_mask(shown, mask, query, moved, geo, args, info, args.save_path)]
    rows = attention_rows(student, teacher, x, bool_masked_pos, q_vis, key_slice, args)
    summary = summary_header(args, info, geo, mask, query, moved)
    for kind in ("global", "local"):
        drawn = draw_attention(kind, rows[kind], shown, mask, query, moved, geo, args, info,
                               args.save_path)
        files.append(os.path.join(args.save_path, f"attention_{kind}.png"))
        summary["attention"][kind] = record_attention(kind, rows[kind], drawn, vis_tokens)
    if args.decoder_depth > 0 and mask.any():
        recon, mse = reconstruct(student, x, bool_masked_pos, args.normlize_target)
        files.append(draw_reconstruction(shown, masked_frames(shown, mask, geo), recon, mse, geo,
                                         args, info, args.save_path))
        summary["reconstruction"] = {
            "hidden_mse_target_space": mse, "normalised_target": args.normlize_target,
            "unnormalised_with": "true patch mean/std" if args.normlize_target else None}
    summary["files"] = [os.path.basename(f) for f in files] + ["vis.json"]
    with open(os.path.join(args.save_path, "vis.json"), "w") as f:
        json.dump(summary, f)
    return summary


def one_line(e):
    return " ".join(str(e).split())


def main(args):
    try:
        check_flags(args)
        summary = visualise(args)
    except (ValueError, FileNotFoundError, VideoDecodeError) as e:
        sys.exit(f"error: {one_line(e)}")
    q = summary["query"]
    print(f"query token {q['token']} (slice {q['slice']}, patch {q['idx']})"
          + (" -- moved: the requested one is hidden" if q["moved"] else ""))
    if summary["reconstruction"] is None:
        print("no reconstruction: the student has no pixel decoder (--decoder_depth 0)"
              if args.decoder_depth == 0 else "no reconstruction: no hidden tokens")
    print(f"wrote {', '.join(summary['files'])} to {args.save_path}")
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
