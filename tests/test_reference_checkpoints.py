"""Checkpoints as the VideoMAE / MVD / MMKD training scripts write them load safely through
every entry point (``--path_t``, ``--finetune``, ``--eval``, ``--resume`` of both scripts, the
converter, ``extract_features.py``); a file whose ``args`` would run code on unpickling, and
files that are not checkpoints at all, fail there with one line naming the file."""
import argparse
import os
import pickle

import pytest
import torch

import extract_features
import run_class_finetuning as rcf
import run_mmkd_pretraining as rmp
import run_state
from checkpoint import UnsafeCheckpointError, load_checkpoint
from conftest import VIDEOS
from optim_factory import build_optimizer
from test_finetuning import _anno_dir
from tools import convert_checkpoint, resave_checkpoint

# loading does not depend on depth; every entry point builds its models before it reads a file
pytestmark = pytest.mark.usefixtures("two_block_tiny")
CLIPS = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv"]
TINY_FT = ["--model", "vit_tiny_patch16_224", "--data_set", "UCF101", "--nb_classes", "3",
           "--data_root", VIDEOS, "--input_size", "32", "--short_side_size", "32",
           "--num_frames", "4", "--sampling_rate", "2", "--test_num_segment", "1",
           "--test_num_crop", "1", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
           "--no-auto_resume", "--mixup", "0", "--cutmix", "0", "--num_sample", "1"]
TINY_PT = ["--model", "pretrain_videomae_tiny_patch16_224", "--model_t",
           "pretrain_videomae_tiny_patch16_224", "--input_size", "32", "--num_frames", "4",
           "--sampling_rate", "2", "--batch_size", "2", "--device", "cpu", "--num_workers", "0",
           "--mask_ratio", "0.5", "--num_k", "1", "--num_f", "2", "--no-auto_resume",
           "--data_root", VIDEOS]


class RunsCode:
    """Unpickling this runs code (``builtins.exec``): it writes ``path``, the marker file that
    appears exactly when a checkpoint's code ran (and must never appear)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('ran')",)


def save_model(path, model, optimizer, epoch, args):
    """What VideoMAE's, MVD's and MMKD's ``utils.save_model`` write without DeepSpeed: one
    ``torch.save`` of ``model`` / ``optimizer`` / ``epoch`` / ``scaler`` (the loss scaler's
    ``GradScaler.state_dict()``) / ``args`` (the run's ``argparse.Namespace``)."""
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "scaler": torch.amp.GradScaler("cpu").state_dict(), "args": args}, path)


def reference_optimizer(model, args, layer_decay=None):
    """AdamW as VideoMAE's / MVD's ``create_optimizer`` with ``get_parameter_groups`` builds it
    (written here from their behaviour, not with this project's ``build_optimizer``): one group
    per (layer id, decay or not) in the order ``named_parameters`` first meets it; no decay for
    1-D tensors, ``.bias`` and ``model.no_weight_decay()``; with ``layer_decay`` the layer id is
    0 for ``cls_token`` / ``mask_token`` / ``pos_embed`` / ``patch_embed.*``, ``i + 1`` for
    ``blocks.i.*``, ``L + 1`` for the rest, and ``lr_scale = layer_decay ** (L + 1 - id)``."""
    skip = model.no_weight_decay()
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name.endswith(".bias") or name in skip)
        key, scale = ("decay" if decay else "no_decay"), 1.0
        if layer_decay is not None:
            depth = len(model.blocks)
            if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
                layer = 0
            elif name.startswith("blocks."):
                layer = int(name.split(".")[1]) + 1
            else:
                layer = depth + 1
            key, scale = f"layer_{layer}_{key}", layer_decay ** (depth + 1 - layer)
        groups.setdefault(key, {"weight_decay": args.weight_decay if decay else 0.0,
                                "params": [], "lr_scale": scale})["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=args.lr, weight_decay=0.0,
                             betas=tuple(args.opt_betas or (0.9, 0.999)), eps=args.opt_eps)


def _stepped(model, optimizer):
    """One optimizer step, so that its state holds tensors as a real run's does."""
    sum(p.float().pow(2).sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


@pytest.fixture(scope="module")
def files(tmp_path_factory, two_block_tiny):
    """Reference-layout pre-training and fine-tuned files (optimizers as the reference scripts
    build them), the same with code in ``args``, and non-files."""
    d = tmp_path_factory.mktemp("reference")
    _anno_dir(d / "data", CLIPS, range(len(CLIPS)))
    marker = str(d / "MARKER")
    torch.manual_seed(0)
    ft_args = rcf.get_args_parser().parse_args(["--data_path", str(d / "data"), *TINY_FT])
    clf = rcf.build_model(ft_args)
    rcf.resolve_args(ft_args, clf)
    ft_opt = _stepped(clf, reference_optimizer(clf, ft_args, layer_decay=ft_args.layer_decay))
    pt_args = rmp.get_args_parser().parse_args(["--data_path", str(d / "data" / "train.csv"),
                                                *TINY_PT])
    pt_args.use_teacher = True
    student, teacher = rmp.build_models(pt_args)
    rmp.resolve_args(pt_args, student, teacher)
    pt_opt = _stepped(student, reference_optimizer(student, pt_args))
    names = ("finetune", "pretrain", "evil_finetune", "evil_pretrain", "text", "empty",
             "truncated")
    paths = {name: str(d / f"{name}.pth") for name in names}
    save_model(paths["finetune"], clf, ft_opt, 0, argparse.Namespace(**vars(ft_args)))
    save_model(paths["pretrain"], student, pt_opt, 0, argparse.Namespace(**vars(pt_args)))
    save_model(paths["evil_finetune"], clf, ft_opt, 0,
               argparse.Namespace(**vars(ft_args), hook=RunsCode(marker)))
    save_model(paths["evil_pretrain"], student, pt_opt, 0,
               argparse.Namespace(**vars(pt_args), hook=RunsCode(marker)))
    with open(paths["text"], "w") as f:  # what a mixed-up command line hands over
        f.write("arm_wrestling_demo.mp4 0\nflipping_a_pancake.mkv 1\n")
    open(paths["empty"], "wb").close()
    with open(paths["finetune"], "rb") as f, open(paths["truncated"], "wb") as g:
        g.write(f.read()[:5000])
    return dict(paths=paths, dir=d, marker=marker, clf=clf, student=student,
                ft_opt=ft_opt, pt_opt=pt_opt)


def _same_optimizer_state(model, optimizer, reference_model, reference_optimizer):
    """Each parameter's AdamW state and lr scale in ``optimizer`` are those the reference
    optimizer held for the parameter of the same name (not merely of the same shape)."""
    def by_name(m, opt):
        names = {id(p): n for n, p in m.named_parameters()}
        out = {}
        for g in opt.param_groups:
            for p in g["params"]:
                st = opt.state[p]
                out[names[id(p)]] = (g.get("lr_scale", 1.0), g["weight_decay"],
                                     st["exp_avg"], st["exp_avg_sq"])
        return out
    ours, ref = by_name(model, optimizer), by_name(reference_model, reference_optimizer)
    assert ours.keys() == ref.keys() and ours
    for name, (scale, wd, m, v) in ref.items():
        o = ours[name]
        assert o[0] == pytest.approx(scale) and o[1] == wd, name
        assert torch.equal(o[2], m) and torch.equal(o[3], v), name


def _same_weights(model, reference, prefix=""):
    ref = reference.state_dict()
    own = model.state_dict()
    assert own, "nothing compared"
    for k, v in own.items():
        assert torch.equal(v, ref[prefix + k]), k


def _ft_argv(files, *extra):
    d = files["dir"]
    return ["--data_path", str(d / "data"), *TINY_FT, *extra]


def _pt_argv(files, *extra):
    return ["--data_path", str(files["dir"] / "data" / "train.csv"), *TINY_PT, *extra]


# -------------------------------------------------------------------------- the good files

def test_reference_files_are_what_save_model_writes(files):
    raw = torch.load(files["paths"]["finetune"], weights_only=False)
    assert sorted(raw) == ["args", "epoch", "model", "optimizer", "scaler"]
    assert isinstance(raw["args"], argparse.Namespace) and raw["scaler"]["scale"] == 65536.0
    assert raw["optimizer"]["state"]  # tensors of a stepped optimizer
    ckpt = load_checkpoint(files["paths"]["finetune"])  # weights_only=True, Namespace allowed
    assert isinstance(ckpt["args"], argparse.Namespace)
    assert ckpt["args"].model == "vit_tiny_patch16_224"
    with pytest.raises(pickle.UnpicklingError):  # allowed inside our loads, not process-wide
        torch.load(files["paths"]["finetune"], weights_only=True)


def test_path_t_loads_a_reference_pretraining_file(files):
    args = rmp.get_args_parser().parse_args(_pt_argv(files, "--path_t", files["paths"]["pretrain"]))
    args.use_teacher = True
    _, teacher = rmp.build_models(args)
    _same_weights(teacher.encoder, files["student"], prefix="encoder.")


def test_finetune_loads_both_reference_layouts(files):
    for name, reference, prefix in (("finetune", files["clf"], ""),
                                    ("pretrain", files["student"], "encoder.")):
        args = rcf.get_args_parser().parse_args(_ft_argv(files, "--finetune", files["paths"][name]))
        model = rcf.build_model(args)
        blocks = {k: v for k, v in model.state_dict().items() if k.startswith(("blocks.", "patch"))}
        for k, v in blocks.items():
            assert torch.equal(v, reference.state_dict()[prefix + k]), (name, k)


def test_eval_resume_and_finetune_resume_of_a_reference_file(files, tmp_path, capsys):
    out = str(tmp_path / "eval")
    rcf.main(rcf.get_args_parser().parse_args(
        _ft_argv(files, "--eval", "--resume", files["paths"]["finetune"], "--output_dir", out)))
    assert os.path.isfile(os.path.join(out, "test_summary.json"))
    assert f"resumed from {files['paths']['finetune']} (epoch 0 done)" in capsys.readouterr().out
    # --resume of training: model, optimizer (layer-decay groups), scaler and epoch
    args = rcf.get_args_parser().parse_args(_ft_argv(files, "--resume", files["paths"]["finetune"]))
    model = rcf.build_model(args)
    rcf.resolve_args(args, model)
    optimizer = build_optimizer(model, args, layer_decay=args.layer_decay)
    scaler = torch.amp.GradScaler("cpu")
    state = run_state.RunState(args, model, optimizer, None, 1, scaler=scaler)
    assert state.resume() == files["paths"]["finetune"]
    assert args.start_epoch == 1
    _same_weights(model, files["clf"])
    _same_optimizer_state(model, optimizer, files["clf"], files["ft_opt"])


def test_pretraining_resume_of_a_reference_file(files, tmp_path, capsys):
    out = str(tmp_path / "pt")
    args = rmp.get_args_parser().parse_args(_pt_argv(
        files, "--resume", files["paths"]["pretrain"], "--epochs", "1", "--output_dir", out))
    rmp.main(args)  # epoch 0 is done: nothing left to train
    assert f"resumed from {files['paths']['pretrain']}: epoch 0 done" in capsys.readouterr().out
    assert args.start_epoch == 1


def test_converter_and_extract_features_load_reference_files(files, capsys):
    convert_checkpoint.main(["inspect", files["paths"]["pretrain"]])
    n = len(files["student"].state_dict())
    assert f'"kind": "pretrain", "tensors": {n}' in capsys.readouterr().out
    enc = extract_features.build_feature_encoder(files["paths"]["finetune"],
                                                 "vit_tiny_patch16_224", 32, 4)
    _same_weights(enc.encoder, files["clf"])


# -------------------------------------------------------------- code in args, and non-files

def _entry_points(files, tmp_path):
    """Each entry point as ``fn(path)`` running the user's command on ``path`` (nothing runs
    before ``fn`` is called: ``_entry_points(None, None)`` gives the names)."""
    def ft(*flags):
        rcf.main(rcf.get_args_parser().parse_args(
            _ft_argv(files, *flags, "--output_dir", str(tmp_path / "out"))))

    def pt(*flags):
        rmp.main(rmp.get_args_parser().parse_args(
            _pt_argv(files, *flags, "--output_dir", str(tmp_path / "out"))))

    return {
        "--path_t": lambda p: pt("--path_t", p),
        "--finetune": lambda p: ft("--finetune", p),
        "--eval": lambda p: ft("--eval", "--resume", p),
        "--resume (fine-tuning)": lambda p: ft("--resume", p),
        "--resume (pre-training)": lambda p: pt("--resume", p),
        "convert_checkpoint": lambda p: convert_checkpoint.main(["inspect", p]),
        "extract_features": lambda p: extract_features.main(
            ["--checkpoint", p, "--model", "vit_tiny_patch16_224", "--videos",
             os.path.join(VIDEOS, CLIPS[0]), "--input_size", "32", "--num_frames", "4",
             "--output", str(tmp_path / "f.pt"), "--num_workers", "0", "--device", "cpu"]),
    }


ENTRY_POINTS = list(_entry_points(None, None))


def _message(fn, path):
    """The one error an entry point gives for ``path``: a script's ``error: ...`` exit, or
    the converter's ValueError."""
    with pytest.raises((SystemExit, ValueError)) as e:
        fn(path)
    msg = str(e.value.code if isinstance(e.value, SystemExit) else e.value)
    assert path in msg and "\n" not in msg and "Traceback" not in msg and "\x1b" not in msg, msg
    return msg


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_code_in_args_is_refused_and_never_runs(files, tmp_path, entry):
    fn = _entry_points(files, tmp_path)[entry]
    name = "evil_pretrain" if entry in ("--path_t", "--resume (pre-training)") else "evil_finetune"
    msg = _message(fn, files["paths"][name])
    assert "builtins.exec" in msg and "tools/resave_checkpoint.py" in msg
    assert not os.path.exists(files["marker"])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_text_file_as_checkpoint_is_one_line(files, tmp_path, entry):
    msg = _message(_entry_points(files, tmp_path)[entry], files["paths"]["text"])
    assert "is not a checkpoint: it is a text file starting with 'arm_wrestling_demo.mp4" in msg


@pytest.mark.parametrize("name, what", [("empty", "it is empty"),
                                        ("truncated", "a damaged zip archive")])
def test_empty_and_truncated_files(files, name, what):
    with pytest.raises(ValueError) as e:
        load_checkpoint(files["paths"][name])
    assert what in str(e.value) and files["paths"][name] in str(e.value)
    assert "\n" not in str(e.value)


def test_resave_tool_makes_a_trusted_file_load_safely(files, tmp_path):
    src = str(tmp_path / "trusted.pth")  # a trusted file with an object that is not plain
    clf = files["clf"]
    torch.save({"model": clf.state_dict(), "epoch": 3,
                "args": argparse.Namespace(lr=0.1, dev=torch.device("cpu"),
                                           fn=os.path.join)}, src)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint(src)
    assert e.value.refused == ["posixpath.join"]
    dst = str(tmp_path / "trusted_tensors.pth")
    assert f"python tools/resave_checkpoint.py {src} {dst}" in str(e.value)
    resave_checkpoint.main([src, dst])
    out = load_checkpoint(dst)
    assert sorted(out) == ["args", "epoch", "model"] and out["epoch"] == 3
    assert out["args"] == {"lr": 0.1, "dev": "cpu", "fn": str(os.path.join)}
    for k, v in clf.state_dict().items():
        assert torch.equal(out["model"][k], v)
    with pytest.raises(SystemExit) as e:  # not a checkpoint: nothing to trust, no unpickling
        resave_checkpoint.main([files["paths"]["text"], str(tmp_path / "x.pth")])
    assert "is not a checkpoint" in str(e.value.code)
