"""Recipe drift: every zoo script's dry run resolves to its published row without a
difference; a changed --batch_size / --update_freq / GPU count gives the drift lines naming
the published value; a real run prints them and records them in args.json; a run without a
recipe prints nothing new."""
import json
import os

import pytest

import recipes
import run_class_finetuning as rcf
from conftest import VIDEOS
from datasets import DATA_SETS
from test_finetuning import DIST_CLIPS, _anno_dir
from test_scripts import SCRIPTS, parsed

# every zoo script, with the environment settings that choose its published variant
VARIANTS = [(name[:-len("_slurm.sh")], env) for name in sorted(os.listdir(SCRIPTS))
            if name.endswith("_slurm.sh")
            for env in ([dict(FXS=f) for f in ("8x8", "16x4", "32x2")]
                        if name.startswith(("tpn_r", "slowonly")) else
                        [{}, dict(EPOCHS="800")] if name.startswith("mvd_large") else [{}])]


def _resolved(config, *extra, **env):
    """The parsed arguments of ``config``'s dry run and the processes it starts."""
    launcher, _, args = parsed(config, *extra, **env)
    processes = int(next(t for t in launcher if t.startswith("--ntasks=")).split("=")[1])
    if getattr(args, "nb_classes", 0) is None:  # as the run resolves it
        args.nb_classes = DATA_SETS[args.data_set]["nb_classes"]
    return args, processes


def test_every_zoo_script_follows_its_recipe():
    names = set()
    for config, env in VARIANTS:
        args, processes = _resolved(config, **env)
        assert args.recipe in recipes.RECIPES, config
        assert recipes.drift(args, processes) == [], (config, env)
        names.add(args.recipe)
    assert names == set(recipes.RECIPES)  # every row has its script


@pytest.mark.parametrize("config,extra,env,want", [
    ("finetune_base_k400", (), dict(GPUS="4"), [("total_batch", 128, 256)]),
    ("finetune_base_k400", ("--batch_size", "16"), {}, [("total_batch", 128, 256)]),
    ("mvd_base_from_base_k400", ("--update_freq", "1"), {}, [("total_batch", 512, 1024)]),
    ("finetune_mvd_base_ssv2", ("--data_set", "Kinetics-400", "--test_num_segment", "5"), {},
     [("data_set", "Kinetics-400", "SSV2"), ("test_views", "5x3", "2x3")]),
    ("kd_small_ucf", ("--mask_ratio", "0.9", "--lr", "1.5e-4"), {},
     [("lr", 1.5e-4, 3e-4), ("mask_ratio", 0.9, 0.75)]),
])
def test_changed_settings_are_drift(config, extra, env, want):
    args, processes = _resolved(config, *extra, **env)
    found = recipes.drift(args, processes)
    assert [(d["setting"], d["ours"], d["published"]) for d in found] == want
    lines = recipes.drift_lines(args, found)
    assert len(lines) == len(want) and all(ln.startswith(f"warning: recipe {args.recipe}: ")
                                           for ln in lines)
    if want[0][0] == "total_batch":
        assert f"is {want[0][1]}, the published recipe has {want[0][2]}" in lines[0]


def test_an_unknown_recipe_is_one_line():
    args, processes = _resolved("finetune_base_k400", "--recipe", "finetune_base_k700")
    with pytest.raises(ValueError, match="--recipe 'finetune_base_k700' is not a published "
                                         "recipe; known: "):
        recipes.drift(args, processes)


def _run(tmp_path, *flags):
    data = _anno_dir(tmp_path / "anno", DIST_CLIPS[:2], [0, 1])
    out = str(tmp_path / "out")
    rcf.main(rcf.get_args_parser().parse_args([
        "--data_path", data, "--data_set", "UCF101", "--nb_classes", "101", "--data_root",
        VIDEOS, "--device", "cpu", "--model", "vit_tiny_patch16_224", "--input_size", "32",
        "--short_side_size", "32", "--num_frames", "16", "--sampling_rate", "1",
        "--num_workers", "0", "--no-auto_resume", "--test_num_segment", "1",
        "--test_num_crop", "1", "--output_dir", out, *flags]))
    return json.load(open(os.path.join(out, "args.json")))


@pytest.mark.usefixtures("two_block_tiny")
def test_a_run_prints_and_records_its_drift(tmp_path, capsys):
    saved = _run(tmp_path / "a", "--recipe", "finetune_small_ucf", "--batch_size", "2",
                 "--update_freq", "1", "--epochs", "1", "--num_sample", "1", "--mixup", "0",
                 "--cutmix", "0", "--aa", "none", "--lr", "5e-4", "--warmup_epochs", "5")
    out = capsys.readouterr().out
    want = [{"setting": "total_batch", "ours": 2, "published": 128},
            {"setting": "epochs", "ours": 1, "published": 100},
            {"setting": "sampling_rate", "ours": 1, "published": 4},
            {"setting": "test_views", "ours": "1x1", "published": "5x3"}]
    assert saved["recipe_drift"] == want
    assert ("warning: recipe finetune_small_ucf: effective batch (clips per update: "
            "--batch_size x processes x --update_freq) is 2, the published recipe has 128 "
            "(32 x 4 GPUs x 1)") in out
    assert out.count("warning: recipe") == 4
    saved = _run(tmp_path / "b", "--eval")  # no recipe: nothing new
    assert "recipe" not in capsys.readouterr().out and "recipe_drift" not in saved


def test_a_test_alone_compares_what_the_test_sees():
    args, processes = _resolved("finetune_base_k400", "--eval", "--batch_size", "4",
                                "--test_num_crop", "1")
    assert [d["setting"] for d in recipes.drift(args, processes)] == ["test_views"]
