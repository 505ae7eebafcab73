"""Checkpoints: atomic saving, safe loading (``weights_only=True``: a checkpoint never runs
code), auto-resume, and loading encoder weights from the checkpoint formats users have
(ours, VideoMAE / MVD / MMKD pre-training with ``encoder.`` prefixes, fine-tuned ones,
``model`` / ``module`` / ``state_dict`` wrappers, DDP's ``module.`` prefixes).
"""
import glob
import os
import pickle
import re

import torch


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: into a temporary file in the same directory,
    flushed to disk, then renamed over ``path``, so a crash never leaves a torn file and the
    previous checkpoint stays until the new one is complete."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """Load a checkpoint file on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a tensors-only checkpoint (would need to run code) or is
            not a checkpoint at all.
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load checkpoint {path!r} safely (weights_only=True): {first}") from e


def unwrap_state_dict(ckpt):
    """The parameter dict inside a checkpoint: its ``model``, ``module`` or ``state_dict``
    entry, or the checkpoint itself; DDP's ``module.`` prefixes removed."""
    for key in ("model", "module", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()
            if isinstance(v, torch.Tensor)}


def encoder_state_dict(state):
    """Keys relative to the encoder: a pre-training checkpoint's ``encoder.*`` entries with the
    prefix removed (decoder, projector and mask token dropped), or a fine-tuned checkpoint's
    keys as they are."""
    if any(k.startswith("encoder.") for k in state):
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return dict(state)


def load_weights(module, state, source, allow_missing=(), allow_unexpected=()):
    """Load ``state`` into ``module``, failing loudly instead of leaving weights random.

    Args:
        module: target ``nn.Module``.
        state: parameter dict, keys relative to ``module``.
        source: name of the checkpoint for messages.
        allow_missing / allow_unexpected: regexes of keys that may be absent / left over
            (e.g. a new classification head, a pre-training final norm).
    Returns:
        ``(missing, unexpected)`` key lists that were allowed.
    Raises:
        ValueError: listing every missing, unexpected or wrongly shaped key that is not allowed.
    """
    own = module.state_dict()
    shape_bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_missing = [k for k in missing if not any(re.match(p, k) for p in allow_missing)]
    bad_unexpected = [k for k in unexpected if not any(re.match(p, k) for p in allow_unexpected)]
    if shape_bad or bad_missing or bad_unexpected:
        lines = [f"checkpoint {source} does not fit {type(module).__name__}:"]
        for title, keys in (("wrong shape", shape_bad), ("missing", bad_missing),
                            ("unexpected", bad_unexpected)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:12])
                             + (" ..." if len(keys) > 12 else ""))
        raise ValueError("\n".join(lines))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected


def load_teacher(teacher, path):
    """Load a teacher's encoder from any pre-training or fine-tuned checkpoint at ``path``
    (``--path_t``). A final norm, classifier head or pixel decoder in the file is ignored;
    anything the encoder needs and does not find is an error."""
    state = encoder_state_dict(unwrap_state_dict(load_checkpoint(path)))
    return load_weights(teacher.encoder, state, path,
                        allow_unexpected=(r"norm\.", r"fc_norm\.", r"head\."))


def latest_checkpoint(output_dir):
    """Path of the newest ``checkpoint-*.pth`` in ``output_dir`` (``checkpoint-last.pth``
    first), or None."""
    last = os.path.join(output_dir, "checkpoint-last.pth")
    if os.path.isfile(last):
        return last
    found = []
    for p in glob.glob(os.path.join(output_dir, "checkpoint-*.pth")):
        m = re.fullmatch(r"checkpoint-(\d+)\.pth", os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None
