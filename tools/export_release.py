"""Write the files a user uploads for a trained model: a release directory.

    python tools/export_release.py output/finetune_base_k400/checkpoint-74.pth release/

``OUT_DIR`` gets

- ``model.safetensors``: the weights only (no optimizer, no pickled objects);
- ``config.json``: the model name, position table, frames, input size, classes, the recipe
  (``--recipe``), the compared settings as resolved (``recipes.resolved_settings``) and their
  differences from the recipe, the run's arguments, and the source file's SHA-256;
- ``README.md``: a model card: method, data, the test protocol and Top-1 / Top-5 from the
  run's ``test_summary.json`` (beside the checkpoint, or ``--summary``), the command that
  reproduces the run, the citation;
- ``transformers/``: for a ViT classifier with VideoMAE's 1-D table, the same model in
  Hugging Face ``transformers``' VideoMAE layout (``save_pretrained``; MVD's 3-D table has
  no counterpart there and is skipped with a note);
- ``SHA256SUMS``: ``sha256sum -c`` format, every file above.

Every entry point loads ``OUT_DIR`` as it loads a checkpoint (``checkpoint.load_checkpoint``
reads a release directory: the weights with the recorded arguments): ``--finetune``,
``--eval --finetune``, ``--resume``, ``--path_t`` and ``extract_features.py --checkpoint``.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import recipes  # noqa: E402
from checkpoint import RELEASE_FORMAT, load_checkpoint, saved_args, unwrap_state_dict  # noqa: E402
from eval_protocol import file_sha256  # noqa: E402
from model_factory import CLASSIFIER_MODELS, CNN_MODELS, create_classifier  # noqa: E402
from weights import checkpoint_position_table, load_pretrained  # noqa: E402

CITATIONS = {
    "MMKD": """@inproceedings{li2023mask,
  title={Mask Again: Masked Knowledge Distillation for Masked Video Modeling},
  author={Li, Xiaojie and He, Shaowei and Wu, Jianlong and Yu, Yue and Nie, Liqiang and Zhang, Min},
  booktitle={Proceedings of the 31st ACM International Conference on Multimedia},
  year={2023}
}""",
    "MVD": """@inproceedings{wang2023masked,
  title={Masked Video Distillation: Rethinking Masked Feature Modeling for Self-supervised Video Representation Learning},
  author={Wang, Rui and Chen, Dongdong and Wu, Zuxuan and Chen, Yinpeng and Dai, Xiyang and Liu, Mengchen and Yuan, Lu and Jiang, Yu-Gang},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}""",
    "VideoMAE": """@inproceedings{tong2022videomae,
  title={VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video Pre-Training},
  author={Tong, Zhan and Song, Yibing and Wang, Jue and Wang, Limin},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022}
}""",
    "TPN": """@inproceedings{yang2020temporal,
  title={Temporal Pyramid Network for Action Recognition},
  author={Yang, Ceyuan and Xu, Yinghao and Shi, Jianping and Dai, Bo and Zhou, Bolei},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2020}
}""",
}


def method_of(args, recipe):
    """``MMKD`` / ``MVD`` / ``VideoMAE`` / ``TPN``: the method behind a checkpoint, from its
    recipe name, else its arguments (the pre-training flags, the model family, the 3-D
    table of MVD)."""
    name = recipe or ""
    if name.startswith(("tpn", "tsm", "slowonly")) or args.get("model") in CNN_MODELS:
        return "TPN"
    if "mvd" in name or "image_teacher_model" in args or args.get("pos_embed") == "sincos_3d" \
            or any(k in args for k in ("use_cls_token", "merge_test")):
        return "MVD"
    if args.get("use_teacher") is False:  # run_mae_pretraining.py
        return "VideoMAE"
    if name.startswith(("kd", "finetune_")) or "distill" in args:
        return "MMKD"
    return "VideoMAE"


def script_of(args):
    """The training script that wrote a checkpoint with these arguments."""
    if "nb_classes" in args and "finetune" in args:
        return "run_class_finetuning.py"
    if "image_teacher_model" in args:
        return "run_mvd_pretraining.py"
    return "run_mae_pretraining.py" if args.get("use_teacher") is False else \
        "run_mmkd_pretraining.py"


def _parser(script):
    import importlib
    if script == "run_mae_pretraining.py":  # the MMKD parser without the teacher's flags
        return importlib.import_module("run_mmkd_pretraining").get_args_parser(teacher=False)
    return importlib.import_module(script[:-3]).get_args_parser()


def reproduce_command(args, script):
    """``python SCRIPT --flag value ...``: the flags of ``args`` (a saved-arguments dict)
    that differ from the script's defaults; derived values (not flags) are left out.
    Paths (data, output) are kept so the reader sees what was used."""
    parser = _parser(script)
    words = ["python", script]
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or dest not in args or dest in ("help", "local_rank"):
            continue
        value, default = args[dest], action.default
        if value == default or value is None or (isinstance(value, list)
                                                 and list(value) == default):
            continue  # None: a derived value the run filled in (a CNN's table ...)
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # store_true / store_false
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    import shlex
    return shlex.join(words)


def _jsonable(args):
    """The saved arguments as JSON values (anything else as its ``str``)."""
    return json.loads(json.dumps(args, default=str))


def _summary(checkpoint, summary_path):
    path = summary_path or os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                                        "test_summary.json")
    if not os.path.isfile(path):
        return None, path
    with open(path) as f:
        return json.load(f), path


def _num_classes(state):
    """Classes of a classifier's head in ``state`` (ViT ``head``, CNN ``cls_head``), or None."""
    head = state.get("head.weight", state.get("cls_head.fc_cls.weight"))
    return int(head.shape[0]) if head is not None else None


def _classifier(state, args, ckpt, checkpoint):
    """The classifier of the checkpoint, its weights loaded strictly (None when the file is
    not a fine-tuned classifier). Also the check that the weights fit their model."""
    name = args.get("model")
    if name not in CLASSIFIER_MODELS and name not in CNN_MODELS:
        return None
    if not any(k.startswith(("head.", "cls_head.")) for k in state):
        return None
    model = create_classifier(name, num_classes=_num_classes(state),
                              img_size=args.get("input_size", 224),
                              num_frames=args.get("num_frames", 16),
                              pos_embed=args.get("pos_embed") or "sincos_1d",
                              tsm_shift=args.get("tsm_shift"))
    load_pretrained(model, ckpt, checkpoint, strict=True)
    return model.eval()


def model_card(config, summary, summary_path, command):
    """The README.md text of a release."""
    s = config["settings"]
    lines = [f"# {config['model']} ({config['method']})", "",
             f"Weights exported from `{config['source_checkpoint']}` (SHA-256 "
             f"`{config['source_sha256']}`) by `tools/export_release.py`.", "",
             "## Model", "",
             f"- method: {config['method']}; model `{config['model']}`, "
             f"{config['nb_classes'] or 'no'} classes",
             f"- input: {config['num_frames']} frames of {config['input_size']} px; position "
             f"table: {config['pos_embed'] or 'none (CNN)'}",
             f"- recipe: `{config['recipe'] or 'none'}`"
             + (f" ({recipes.RECIPES[config['recipe']].source})" if config["recipe"] in
                recipes.RECIPES else ""),
             f"- effective batch {s['total_batch']} clips, lr {s['lr']} per 256, {s['epochs']} "
             f"epochs, warm-up {s['warmup_epochs']}",
             "", "## Data", "",
             f"- data set: {s['data_set'] or 'see the arguments in config.json'}; annotation "
             f"path `{config['args'].get('data_path', '?')}`"]
    if config["recipe_drift"]:
        lines.append("- differences from the published recipe: " + "; ".join(
            f"{d['setting']} {d['ours']} (published {d['published']})"
            for d in config["recipe_drift"]))
    lines += ["", "## Evaluation", ""]
    if summary:
        lines += [f"- protocol: {summary.get('protocol', '?')} (frames x clips x crops); "
                  f"{summary.get('sampling', '')}; {summary.get('merge', '')}",
                  f"- {summary.get('num_videos', '?')} videos scored of "
                  f"{summary.get('videos_listed', '?')} listed; list SHA-256 "
                  f"`{summary.get('annotation_sha256', '?')}`", "",
                  "| Top-1 | Top-5 |", "|---|---|",
                  f"| {summary['top1']:.2f} | {summary['top5']:.2f} |"]
    else:
        lines.append(f"No test result ({summary_path} not found).")
    lines += ["", "## Reproduce", "", "```bash", command, "```"]
    if config["recipe"]:
        script = config["recipe"].split("_k400_")[0] + "_k400" \
            if config["recipe"].startswith(("tpn", "slowonly")) else config["recipe"]
        script = script.replace("_e800", "")
        lines += ["", f"or the zoo script `scripts/{script}_slurm.sh`."]
    lines += ["", "## Files", "",
              "- `model.safetensors`: weights; `config.json`: settings and arguments; "
              "`SHA256SUMS`: `sha256sum -c SHA256SUMS`",
              "- load: `--finetune DIR`, `--eval --finetune DIR`, `--path_t DIR`, "
              "`extract_features.py --checkpoint DIR`"]
    if config["transformers"]:
        lines.append("- `transformers/`: `VideoMAEForVideoClassification.from_pretrained("
                     "'DIR/transformers')`")
    lines += ["", "## Citation", "", "```bibtex", CITATIONS[config["method"]], "```", ""]
    return "\n".join(lines)


def export_release(checkpoint, out_dir, summary_path=None):
    """Write the release directory ``out_dir`` of ``checkpoint`` (module docstring).

    Returns:
        the config dict written.
    Raises:
        FileNotFoundError, ValueError: an unreadable checkpoint (``load_checkpoint``'s
            one-line errors: refused globals, non-floating weights ...) or one whose weights
            do not fit the model its arguments name.
    """
    from safetensors.torch import save_file

    ckpt = load_checkpoint(checkpoint)
    args = saved_args(ckpt)
    state = {k: v.contiguous() for k, v in unwrap_state_dict(ckpt).items()}
    model = _classifier(state, args, ckpt, checkpoint)
    if model is not None:
        pos_embed = getattr(model, "pos_embed_type", None)
    else:  # a pre-training file: its stored or recorded table
        size, frames = args.get("input_size", 224), args.get("num_frames", 16)
        pos_embed = checkpoint_position_table(ckpt, (frames // 2, size // 16, size // 16))[0]
    summary, summary_file = _summary(checkpoint, summary_path)
    recipe = args.get("recipe")
    resolved = recipes.resolved_settings(argparse.Namespace(**{
        "batch_size": 0, "update_freq": 1, "lr": None, "epochs": None, **args}),
        world_size=args.get("world_size", 1))
    os.makedirs(out_dir, exist_ok=True)
    save_file(state, os.path.join(out_dir, "model.safetensors"))
    files = ["model.safetensors", "config.json", "README.md"]
    hf_dir = None
    if model is not None and pos_embed == "sincos_1d" and args.get("model") in CLASSIFIER_MODELS:
        from hf_interop import export_to_hf
        hf_dir = os.path.join(out_dir, "transformers")
        export_to_hf(model, hf_dir)
        files += [os.path.join("transformers", n) for n in sorted(os.listdir(hf_dir))]
    elif model is not None and pos_embed == "sincos_3d":
        print("note: no transformers export: transformers' VideoMAE has only the 1-D table, "
              "this model uses MVD's 3-D one")
    method = method_of(args, recipe)
    config = {"release_format": RELEASE_FORMAT, "model": args.get("model"), "method": method,
              "pos_embed": pos_embed, "num_frames": args.get("num_frames"),
              "input_size": args.get("input_size"),
              "nb_classes": _num_classes(state) or args.get("nb_classes"),
              "recipe": recipe, "settings": resolved,
              "recipe_drift": args.get("recipe_drift") or [],
              "source_checkpoint": os.path.basename(os.path.normpath(checkpoint)),
              "source_sha256": (file_sha256(checkpoint) if os.path.isfile(checkpoint)
                                else None),
              "transformers": hf_dir is not None,
              "args": _jsonable({**args, "pos_embed": pos_embed})}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    command = reproduce_command(args, script_of(args)) if args else "(the checkpoint " \
        "records no arguments)"
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(model_card(config, summary, summary_file, command))
    with open(os.path.join(out_dir, "SHA256SUMS"), "w") as f:
        for name in files:
            f.write(f"{file_sha256(os.path.join(out_dir, name))}  {name}\n")
    return config


def main(argv=None):
    p = argparse.ArgumentParser("release files of a checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint file or directory (any layout we load)")
    p.add_argument("out_dir", help="the release directory to write")
    p.add_argument("--summary", default=None, help="test_summary.json (default: the one "
                   "beside the checkpoint)")
    args = p.parse_args(argv)
    try:
        config = export_release(args.checkpoint, args.out_dir, args.summary)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"release of {args.checkpoint} written to {args.out_dir}: model {config['model']}, "
          f"{config['pos_embed']} table, recipe {config['recipe'] or 'none'}"
          f"{', transformers/ beside it' if config['transformers'] else ''}")


if __name__ == "__main__":
    main()
