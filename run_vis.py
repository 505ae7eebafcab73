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
import json
import os
import re
import sys

import numpy as np
import torch
from einops import rearrange
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from checkpoint import load_checkpoint, saved_args, unwrap_state_dict
from datasets.sampling import dense_test_indices
from datasets.transforms import EvalTransform
from datasets.video_io import VideoDecodeError, load_frames
from flag_checks import check_flags
from losses import pixel_targets
from masking_generator import MASK_GENERATORS, build_masking_generator
from model_factory import PRETRAIN_MODELS, create_student, create_teacher
from pos_embed import add_pos_embed_arg
from vis_figures import (draw_attention, draw_frames, draw_mask, draw_reconstruction,
                         masked_frames, save_gif)
from weights import KeyMismatchError, adopt_position_table, load_teacher, load_weights

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
