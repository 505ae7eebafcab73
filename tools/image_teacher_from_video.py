"""Make an image teacher for MVD from a video encoder checkpoint (for the demo and for runs
without MAE's ImageNet weights): the same ViT weights in the ImageMAE layout that
``run_mvd_pretraining.py --image_teacher_model_ckpt_path`` loads.

    python tools/image_teacher_from_video.py VIDEO_CKPT.pth IMAGE_TEACHER.pth

The tubelet embedding's kernel ``[D, 3, t, p, p]`` is summed over its ``t`` frames into an
image patch embedding ``[D, 3, p, p]``: on a still frame (a tubelet of ``t`` copies of it)
both give the same tokens. Each block's separate q and v biases become timm's fused qkv bias
``[q, 0, v]`` (VideoMAE has no k bias); every other block weight keeps its name. The class
token is zero, the position table is left to the teacher (MAE's fixed 2-D table), and there
is no final norm (MVD's teacher reads the last block before it). This is a stand-in: MVD's
image teachers are MAE models trained on ImageNet images.

Written as ``{"model": {name: tensor}}`` with ``save_checkpoint`` (atomically); the source is
read with safe loading and may be any layout ``checkpoint.py`` reads.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from weights import canonical_state_dict  # noqa: E402


def image_teacher_state(ckpt):
    """A loaded video checkpoint (any supported layout) -> the ImageMAE state dict
    (timm ``VisionTransformer`` keys: ``cls_token``, ``patch_embed.proj``, ``blocks.*``).

    Raises:
        ValueError: the checkpoint has no tubelet embedding or blocks.
    """
    _, state = canonical_state_dict(ckpt)
    if "patch_embed.proj.weight" not in state or not any(k.startswith("blocks.") for k in state):
        raise ValueError("the checkpoint holds no video encoder (patch_embed.proj.weight and "
                         "blocks.*)")
    kernel = state["patch_embed.proj.weight"]  # [D, 3, t, p, p]
    out = {"cls_token": torch.zeros(1, 1, kernel.shape[0], dtype=kernel.dtype),
           "patch_embed.proj.weight": kernel.sum(dim=2),
           "patch_embed.proj.bias": state["patch_embed.proj.bias"]}
    for key, value in state.items():
        if not key.startswith("blocks.") or key.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        out[key] = value
        if key.endswith("attn.qkv.weight"):
            prefix = key[:-len("qkv.weight")]
            q, v = state[prefix + "q_bias"], state[prefix + "v_bias"]
            out[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="video encoder checkpoint (a VideoMAE pre-training file, ours, ...)")
    p.add_argument("dst", help="image teacher checkpoint to write")
    args = p.parse_args(argv)
    try:
        state = image_teacher_state(load_checkpoint(args.src))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {args.src}: {e}")
    save_checkpoint(args.dst, {"model": state})
    blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    print(f"wrote {args.dst}: image teacher of width {state['cls_token'].shape[-1]}, "
          f"{blocks} blocks, from {args.src}")


if __name__ == "__main__":
    main()
