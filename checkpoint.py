"""Checkpoint files: atomic saving (:func:`save_checkpoint`), safe loading
(:func:`load_checkpoint`, ``weights_only=True``: a checkpoint never runs code; the reference
scripts' pickled ``argparse.Namespace`` is the one object allowed besides tensors) with its
one-line messages, the wrappers around a state dict (:func:`unwrap_state_dict`,
:func:`saved_args`), release directories, and finding the checkpoints a run wrote (resume).

Files only: no model module is imported here. What the keys inside a file mean (layouts,
position tables, loading into a model) is ``weights.py``'s, ``pos_embed.py``'s and, for the
CNNs, ``modeling_tpn.py``'s.
"""
import argparse
import os
import re
import shutil

import torch


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, read-only or failing storage).
    The message is one line naming the file, the reason and the free space left."""

    @classmethod
    def from_exception(cls, path, e):
        """The error for ``e`` (an ``OSError``, or the ``RuntimeError`` torch's zip writer
        raises) met while writing ``path``; its errno is looked for along the exception chain."""
        chain = [e]
        while len(chain) < 10 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        reasons = [x.strerror for x in chain if isinstance(x, OSError) and x.strerror]
        reason = reasons[0] if reasons else (str(e).strip().splitlines() or [type(e).__name__])[0]
        return cls(f"cannot write checkpoint {path}: {reason} ({_free_space(path)} free on "
                   f"its file system); earlier checkpoints are untouched")


def _free_space(path):
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024


# Largest |weight| a checkpoint is written with. Trained ViT and CNN weights (BatchNorm
# statistics included) are O(1)-O(100); a run whose loss exploded on its last update holds
# weights of 1e20 and beyond while its loss still looks finite.
WEIGHT_BOUND = 1e6


class DivergedWeightsError(CheckpointWriteError):
    """The weights to be saved are non-finite or beyond :data:`WEIGHT_BOUND`; nothing was
    written. A CheckpointWriteError, so every script stops on it as on a failed write."""


def weights_problem(state, bound=WEIGHT_BOUND):
    """Why the floating tensors of ``state`` (a state dict) are not sane, or None: the first
    key holding a NaN / inf, else the key with the largest ``|w|`` when that exceeds
    ``bound``."""
    worst, worst_key = 0.0, None
    for key, value in state.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()) or not value.numel():
            continue
        if not torch.isfinite(value).all():
            return f"{key} holds NaN or inf"
        m = value.detach().abs().max().item()
        if m > worst:
            worst, worst_key = m, key
    return f"max |w| {worst:.3g} in {worst_key} (bound {bound:g})" if worst > bound else None


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: into a temporary file ``<path>.tmp.<pid>`` in
    the same directory, flushed to disk, then renamed over ``path``, so a crash never leaves a
    torn file and the previous checkpoint stays until the new one is complete. Temporary
    files of killed runs are removed when the next run claims the directory
    (``run_dir.claim_output_dir``). Weights (``state['model']``) that are non-finite or
    beyond :data:`WEIGHT_BOUND` are never written, so the newest checkpoint of a run always
    holds sane weights.

    Raises:
        DivergedWeightsError: (a CheckpointWriteError) insane weights; one line naming the
            tensor and the last checkpoint of the directory, whose weights were sane.
        CheckpointWriteError: the file could not be written (disk full, ...); the temporary
            file is removed first.
    """
    problem = weights_problem(state.get("model") or {}) if isinstance(state, dict) else None
    if problem:
        last = latest_checkpoint(os.path.dirname(os.path.abspath(path)))
        raise DivergedWeightsError(f"not writing checkpoint {path}: the weights diverged "
                                   f"({problem}); last checkpoint whose weights were sane: "
                                   f"{last or 'none written yet'}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise CheckpointWriteError.from_exception(path, e) from None


# Weight files looked for inside a directory, in order: Hugging Face (save_pretrained), then
# DeepSpeed (``engine.save_checkpoint``: a tag directory, or its parent with a ``latest`` file).
_DIR_FILES = ("model.safetensors", "pytorch_model.bin", "mp_rank_00_model_states.pt")


def checkpoint_file(path):
    """The weight file of ``path``: ``path`` itself, or the file inside a Hugging Face
    directory or a DeepSpeed checkpoint directory (following its ``latest`` tag).

    Raises:
        FileNotFoundError: nothing at ``path``, or a directory without a known weight file.
    """
    if path and os.path.isfile(path):
        return path
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):  # DeepSpeed: <dir>/latest names the tag directory
        with open(latest) as f:
            path = os.path.join(path, f.read().strip())
    for name in _DIR_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"checkpoint directory {path!r} holds none of {list(_DIR_FILES)} "
                            f"(sharded Hugging Face weights are not supported)")


# Globals a checkpoint may hold beyond torch's tensors-only defaults. VideoMAE's, MVD's and
# MMKD's ``save_model`` pickle the run's ``argparse.Namespace`` as ``args``: a plain attribute
# container whose unpickling calls no code. Allowed only inside our own loads (a context
# manager), never process-wide.
SAFE_GLOBALS = (argparse.Namespace,)
RESAVE_TOOL = "tools/resave_checkpoint.py"
# What a weight file may be, for messages about files that are none of it.
EXPECTED_FILES = ("a torch.save checkpoint (zip archive or legacy pickle), a .safetensors file, "
                  "or a Hugging Face / DeepSpeed directory")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds globals safe loading refuses (``refused``: their names)."""

    def __init__(self, message, refused):
        super().__init__(message)
        self.refused = refused


def load_checkpoint(path):
    """Load a checkpoint file or directory (see :func:`checkpoint_file`) on the CPU:
    ``.safetensors`` with safetensors, anything else with ``torch.load(weights_only=True)``
    with :data:`SAFE_GLOBALS` (``argparse.Namespace``) allowed, so the files the VideoMAE,
    MVD and MMKD training scripts write load as they are, and nothing in a file runs code.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: (a ValueError) one line naming the file and the globals safe
            loading refuses, with the command that re-saves a trusted file as tensors only
            (:data:`RESAVE_TOOL`).
        ValueError: one line naming the file when it is not a checkpoint at all (text,
            empty, truncated) or cannot be read.
    """
    if str(path).lower().endswith((".h5", ".hdf5")):  # the TF/Keras port's weights, via h5py
        from keras_interop import load_keras_weights
        return _checked_dtypes(load_keras_weights(path), path)  # already canonical
    release = read_release_config(path)
    path = checkpoint_file(path)
    if release is not None:  # weights + the run's recorded settings, as a checkpoint has them
        return _checked_dtypes({"model": _load_safetensors(path),
                                "args": release.get("args") or {}}, path)
    if path.endswith(".safetensors"):
        return _checked_dtypes(_load_safetensors(path), path)
    return _checked_dtypes(_load_torch(path), path)


# A release directory (tools/export_release.py): model.safetensors (weights only) and a
# config.json carrying this marker, the model's settings and the run's arguments.
RELEASE_FORMAT = "video-distillation-release/1"


def read_release_config(path):
    """The ``config.json`` of a release directory (:data:`RELEASE_FORMAT`), or None for
    anything else (a file, a Hugging Face or DeepSpeed directory)."""
    config = os.path.join(str(path), "config.json")
    if not os.path.isdir(str(path)) or not os.path.isfile(config):
        return None
    import json
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {config}: {e}") from None
    return data if isinstance(data, dict) and data.get("release_format") == RELEASE_FORMAT else None


# Non-floating tensors a model legitimately holds: BatchNorm's update counter.
_INTEGER_BUFFERS = ("num_batches_tracked",)


def _checked_dtypes(ckpt, path):
    """``ckpt`` with its weights checked: integer / bool weights (a file of indices or masks,
    or a broken conversion: it would load as a model of zeros) are refused; float64 weights
    are cast to float32 in place, with a note. Returns ``ckpt``.

    Raises:
        ValueError: one line naming the file and the non-floating keys with their dtypes.
    """
    weights = ckpt
    for key in ("model", "module", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            weights = ckpt[key]
            break
    if not isinstance(weights, dict):
        return ckpt
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    bad = [k for k, v in tensors.items()
           if not v.is_floating_point() and not k.endswith(_INTEGER_BUFFERS)]
    if bad:
        shown = ", ".join(f"{k} ({str(tensors[k].dtype).replace('torch.', '')})" for k in bad[:6])
        raise ValueError(f"checkpoint {path!r} holds {len(bad)} non-floating weight tensors "
                         f"({shown}{' ...' if len(bad) > 6 else ''}); model weights are "
                         f"float32, float16 or bfloat16: it is not a model's weights, or was "
                         f"converted wrongly")
    doubles = [k for k, v in tensors.items() if v.dtype == torch.float64]
    for k in doubles:
        weights[k] = tensors[k].float()
    if doubles:
        print(f"note: {path}: {len(doubles)} float64 weight tensors (e.g. {doubles[0]}) cast "
              f"to float32")
    return ckpt


def _load_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable .safetensors file ({_one_line(e)}); "
                         f"expected {EXPECTED_FILES}") from None


def _load_torch(path):
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path!r}: {e.strerror or e}") from None
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # whatever the safe unpickler meets in a bad file: one line
        refused = _refused_globals(path, e)
        if refused:
            raise UnsafeCheckpointError(
                f"checkpoint {path!r} holds Python objects that safe loading (torch.load "
                f"weights_only=True) refuses because unpickling them could run code: "
                f"{', '.join(refused)}. If you trust the file, re-save its weights as tensors "
                f"only: python {RESAVE_TOOL} {path} {_resaved_name(path)}", refused) from None
        raise ValueError(f"{path!r} is not a checkpoint: it is {_describe_file(head, e)}; "
                         f"expected {EXPECTED_FILES}") from None


# torch's advice around the actual reason of a refusal, which our messages replace
_TORCH_BOILERPLATE = ("Weights only load failed", "In PyTorch 2.6", "(1)", "(2)", "Please file",
                      "Check the documentation", "Re-running")


def _one_line(e):
    """The reason in an exception's text, in one short line: torch's boilerplate and
    terminal colour codes removed, the first sentence of what remains."""
    text = _ANSI.sub("", str(e)).split("WeightsUnpickler error:")[-1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(_TORCH_BOILERPLATE)]
    if not lines:
        return type(e).__name__
    first = lines[0].split(". ")[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "..."


def _refused_globals(path, e):
    """The globals ``torch.load(weights_only=True)`` refused in ``path`` (all of them for a
    zip checkpoint, read without unpickling; the first one otherwise), or [] when ``e`` is
    not such a refusal."""
    m = re.search(r"GLOBAL (\S+)", _ANSI.sub("", str(e)))  # "[Un]supported ... GLOBAL x.y ..."
    if not m:
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: only the name in torch's message
        found = []
    return [g for g in found if g not in allowed] or [m.group(1)]


def _resaved_name(path):
    root, ext = os.path.splitext(path)
    return f"{root}_tensors{ext or '.pth'}"


def _describe_file(head, e):
    """What a file that ``torch.load`` could not read looks like (``head``: its first
    bytes), for the message."""
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return f"a damaged zip archive, truncated or not written by torch.save ({_one_line(e)})"
    if head.startswith(b"\x80"):
        return f"a pickle that safe loading cannot read ({_one_line(e)})"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as u:  # text whose 64th byte cuts a character is still text
        if u.start < len(head) - 3:
            return f"binary data starting with {head[:16]!r}"
        text = head[:u.start].decode("utf-8")
    text = text.lstrip("\ufeff")  # a byte-order mark
    if all(c.isprintable() or c.isspace() for c in text):
        return f"a text file starting with {text.strip()[:40]!r}"
    return f"binary data starting with {head[:16]!r}"


def unwrap_state_dict(ckpt):
    """The parameter dict inside a checkpoint: its ``model``, ``module`` (DeepSpeed) or
    ``state_dict`` entry, or the checkpoint itself; DDP's ``module.`` prefixes removed.
    Idempotent: a plain state dict comes back unchanged."""
    for key in ("model", "module", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()
            if isinstance(v, torch.Tensor)}


def saved_args(ckpt):
    """The run arguments a checkpoint saved, as a dict: ours (``vars(args)``) or the
    reference scripts' ``argparse.Namespace``; ``{}`` when it has none."""
    saved = ckpt.get("args") if isinstance(ckpt, dict) else None
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    return saved if isinstance(saved, dict) else {}


def checkpoint_candidates(directory):
    """The checkpoints a run wrote in ``directory``, newest first: ours
    (``checkpoint-<epoch>.pth``, and the rolling ``checkpoint-latest.pth`` before every one
    written before it) and DeepSpeed tag directories (``checkpoint-<epoch>/``) up to the one its
    ``latest`` file names (a newer tag directory is an unfinished save; without ``latest`` no
    DeepSpeed save finished; ``latest`` naming the rolling ``checkpoint-latest/``: every
    numbered one). Empty when there are none."""
    if not directory or not os.path.isdir(directory):
        return []
    latest_tag = None
    if os.path.isfile(os.path.join(directory, "latest")):
        with open(os.path.join(directory, "latest")) as f:
            latest_tag = f.read().strip()
    latest_epoch = re.fullmatch(r"checkpoint-(\d+)", latest_tag or "")
    found = []
    for name in os.listdir(directory):
        m = re.fullmatch(r"checkpoint-(\d+)(\.pth)?", name)
        path = os.path.join(directory, name)
        if not m or name == latest_tag:
            continue
        if m[2] and os.path.isfile(path):
            found.append((int(m[1]), path))
        elif (not m[2] and latest_tag and os.path.isdir(path)
              and (latest_epoch is None or int(m[1]) < int(latest_epoch[1]))):
            found.append((int(m[1]), path))
    newest = [os.path.join(directory, latest_tag)] if latest_tag else []
    numbered = [p for _, p in sorted(found, reverse=True)]
    rolling = os.path.join(directory, "checkpoint-latest.pth")
    if os.path.isfile(rolling):  # a kept file written after it: killed before the link
        t = os.path.getmtime(rolling)
        at = next((i for i, p in enumerate(numbered) if os.path.getmtime(p) < t), len(numbered))
        numbered.insert(at, rolling)
    return newest + numbered


def latest_checkpoint(output_dir):
    """The newest checkpoint in ``output_dir`` (:func:`checkpoint_candidates`), or None."""
    found = checkpoint_candidates(output_dir)
    return found[0] if found else None


def first_loadable(paths, load=load_checkpoint, warn=print):
    """``(path, load(path))`` for the first of ``paths`` (newest first) that loads. Each one
    that does not (corrupt, truncated, refused by safe loading) is skipped with a warning
    naming it, so a run killed while writing its newest checkpoint resumes from the one
    before.

    Raises:
        ValueError / FileNotFoundError: the only path does not load (its own error), or none
            of several does (naming the newest; the warnings name the others).
    """
    errors = []
    for path in paths:
        try:
            return path, load(path)
        except (ValueError, FileNotFoundError) as e:
            if len(paths) == 1:
                raise
            errors.append(e)
            warn(f"warning: skipping checkpoint {path}, which does not load: {e}")
    raise ValueError(f"none of the {len(paths)} checkpoints in "
                     f"{os.path.dirname(os.path.normpath(paths[0]))} loads (newest "
                     f"{paths[0]}: {errors[0]})")


def load_resume_checkpoint(resume, output_dir, auto_resume=True):
    """The checkpoint a run resumes from, loaded safely: ``resume`` (``--resume``: a file, a
    DeepSpeed tag directory, or a run's output directory, meaning its newest checkpoint that
    loads), else with ``auto_resume`` the newest checkpoint of ``output_dir`` that loads.

    Returns:
        ``(path, checkpoint)``, or ``(None, None)`` when there is nothing to resume from.
    Raises:
        FileNotFoundError / ValueError: one line naming the file or directory.
    """
    if resume:
        if os.path.isdir(resume) and not os.listdir(resume):
            raise FileNotFoundError(f"--resume {resume} is an empty directory; expected a "
                                    f"checkpoint file or a directory a run saved checkpoints in")
        candidates = checkpoint_candidates(resume)
        return first_loadable(candidates) if candidates else (resume, load_checkpoint(resume))
    if auto_resume and output_dir:
        candidates = checkpoint_candidates(output_dir)
        if candidates:
            return first_loadable(candidates)
    return None, None
