"""Per-video features of a pre-trained or fine-tuned video ViT, for linear probes, retrieval
or any downstream model.

    python extract_features.py --checkpoint mmkd_small_k400.pth --model vit_small_patch16_224 \
        --anno lists/ucf101/test.csv --data_root /videos --output_dir feats/      # one .npy per video
    python extract_features.py --checkpoint hf_videomae_dir/ --videos a.mp4 b.mp4 \
        --tokens --output feats.pt                                                  # one .pt file

Checkpoints: anything ``checkpoint.py`` reads (ours, VideoMAE / MVD / MMKD pre-training or
fine-tuned, DeepSpeed directories) or a Hugging Face ``save_pretrained`` directory (its
config gives the architecture; ``--model`` is then not needed).

Features, from the centre clip (``--num_segments`` > 1: the mean over that many evenly spaced
clips), centre crop of the short-side-resized frames:

- ``tokens [N, D]``: the encoder's token outputs, after its final norm if the checkpoint has
  one (pre-training encoders), as the last block left them otherwise (mean-pooling
  classifiers);
- pooled ``[D]`` (default): their mean, then ``fc_norm`` for a fine-tuned classifier (its
  pre-logits, what its head sees).
"""
import argparse
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

from checkpoint import load_checkpoint, read_release_config
from datasets.sampling import dense_test_indices
from datasets.transforms import EvalTransform
from datasets.video_io import VideoDecodeError, load_frames, read_annotation
from flag_checks import check_flags
from model_factory import ARCHS, CLASSIFIER_MODELS, PRETRAIN_MODELS, create_classifier
from modeling_encoder import VideoViTEncoder
from modeling_finetune import VideoViTClassifier
from modeling_student import PretrainVisionTransformer
from pos_embed import add_pos_embed_arg
from weights import canonical_state_dict, load_pretrained


class FeatureEncoder(nn.Module):
    """An encoder and, for a fine-tuned classifier, its ``fc_norm``.

    ``forward(x [B, 3, T, H, W]) -> (tokens [B, N, D], pooled [B, D])`` (module docstring).
    """

    def __init__(self, model):
        super().__init__()
        if isinstance(model, PretrainVisionTransformer):
            model = model.encoder
        self.encoder = model
        self.fc_norm = model.fc_norm if isinstance(model, VideoViTClassifier) else None

    @torch.no_grad()
    def forward(self, x):
        tokens = self.encoder.norm(self.encoder.forward_features(x).tokens)  # [B, N, D]
        pooled = tokens.mean(dim=1)  # [B, D]
        return tokens, pooled if self.fc_norm is None else self.fc_norm(pooled)


def _size(name):
    """The ``ARCHS`` size of a factory name (``vit_small_patch16_224`` or
    ``pretrain_videomae_small_patch16_224``). Raises ValueError for another name."""
    table = {**CLASSIFIER_MODELS, **PRETRAIN_MODELS}
    if name not in table:
        raise ValueError(f"--model {name!r} is not a known model; choose from {sorted(table)}")
    return table[name]


def build_feature_encoder(checkpoint, model_name=None, img_size=224, num_frames=16,
                          pos_embed="sincos_1d"):
    """A :class:`FeatureEncoder` (eval mode) with the weights of ``checkpoint``.

    Args:
        checkpoint: file or directory; a Hugging Face directory (with ``config.json``) brings
            its own architecture and geometry, a release directory
            (``tools/export_release.py``) its model name and position table.
        model_name: size of the encoder in any other case (``--model``).
        img_size, num_frames: clip geometry for our checkpoints (any size: the position
            table is a fixed one, rebuilt for it).
        pos_embed: the fixed position table (``--pos_embed``) when the checkpoint records none
            (``weights.adopt_position_table``).
    Raises:
        ValueError: no ``--model`` for a non-Hugging Face checkpoint; weights that do not fit.
        FileNotFoundError: no checkpoint.
    """
    release = read_release_config(checkpoint)  # ours: weights + recorded settings
    if release is None and os.path.isfile(os.path.join(str(checkpoint), "config.json")):
        from hf_interop import from_hf
        return FeatureEncoder(from_hf(checkpoint)[0]).eval()
    model_name = model_name or (release or {}).get("model")
    if not model_name:
        raise ValueError("--model is needed for a checkpoint that is not a Hugging Face directory")
    size = _size(model_name)
    ckpt = load_checkpoint(checkpoint)
    kind, state = canonical_state_dict(ckpt)
    geometry = dict(img_size=img_size, num_frames=num_frames, pos_embed=pos_embed)
    if kind == "finetune" or "fc_norm.weight" in state:
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
        model = create_classifier(f"vit_{size}_patch16_224", num_classes=num_classes, **geometry)
    else:
        arch = {k: v for k, v in ARCHS[size].items() if not k.startswith("decoder")}
        model = VideoViTEncoder(final_norm="norm.weight" in state, **arch, **geometry)
    load_pretrained(model, ckpt, checkpoint)
    return FeatureEncoder(model).eval()


def load_clips(path, num_frames, sampling_rate, input_size, num_segments=1):
    """The ``num_segments`` evenly spaced test clips of one video, centre crop:
    ``[num_segments, 3, T, S, S]`` float32.

    Raises:
        VideoDecodeError: a broken video, including one whose stream breaks after the clip
            (its last frame is decoded too, as the training data sets do on first read).
    """
    transform = EvalTransform(input_size, input_size, num_crop=1)
    clips = []
    for seg in range(num_segments):
        frames = load_frames(path, lambda n, fps, s=seg: dense_test_indices(
            n, num_frames, sampling_rate, num_segments, s), check_last=seg == 0)
        clips.append(transform(frames))  # [3, T, S, S]
    return torch.stack(clips)


class _Videos(torch.utils.data.Dataset):
    """Decoded clips per video, ``(index, clips | None)``; None (with a warning) for a video
    that cannot be decoded."""

    def __init__(self, paths, **clip_kwargs):
        self.paths, self.clip_kwargs = paths, clip_kwargs

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, load_clips(self.paths[i], **self.clip_kwargs)
        except VideoDecodeError as e:
            warnings.warn(f"skipping video: {e}", RuntimeWarning)
            return i, None


def extract(encoder, paths, *, num_frames, sampling_rate, input_size, num_segments=1,
            tokens=False, batch_size=4, num_workers=0, device="cpu"):
    """Features of every video in ``paths``.

    Returns:
        ``(features, skipped)``: ``{index: [D] or [N, D] float32 tensor}`` for the decoded
        videos (mean over their segments) and the sorted indices of the skipped ones.
    """
    data = _Videos(paths, num_frames=num_frames, sampling_rate=sampling_rate,
                   input_size=input_size, num_segments=num_segments)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=lambda items: items)
    encoder.to(device)
    features, skipped = {}, []
    for items in loader:
        good = [(i, c) for i, c in items if c is not None]
        skipped += [i for i, c in items if c is None]
        if not good:
            continue
        x = torch.cat([c for _, c in good]).to(device)  # [sum(segments), 3, T, S, S]
        tok, pooled = encoder(x)
        out = (tok if tokens else pooled).float().cpu()
        out = out.view(len(good), num_segments, *out.shape[1:]).mean(dim=1)  # [V, (N,) D]
        features.update({i: f for (i, _), f in zip(good, out)})
    return features, sorted(skipped)


def npy_names(paths, data_root=""):
    """Output names ``<path relative to data_root, extension replaced>.npy`` (the base name
    for paths outside it). Raises ValueError when two videos would share a name."""
    names = {}
    for p in paths:
        rel = os.path.relpath(p, data_root) if data_root else os.path.basename(p)
        if rel.startswith(".."):
            rel = os.path.basename(p)
        name = os.path.splitext(rel)[0] + ".npy"
        if name in names.values():
            raise ValueError(f"two videos map to the feature file {name}; use --output x.pt")
        names[p] = name
    return names


def get_args_parser():
    p = argparse.ArgumentParser("Video feature extraction", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--checkpoint", required=True, help="checkpoint file or directory (ours, VideoMAE/MVD/MMKD, "
      "DeepSpeed, Hugging Face)")
    a("--model", default=None, choices=sorted(CLASSIFIER_MODELS) + sorted(PRETRAIN_MODELS),
      help="encoder size (not needed for a Hugging Face directory)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--anno", help="annotation file, 'path label' per line")
    src.add_argument("--videos", nargs="+", help="video files")
    a("--data_root", default="", help="prefix of relative paths in --anno")
    a("--num_frames", type=int, default=16)
    a("--sampling_rate", type=int, default=4)
    a("--input_size", type=int, default=224)
    add_pos_embed_arg(p)
    a("--num_segments", type=int, default=1, help="test clips per video, features averaged")
    a("--tokens", action="store_true", help="per-token features [N, D] instead of pooled [D]")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output_dir", help="one .npy per video")
    out.add_argument("--output", help="one .pt file with every video's features")
    a("--batch_size", type=int, default=4, help="videos per forward pass")
    a("--num_workers", type=int, default=2)
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        check_flags(args)
        if args.anno:
            samples = read_annotation(args.anno, args.data_root)
            paths, labels = [p for p, _ in samples], [lab for _, lab in samples]
        else:
            paths, labels = args.videos, None
        encoder = build_feature_encoder(args.checkpoint, args.model, args.input_size,
                                        args.num_frames, args.pos_embed)
        names = npy_names(paths, args.data_root) if args.output_dir else None
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    pe = encoder.encoder.patch_embed  # a Hugging Face config brings its own clip geometry
    features, skipped = extract(encoder, paths, num_frames=pe.num_frames,
                                sampling_rate=args.sampling_rate, input_size=pe.img_size,
                                num_segments=args.num_segments, tokens=args.tokens,
                                batch_size=args.batch_size, num_workers=args.num_workers,
                                device=args.device)
    if args.output_dir:
        for i, feat in features.items():
            target = os.path.join(args.output_dir, names[paths[i]])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            np.save(target, feat.numpy())
    else:
        kept = sorted(features)
        torch.save({"paths": [paths[i] for i in kept],
                    "labels": [labels[i] for i in kept] if labels else None,
                    "features": torch.stack([features[i] for i in kept]) if kept else None,
                    "skipped": [paths[i] for i in skipped], "checkpoint": args.checkpoint,
                    "tokens": args.tokens}, args.output)
    shape = tuple(next(iter(features.values())).shape) if features else None
    print(f"features {shape} of {len(features)} videos written to "
          f"{args.output_dir or args.output}; skipped {len(skipped)} that could not be decoded"
          + (f": {[paths[i] for i in skipped]}" if skipped else ""))


if __name__ == "__main__":
    main()
