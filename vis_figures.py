"""The figures of ``run_vis.py`` (matplotlib only): frames, mask, attention and
reconstruction panels, their sizes and boxes. Inputs are numpy arrays the CLI has computed:
``shown`` ``[T, H, W, 3]`` floats in [0, 1], ``mask`` ``[N]`` bool (True = hidden), token
indices over the ``(T', H', W')`` grid of ``geo``."""
import io
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

PANEL_IN = 2.2  # inches per frame panel
MIN_WIDTH_IN = 6.5
DPI = 100
HIDDEN_RGBA = (0.5, 0.5, 0.5, 0.8)  # greyed hidden patches: the scene stays recognisable
HEAT_CMAP, HEAT_ALPHA = "inferno", 0.6
TOPK_COLOR, QUERY_COLOR = "lime", "cyan"

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
