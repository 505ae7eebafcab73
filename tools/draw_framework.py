"""Draw MMKD's data flow (Li et al., "Mask Again", ACM MM 2023, Sec. 3 / Fig. 2) as
``figs/mmkd_framework.png``, with matplotlib only.

    python tools/draw_framework.py [OUT_PNG]     # default figs/mmkd_framework.png

clip -> tube mask -> visible tokens -> trainable student ViT and frozen teacher ViT ->
"mask again" (the teacher's top-num_f salient tokens; the top-num_k entries of every
attention row) -> MM-hint, MM-relation, MM-hidden global / local -> the total loss.
"""
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

STUDENT, TEACHER, MASK_AGAIN, LOSS, INPUT = "#2b6cb0", "#dd6b20", "#2f855a", "#6b46c1", "#4a5568"
HIDDEN = "#a0aec0"
TUBE = [(0, 1), (1, 3), (2, 0), (3, 2), (0, 3), (2, 2), (3, 0), (1, 1), (0, 0), (3, 3),
        (2, 3), (1, 0)]  # hidden cells of the 4x4 icon grid: 12 of 16, the same in every slice


def box(ax, x, y, w, h, text, color, fill=0.12, size=11, weight="normal", ls="-"):
    """A rounded box with centred text; returns its (x, y, w, h)."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                fc=matplotlib.colors.to_rgba(color, fill), ec=color, lw=2, ls=ls))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
            weight=weight, color="#1a202c", linespacing=1.35)
    return x, y, w, h


def arrow(ax, start, end, color, label=None, label_at=0.5, offset=(0, 0.15), rad=0.0, size=10):
    """An arrow ``start -> end`` (data coordinates) with an optional label along it."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>,head_length=8,head_width=4.5",
                                 color=color, lw=2, connectionstyle=f"arc3,rad={rad}",
                                 shrinkA=2, shrinkB=2))
    if label:
        x = start[0] + (end[0] - start[0]) * label_at + offset[0]
        y = start[1] + (end[1] - start[1]) * label_at + offset[1]
        ax.text(x, y, label, ha="center", va="center", fontsize=size, color=color,
                bbox=dict(fc="white", ec="none", pad=1.0))


def grid_icon(ax, x, y, cell, hidden=(), n=4, color="#90cdf4"):
    """An ``n x n`` patch grid at ``(x, y)`` (lower left) with the ``hidden`` cells greyed."""
    for r in range(n):
        for c in range(n):
            fc = HIDDEN if (r, c) in hidden else color
            ax.add_patch(Rectangle((x + c * cell, y + (n - 1 - r) * cell), cell, cell, fc=fc,
                                   ec="white", lw=1))


def stack_icon(ax, x, y, cell, hidden=(), depth=3, step=0.18):
    """``depth`` grids offset like frames of a clip (the front one last)."""
    for d in reversed(range(depth)):
        grid_icon(ax, x + d * step, y + d * step, cell, hidden)


def token_icon(ax, x, y, n=4, size=0.28, gap=0.08):
    """The visible tokens of one slice as a column of squares."""
    for i in range(n):
        ax.add_patch(Rectangle((x, y + i * (size + gap)), size, size, fc="#90cdf4", ec=INPUT, lw=1))


def draw_input(ax):
    """Clip -> tube mask -> visible tokens, on the left."""
    stack_icon(ax, 0.35, 3.25, 0.3)
    ax.text(1.12, 2.75, "video clip\n16 frames, stride 4\n3 x 16 x 224 x 224", ha="center",
            va="top", fontsize=10)
    arrow(ax, (2.05, 4.1), (2.65, 4.1), INPUT)
    stack_icon(ax, 2.75, 3.25, 0.3, hidden=set(TUBE))
    ax.text(3.55, 2.75, "tube mask (ratio 0.9)\nthe same patches hidden\nin every temporal slice",
            ha="center", va="top", fontsize=10)
    arrow(ax, (4.45, 4.1), (5.0, 4.1), INPUT)
    token_icon(ax, 5.1, 3.5)
    ax.text(5.24, 2.75, "visible\ntokens\nx[~M]\n(10 %)", ha="center", va="top", fontsize=10)


def draw_models(ax):
    """Student (top) and frozen teacher (bottom), both fed the same visible tokens."""
    arrow(ax, (5.5, 4.75), (6.35, 6.2), INPUT, rad=-0.2)
    arrow(ax, (5.5, 3.45), (6.35, 2.0), INPUT, rad=0.2)
    box(ax, 6.4, 5.55, 2.7, 1.4, "Student ViT\n(trainable; e.g. ViT-S)\n+ projector to the\n"
        "teacher's width $D_t$", STUDENT, weight="bold")
    box(ax, 6.4, 1.3, 2.7, 1.4, "Teacher ViT\n(frozen; VideoMAE-\npretrained ViT-B)", TEACHER,
        weight="bold")
    ax.text(7.75, 4.12, "both encode the same\nvisible tokens;\nlast block read out:\n"
            "features Z, attention\nlogits A, values V", ha="center", va="center", fontsize=9.5,
            color=INPUT, style="italic")


def draw_mask_again(ax):
    """The dashed "mask again" stage with its two selections."""
    ax.add_patch(FancyBboxPatch((9.75, 0.95), 3.1, 6.45, fc="none", ec=MASK_AGAIN, lw=2, ls="--",
                                boxstyle="round,pad=0.02,rounding_size=0.2"))
    ax.text(11.3, 7.12, "MASK AGAIN", ha="center", va="center", fontsize=13, weight="bold",
            color=MASK_AGAIN)
    ax.text(11.3, 6.78, "distil only the salient part", ha="center", va="center", fontsize=10,
            color=MASK_AGAIN)
    box(ax, 9.95, 4.45, 2.7, 1.95, "top-$num_f$ salient tokens\n"
        "$S = \\mathrm{topk}(\\|Z_t\\|_1, num_f)$\nper clip, chosen by\nthe teacher's features",
        MASK_AGAIN, size=10.5)
    box(ax, 9.95, 1.2, 2.7, 2.55, "top-$num_k$ attention\n$P = \\mathrm{softmax}(A / kd_T)$\n"
        "keep the $num_k$ largest\nentries of every row,\nrenormalise; $O = P\\,V$\n"
        "(all keys / each slice)", MASK_AGAIN, size=10.5)
    # student -> selections, teacher -> selections (blue / orange)
    arrow(ax, (9.15, 6.45), (9.95, 5.9), STUDENT, "$Z_s$", 0.45, (0, 0.2))
    arrow(ax, (9.15, 5.75), (9.95, 3.3), STUDENT, "$A_s, V_s$", 0.25, (0.35, 0))
    arrow(ax, (9.15, 2.35), (9.95, 4.85), TEACHER, "$Z_t$", 0.25, (0.32, 0))
    arrow(ax, (9.15, 1.7), (9.95, 2.0), TEACHER, "$A_t, V_t$", 0.45, (0, -0.25))


def draw_losses(ax):
    """The four terms and the total."""
    specs = [(6.05, "MM-hint   $\\times\\gamma$", "MSE($Z_s[S]$, $Z_t[S]$)"),
             (4.55, "MM-relation   $\\times\\alpha$",
              "KL of the token-similarity\ndistributions over $S$ (batch)"),
             (2.75, "MM-hidden global   $\\times\\beta\\beta_1$", "MSE($O_s$, $O_t$), all keys"),
             (1.25, "MM-hidden local   $\\times\\beta\\beta_2$", "MSE per temporal slice")]
    for y, title, body in specs:
        box(ax, 13.35, y, 2.5, 1.25, f"{title}\n{body}", LOSS, size=10)
    for y in (6.675, 5.175):
        arrow(ax, (12.7, 5.45), (13.35, y), MASK_AGAIN)
    for y in (3.375, 1.875):
        arrow(ax, (12.7, 2.5), (13.35, y), MASK_AGAIN)
    for y, _, _ in specs:  # every term feeds the total: a bus on the right
        ax.plot([15.85, 16.1], [y + 0.625] * 2, color=LOSS, lw=2)
    ax.plot([16.1, 16.1], [6.675, 0.375], color=LOSS, lw=2)
    arrow(ax, (16.1, 0.375), (15.45, 0.375), LOSS)
    box(ax, 6.4, 0.05, 9.0, 0.65,
        r"$\mathcal{L} = \gamma\,\mathcal{L}_{\mathrm{hint}} + \beta\,(\beta_1"
        r"\mathcal{L}_{\mathrm{global}} + \beta_2\mathcal{L}_{\mathrm{local}}) + \alpha\,"
        r"\mathcal{L}_{\mathrm{relation}}$", LOSS, fill=0.2, size=15)


def draw_key(ax):
    ax.text(0.3, 1.75, "gradients reach only the student (and projector)\n"
            "reference ViT-B student: $\\gamma$=0.2, $\\alpha$=0.1, $\\beta$=1, $\\beta_1$=3, "
            "$\\beta_2$=1,\n$num_k$ = $num_f$ = 10, $kd_T$ = 1; relation $\\tau_s$=0.1, "
            "$\\tau_t$=0.05",
            ha="left", va="top", fontsize=9.5, color=INPUT, linespacing=1.5)
    for i, (color, text) in enumerate(((STUDENT, "student (trainable)"),
                                       (TEACHER, "teacher (frozen, no gradient)"),
                                       (MASK_AGAIN, "mask again: selection"),
                                       (LOSS, "distillation losses"))):
        x, y = 0.3 + 2.9 * (i % 2), 0.62 - 0.4 * (i // 2)
        ax.add_patch(Rectangle((x, y - 0.09), 0.18, 0.18, fc=color))
        ax.text(x + 0.25, y, text, va="center", fontsize=8.5)


def draw(path):
    fig, ax = plt.subplots(figsize=(16, 7.9), dpi=100)
    ax.set_xlim(0, 16.3)
    ax.set_ylim(0, 7.9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(8, 7.7, "MMKD: masked knowledge distillation for masked video modelling "
            "(\"Mask Again\", ACM MM 2023)", ha="center", va="center", fontsize=15, weight="bold")
    draw_input(ax)
    draw_models(ax)
    draw_mask_again(ax)
    draw_losses(ax)
    draw_key(ax)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else
               os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figs",
                            "mmkd_framework.png")))
