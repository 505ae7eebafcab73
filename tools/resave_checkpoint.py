"""Re-save a checkpoint YOU TRUST as tensors only, so that safe loading takes it.

    python tools/resave_checkpoint.py SRC.pth DST.pth

Safe loading (``torch.load(weights_only=True)``, every script of this project) refuses a
file that holds Python objects other than tensors and plain containers (``argparse.Namespace``
excepted), because unpickling such objects can run code. This command loads ``SRC`` with the
full unpickler (``weights_only=False``) **only when safe loading refuses it**, which runs
whatever code the file carries: use it only on files from a source you trust. It writes
``DST`` (atomically) as::

    {"model": {name: tensor}, "args": {name: plain value}, "epoch": int}   # each when present

``model`` is the checkpoint's weights (``model`` / ``module`` / ``state_dict`` entry, DDP
``module.`` prefixes removed; ``model_ema`` kept beside it when present), ``args`` its run
arguments as a plain dict (values that are not plain Python become their ``str``). The
optimizer and loss-scaler states are not kept: the result is for ``--finetune``, ``--path_t``,
``--eval`` and the converters, not for resuming. The result is read back with safe loading
before the command reports success.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoint import (UnsafeCheckpointError, checkpoint_file, load_checkpoint,  # noqa: E402
                        save_checkpoint, unwrap_state_dict)

_PLAIN = (str, int, float, bool, type(None))


def plain(value):
    """``value`` as plain Python (str / int / float / bool / None, lists and dicts of them);
    anything else becomes its ``str``, so that safe loading takes it."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def tensors_only(ckpt):
    """The tensors-only form of a loaded checkpoint (module docstring)."""
    out = {"model": unwrap_state_dict(ckpt)}
    if isinstance(ckpt, dict):
        if isinstance(ckpt.get("model_ema"), dict):
            out["model_ema"] = unwrap_state_dict(ckpt["model_ema"])
        args = ckpt.get("args")
        if args is not None:
            out["args"] = plain(vars(args) if hasattr(args, "__dict__") else args)
        if isinstance(ckpt.get("epoch"), int):
            out["epoch"] = ckpt["epoch"]
    return out


def resave(src, dst):
    """Load ``src`` (safely if possible, else with the full unpickler: trusted files only),
    write :func:`tensors_only` of it to ``dst`` and check that ``dst`` loads safely.
    Returns the number of weight tensors written.

    Raises:
        FileNotFoundError: no ``src``.
        ValueError: ``src`` is not a checkpoint even for the full unpickler, or holds no
            tensors.
    """
    try:
        ckpt = load_checkpoint(src)
        print(f"{src} already loads safely; writing its tensors-only form anyway")
    except UnsafeCheckpointError as e:  # anything else (not a checkpoint at all) propagates
        print(f"loading {src} with the full unpickler (weights_only=False) for "
              f"{', '.join(e.refused)}: the file may run code")
        try:
            ckpt = torch.load(checkpoint_file(src), map_location="cpu", weights_only=False)
        except Exception as err:  # whatever the file's own objects raise
            first = (str(err).strip().splitlines() or [""])[0]
            raise ValueError(f"{src!r} cannot be loaded even with the full unpickler: "
                             f"{type(err).__name__} {first}") from None
    out = tensors_only(ckpt)
    if not out["model"]:
        raise ValueError(f"{src!r} holds no weight tensors (no model / module / state_dict entry)")
    save_checkpoint(dst, out)
    load_checkpoint(dst)  # the point of it all: safe loading takes the result
    return len(out["model"])


def main(argv=None):
    p = argparse.ArgumentParser("re-save a trusted checkpoint as tensors only", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint to convert (it is unpickled: trusted files only)")
    p.add_argument("dst", help="tensors-only checkpoint to write")
    args = p.parse_args(argv)
    try:
        n = resave(args.src, args.dst)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {n} weight tensors to {args.dst}; it loads with weights_only=True")


if __name__ == "__main__":
    main()
