"""Convert checkpoints between ours (VideoMAE / MVD / MMKD layouts) and Hugging Face
``transformers`` VideoMAE, import the TF/Keras port's ``.h5`` weights, or report what a
checkpoint is.

    # ours -> transformers (a fine-tuned classifier -> VideoMAEForVideoClassification;
    # a pre-training checkpoint with decoder -> VideoMAEForPreTraining; else VideoMAEModel)
    python tools/convert_checkpoint.py to-hf --checkpoint out/checkpoint-99.pth \
        --model vit_small_patch16_224 --nb_classes 400 --output_dir hf_vit_small_k400/
    # transformers directory -> ours ({'model': state_dict} for --finetune / --path_t)
    python tools/convert_checkpoint.py from-hf --hf_dir hf_vit_small_k400/ --output ours.pth
    # TF/Keras port (innat/VideoMAE) legacy .h5 weights -> ours, same wrapper
    python tools/convert_checkpoint.py from-keras --h5 TFVideoMAE_S_16x224_FT.h5 --output ours.pth
    # which layout a file or directory has
    python tools/convert_checkpoint.py inspect some_checkpoint.pth

Checkpoints may be any layout ``weights.load_pretrained`` reads (``model`` / ``module`` /
DeepSpeed wrappers, ``encoder.`` prefixes, Hugging Face names, the Keras port's ``.h5`` files).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoint import load_checkpoint, save_checkpoint, unwrap_state_dict  # noqa: E402
from flag_checks import check_flags  # noqa: E402
from hf_interop import check_position_table, export_to_hf, from_hf  # noqa: E402
from keras_interop import load_keras_weights  # noqa: E402
from model_factory import CLASSIFIER_MODELS, PRETRAIN_MODELS, create_classifier, create_student  # noqa: E402
from pos_embed import add_pos_embed_arg  # noqa: E402
from weights import (adopt_position_table, canonical_state_dict, checkpoint_kind, load_weights,  # noqa: E402
                     vit_checkpoint_filter)


def get_args_parser():
    p = argparse.ArgumentParser("checkpoint conversion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    to = sub.add_parser("to-hf", help="ours -> transformers directory (save_pretrained)")
    to.add_argument("--checkpoint", required=True)
    to.add_argument("--model", required=True, choices=sorted(CLASSIFIER_MODELS) + sorted(PRETRAIN_MODELS),
                    help="vit_* = classifier; pretrain_videomae_* = pre-training model")
    to.add_argument("--nb_classes", type=int, default=400, help="classifier classes")
    to.add_argument("--decoder_depth", type=int, default=4,
                    help="pre-training model's pixel decoder blocks (0 = encoder only)")
    to.add_argument("--num_frames", type=int, default=16)
    to.add_argument("--input_size", type=int, default=224)
    add_pos_embed_arg(to, help="the checkpoint's position table when it records none; "
                      "transformers takes only sincos_1d (a sincos_3d model is refused)")
    to.add_argument("--labels", default="", help="text file, one class name per line")
    to.add_argument("--output_dir", required=True)
    frm = sub.add_parser("from-hf", help="transformers directory -> ours")
    frm.add_argument("--hf_dir", required=True)
    frm.add_argument("--output", required=True)
    krs = sub.add_parser("from-keras", help="TF/Keras port .h5 weights -> ours (no TensorFlow)")
    krs.add_argument("--h5", required=True, help="legacy Keras save_weights file of innat/VideoMAE")
    krs.add_argument("--output", required=True)
    ins = sub.add_parser("inspect", help="print a checkpoint's layout")
    ins.add_argument("checkpoint")
    return p


def build_ours(args):
    """Our model of ``--model`` with the checkpoint's weights, every key accounted for (a
    distillation projector excepted, which transformers has no place for)."""
    geometry = dict(img_size=args.input_size, num_frames=args.num_frames,
                    pos_embed=args.pos_embed)
    if args.model in CLASSIFIER_MODELS:
        model = create_classifier(args.model, num_classes=args.nb_classes, **geometry)
    else:
        model = create_student(args.model, decoder_depth=args.decoder_depth, **geometry)
    ckpt = load_checkpoint(args.checkpoint)
    adopt_position_table(model, ckpt, args.checkpoint)
    check_position_table(model)  # before the keys: an MVD file fails for its table first
    state = vit_checkpoint_filter(ckpt, model)
    state = {k: v for k, v in state.items() if not k.startswith("projector.")}
    load_weights(model, state, args.checkpoint)
    return model.eval()


def main(argv=None):
    run(get_args_parser().parse_args(argv))


def run(args):
    """The conversion ``args.command`` asks for (:func:`get_args_parser`)."""
    if args.command == "inspect":
        ckpt = load_checkpoint(args.checkpoint)
        print(json.dumps({"kind": checkpoint_kind(ckpt), "tensors": len(unwrap_state_dict(ckpt))}))
    elif args.command == "to-hf":
        id2label = None
        if args.labels:
            with open(args.labels, encoding="utf-8-sig") as f:
                id2label = dict(enumerate(line.strip() for line in f if line.strip()))
        hf = export_to_hf(build_ours(args), args.output_dir, id2label)
        print(f"wrote {type(hf).__name__} to {args.output_dir}")
    elif args.command == "from-keras":
        state = load_keras_weights(args.h5)
        save_checkpoint(args.output, {"model": state})
        kind, canonical = canonical_state_dict(state)
        blocks = {k.split(".")[1] for k in canonical if k.startswith("blocks.")}
        print(f"wrote {kind} weights ({len(state)} tensors, {len(blocks)} encoder blocks) to "
              f"{args.output}")
    else:
        model, config = from_hf(args.hf_dir)
        save_checkpoint(args.output, {"model": model.state_dict(),
                                      "hf_config": config.to_json_string()})
        print(f"wrote {type(model).__name__} ({config.hidden_size} wide, "
              f"{config.num_hidden_layers} blocks) to {args.output}")


def cli(argv=None):
    """:func:`main` with its errors (a missing, unreadable, refused or unfitting checkpoint, a
    file that cannot be written) as one ``error:`` message naming the input and exit status
    1, no traceback."""
    args = get_args_parser().parse_args(argv)
    source = getattr(args, "checkpoint", None) or getattr(args, "hf_dir", "")
    try:
        check_flags(args)
        run(args)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}" if source in str(e) or str(e).startswith("--")
                 else f"error: {source}: {e}")


if __name__ == "__main__":
    cli()
