"""The launch scripts: every configuration's dry run prints a srun / torchrun command whose
flags the Python parsers accept, with METHOD.md's reference hyper-parameters."""
import glob
import os
import shlex
import subprocess

import pytest

from conftest import ROOT

SCRIPTS = os.path.join(ROOT, "scripts")
CONFIGS = [f"kd_{s}_{d}" for s in ("small", "base") for d in ("k400", "ucf")] + \
          [f"finetune_{s}_{d}" for s in ("small", "base") for d in ("k400", "ucf", "hmdb")]
# TPN's zoo: Kinetics-400 at FXS=8x8 (default), 16x4, 32x2; Something-Something V1/V2
TPN_CONFIGS = [f"{m}_k400" for m in ("tpn_r50", "tpn_r101", "slowonly_r50", "slowonly_r101")] + \
              [f"{m}_{d}" for m in ("tsm_r50_tpn", "tsm_r50") for d in ("ssv1", "ssv2")]
PATHS = dict(DATA_PATH="/data/set dir", OUTPUT_DIR="/out/run", TEACHER_PATH="/ckpt/teacher.pth",
             MODEL_PATH="/ckpt/student.pth")

KD_COMMON = dict(model_t="pretrain_videomae_base_patch16_224", distill="hybrid", mask_type="tube",
                 num_k=10, num_f=10, kd_T=1.0, batch_size=64, warmup_epochs=40, lr=1.5e-4,
                 min_lr=1e-5, opt="adamw", opt_betas=[0.9, 0.95], weight_decay=0.05,
                 num_frames=16, sampling_rate=4, input_size=224, path_t="/ckpt/teacher.pth",
                 data_path="/data/set dir", output_dir="/out/run")
KD_STUDENT = {"small": dict(model="pretrain_videomae_small_patch16_224", gamma=0.1, alpha=0.1,
                            beta=1.0, beta_kd1=0.1, beta_kd2=3.0, drop_path=0.0),
              "base": dict(model="pretrain_videomae_base_patch16_224", gamma=0.2, alpha=0.1,
                           beta=1.0, beta_kd1=3.0, beta_kd2=1.0, drop_path=0.1)}
KD_DATA = {"k400": dict(mask_ratio=0.9, epochs=400), "ucf": dict(mask_ratio=0.75, epochs=100)}
FT_COMMON = dict(layer_decay=0.75, lr=1e-3, warmup_epochs=5, smoothing=0.1, mixup=0.8, cutmix=1.0,
                 aa="rand-m7-n4-mstd0.5-inc1", reprob=0.25, drop_path=0.1, num_sample=2,
                 test_num_segment=5, test_num_crop=3, num_frames=16, sampling_rate=4,
                 dist_eval=True, finetune="/ckpt/student.pth", data_path="/data/set dir")
FT_DATA = {"k400": dict(data_set="Kinetics-400", nb_classes=400),
           "ucf": dict(data_set="UCF101", nb_classes=101),
           "hmdb": dict(data_set="HMDB51", nb_classes=51)}


def dry_run(script, *extra, **env):
    """The tokens of the command ``script`` prints with ``DRY_RUN=1``."""
    full = dict(os.environ, DRY_RUN="1", **PATHS, **env)
    for key in ("LAUNCHER", "PARTITION", "SRUN_ARGS", "GPUS", "GPUS_PER_NODE", "JOB_NAME"):
        if key not in env:
            full.pop(key, None)
    out = subprocess.run(["bash", os.path.join(SCRIPTS, script), *extra], env=full,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout)


def split_command(tokens):
    """``(launcher tokens, python script name, script flags)``."""
    i = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    return tokens[:i], os.path.basename(tokens[i]), tokens[i + 1:]


def parser_for(script):
    if script == "run_mmkd_pretraining.py":
        from run_mmkd_pretraining import get_args_parser
        return get_args_parser()
    if not os.path.isfile(os.path.join(ROOT, "run_class_finetuning.py")):
        pytest.skip("run_class_finetuning.py is not there yet (written concurrently)")
    from run_class_finetuning import get_args_parser
    return get_args_parser()


def expected(config):
    kind, size, data = config.split("_")
    if kind == "kd":
        return "run_mmkd_pretraining.py", {**KD_COMMON, **KD_STUDENT[size], **KD_DATA[data]}
    return "run_class_finetuning.py", {**FT_COMMON, **FT_DATA[data],
                                       "model": f"vit_{size}_patch16_224"}


def test_every_config_has_a_script():
    found = sorted(os.path.basename(p)[:-len("_slurm.sh")]
                   for p in glob.glob(os.path.join(SCRIPTS, "*_slurm.sh")))
    assert found == sorted(CONFIGS + TPN_CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_dry_run_parses_with_reference_hyper_parameters(config):
    tokens = dry_run(f"{config}_slurm.sh")
    launcher, script, flags = split_command(tokens)
    want_script, want = expected(config)
    assert script == want_script
    assert launcher[0] == "srun" and "--ntasks=8" in launcher and "--gres=gpu:8" in launcher
    assert f"--job-name={config}" in launcher and not any(t == "-p" for t in launcher)
    args = parser_for(script).parse_args(flags)
    got = {k: getattr(args, k) for k in want}
    assert got == want
    assert args.log_dir == "/out/run" and args.output_dir == "/out/run"


@pytest.mark.parametrize("config", ["kd_base_ucf", "finetune_small_hmdb"])
def test_extra_flags_pass_through_and_win(config):
    tokens = dry_run(f"{config}_slurm.sh", "--epochs", "1", "--output_dir", "/tmp/x y")
    _, script, flags = split_command(tokens)
    args = parser_for(script).parse_args(flags)
    assert args.epochs == 1 and args.output_dir == "/tmp/x y"


def test_slurm_settings_from_the_environment():
    tokens = dry_run("kd_small_k400_slurm.sh", PARTITION="video", GPUS="16", CPUS_PER_TASK="6",
                     SRUN_ARGS="--exclude=node07 --time=72:00:00", JOB_NAME="mine")
    launcher, _, _ = split_command(tokens)
    assert launcher[:3] == ["srun", "-p", "video"]
    for flag in ("--ntasks=16", "--ntasks-per-node=8", "--gres=gpu:8", "--cpus-per-task=6",
                 "--job-name=mine", "--exclude=node07", "--time=72:00:00", "--kill-on-bad-exit=1"):
        assert flag in launcher, flag
    assert launcher[-2:] == ["python", "-u"]


def test_torchrun_one_node():
    a = dry_run("finetune_base_k400_slurm.sh", LAUNCHER="torchrun", GPUS="4")
    b = dry_run("torchrun.sh", "finetune_base_k400", GPUS="4")
    assert a == b
    launcher, script, flags = split_command(a)
    assert launcher == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=4"]
    assert script == "run_class_finetuning.py" and "--model" in flags


def test_bad_launcher_fails():
    env = dict(os.environ, DRY_RUN="1", LAUNCHER="mpirun")
    out = subprocess.run(["bash", os.path.join(SCRIPTS, "kd_small_k400_slurm.sh")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "LAUNCHER must be slurm or torchrun" in out.stderr


TPN_COMMON = dict(opt="sgd", momentum=0.9, lr=0.01, sched="multistep", decay_milestones=[75, 125],
                  decay_rate=0.1, epochs=150, warmup_epochs=0, batch_size=8, layer_decay=1.0,
                  drop_path=0.0, fc_drop_rate=None, smoothing=0.0, mixup=0.0, cutmix=0.0,
                  aa="none", reprob=0.0, num_sample=1, input_size=224, short_side_size=256,
                  fcn_test=True, test_num_crop=3, imagenet_init="/ckpt/resnet.pth",
                  data_path="/data/set dir", output_dir="/out/run", finetune="")
TPN_K400 = dict(data_set="Kinetics-400", nb_classes=400, weight_decay=1e-4, clip_grad=40.0,
                test_num_segment=10, test_flip=True)
TPN_SS = dict(nb_classes=174, num_frames=8, weight_decay=5e-4, clip_grad=20.0,
              test_num_segment=2, test_flip=False)
FXS = {"8x8": (8, 8, False), "16x4": (16, 4, True), "32x2": (32, 2, True)}


@pytest.mark.parametrize("config,fxs", [(c, f) for c in TPN_CONFIGS for f in FXS
                                        if c.endswith("k400") or f == "8x8"])
def test_tpn_dry_runs_parse_with_the_tpn_recipe(config, fxs):
    tokens = dry_run(f"{config}_slurm.sh", FXS=fxs, IMAGENET_INIT="/ckpt/resnet.pth")
    launcher, script, flags = split_command(tokens)
    assert script == "run_class_finetuning.py"
    assert "--ntasks=32" in launcher and "--gres=gpu:8" in launcher  # 8 clips x 32 GPUs
    model, data = config.rsplit("_", 1)
    want = dict(TPN_COMMON, model=model)
    if data == "k400":
        frames, rate, cp = FXS[fxs]
        want.update(TPN_K400, num_frames=frames, sampling_rate=rate, use_checkpoint=cp)
        assert f"--job-name={config}_{fxs}" in launcher
    else:
        want.update(TPN_SS, data_set=data.upper())
    args = parser_for(script).parse_args(flags)
    assert {k: getattr(args, k) for k in want} == want


def test_tpn_bad_fxs_fails():
    env = dict(os.environ, DRY_RUN="1", FXS="9x9")
    out = subprocess.run(["bash", os.path.join(SCRIPTS, "tpn_r50_k400_slurm.sh")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "FXS must be 8x8, 16x4 or 32x2, got '9x9'" in out.stderr
