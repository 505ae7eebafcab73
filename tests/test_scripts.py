"""The launch scripts: every configuration's dry run prints a srun / torchrun command whose
flags the Python parsers accept, with the published MMKD scripts' hyper-parameters (less the
documented differences) and METHOD.md's recipe."""
import glob
import os
import re
import shlex
import subprocess

import pytest

from conftest import ROOT

SCRIPTS = os.path.join(ROOT, "scripts")
MVD_CONFIGS = [f"mvd_{s}_from_{t}_k400" for s in ("small", "base") for t in ("base", "large")] + \
              ["mvd_large_from_large_k400", "mvd_huge_from_huge_k400"] + \
              [f"finetune_mvd_{s}_{d}" for s in ("small", "base", "large", "huge")
               for d in ("k400", "ssv2")]
CONFIGS = [f"kd_{s}_{d}" for s in ("small", "base") for d in ("k400", "ucf")] + \
          [f"finetune_{s}_{d}" for s in ("small", "base") for d in ("k400", "ucf", "hmdb")] + \
          MVD_CONFIGS
# TPN's zoo: Kinetics-400 at FXS=8x8 (default), 16x4, 32x2; Something-Something V1/V2
TPN_CONFIGS = [f"{m}_k400" for m in ("tpn_r50", "tpn_r101", "slowonly_r50", "slowonly_r101")] + \
              [f"{m}_{d}" for m in ("tsm_r50_tpn", "tsm_r50") for d in ("ssv1", "ssv2")]
PATHS = dict(DATA_PATH="/data/set dir", OUTPUT_DIR="/out/run", TEACHER_PATH="/ckpt/teacher.pth",
             MODEL_PATH="/ckpt/student.pth", IMAGE_TEACHER_PATH="/ckpt/mae.pth",
             VIDEO_TEACHER_PATH="/ckpt/videomae.pth")

# The published MMKD launch scripts (xiaojieli0903/MaskAgain at c9069d3, scripts/<config>_slurm.sh)
# as the values their parsers (run_kd.py, run_mae_kd.py, run_class_finetuning.py) end with, for
# the flags ours share: the flags each script passes, and its parser's defaults for the rest.
PUB_KD = dict(alpha=0.1, batch_size=64, beta=1.0, clip_grad=None, decoder_depth=0,
              distill="hybrid", input_size=224, kd_T=1.0, mask_type="tube", min_lr=1e-5,
              momentum=0.9, normlize_target=True, num_f=10, num_frames=16, num_k=10, opt="adamw",
              opt_betas=[0.9, 0.95], opt_eps=1e-8, sampling_rate=4, temperature_s=0.1,
              temperature_t=0.05, use_checkpoint=False, warmup_epochs=40, warmup_lr=1e-6,
              warmup_steps=-1, weight_decay=0.05, weight_decay_end=None, epochs=400)
PUB_FT = dict(aa="rand-m7-n4-mstd0.5-inc1", batch_size=32, clip_grad=None, cutmix=1.0,
              cutmix_minmax=None, dist_eval=True, enable_deepspeed=True, init_scale=0.001,
              input_size=224, min_lr=1e-5, mixup=0.8, mixup_mode="batch", mixup_prob=1.0,
              mixup_switch_prob=0.5, momentum=0.9, num_frames=16, num_sample=2, num_workers=10,
              opt="adamw", opt_betas=[0.9, 0.999], opt_eps=1e-8, recount=1, remode="pixel",
              reprob=0.25, short_side_size=224, smoothing=0.1, test_num_crop=3,
              train_interpolation="bicubic", update_freq=1, use_checkpoint=True,
              warmup_epochs=5, warmup_steps=-1, weight_decay=0.05, sampling_rate=4,
              test_num_segment=5)
_S, _B = "pretrain_videomae_small_patch16_224", "pretrain_videomae_base_patch16_224"
_K400_FT = dict(data_set="Kinetics-400", nb_classes=400, drop_path=0.1, fc_drop_rate=0.0,
                layer_decay=0.75, lr=1e-3, save_ckpt_freq=10, warmup_lr=1e-6)
_UCF_FT = dict(data_set="UCF101", nb_classes=101, drop_path=0.2, epochs=100, fc_drop_rate=0.5,
               layer_decay=0.7, lr=5e-4, save_ckpt_freq=50, warmup_lr=1e-8)
_HMDB_FT = dict(data_set="HMDB51", nb_classes=51, drop_path=0.2, epochs=50, fc_drop_rate=0.5,
                layer_decay=0.7, lr=1e-3, save_ckpt_freq=10, warmup_lr=1e-6)
PUBLISHED = {  # config: (GPUs by default, values)
    "kd_small_k400": (8, dict(PUB_KD, model=_S, beta_kd1=0.1, beta_kd2=3.0, drop_path=0.1,
                              gamma=0.1, lr=1.5e-4, mask_ratio=0.9, num_workers=5,
                              save_ckpt_freq=20)),
    "kd_base_k400": (8, dict(PUB_KD, model=_B, beta_kd1=3.0, beta_kd2=1.0, drop_path=0.1,
                             gamma=0.2, lr=1.5e-4, mask_ratio=0.9, num_workers=5,
                             save_ckpt_freq=20)),
    "kd_small_ucf": (4, dict(PUB_KD, model=_S, beta_kd1=1.0, beta_kd2=3.0, drop_path=0.1,
                             gamma=0.1, lr=3e-4, mask_ratio=0.75, num_workers=8,
                             save_ckpt_freq=100)),
    "kd_base_ucf": (4, dict(PUB_KD, model=_B, beta_kd1=3.0, beta_kd2=1.0, drop_path=0.0,
                            gamma=0.1, lr=3e-4, mask_ratio=0.75, num_workers=8,
                            save_ckpt_freq=100)),
    "finetune_small_k400": (8, dict(PUB_FT, **_K400_FT, model="vit_small_patch16_224", epochs=150)),
    "finetune_base_k400": (8, dict(PUB_FT, **_K400_FT, model="vit_base_patch16_224", epochs=75)),
    "finetune_small_ucf": (4, dict(PUB_FT, **_UCF_FT, model="vit_small_patch16_224")),
    "finetune_base_ucf": (4, dict(PUB_FT, **_UCF_FT, model="vit_base_patch16_224")),
    "finetune_small_hmdb": (4, dict(PUB_FT, **_HMDB_FT, model="vit_small_patch16_224",
                                    sampling_rate=2, test_num_segment=10)),
    "finetune_base_hmdb": (4, dict(PUB_FT, **_HMDB_FT, model="vit_base_patch16_224")),
}
# The published MVD scripts (ruiwang2021/mvd at 45b877a6, scripts/mvd_vit_<s>_from_vit_<t>_
# teacher_epoch_400/{pretrain_mvd_<s>_on_k400,finetune_on_k400,finetune_on_ssv2}.sh) the same
# way (run_mvd_pretraining.py's and its run_class_finetuning.py's parsers); fine-tuning
# scripts are the same for both teachers. GPUs: the nodes x 8 each script's comment gives.
PUB_MVD = dict(mask_type="tube", mask_ratio=0.9, feat_decoder_depth=2, distill_loss_func="SmoothL1",
               video_distill_loss_func="SmoothL1", image_teacher_loss_weight=1.0,
               video_teacher_loss_weight=1.0, norm_feature=False, teacher_input_size=224,
               feat_decoder_embed_dim=None, feat_decoder_num_heads=None, opt="adamw",
               opt_betas=[0.9, 0.95], opt_eps=1e-8, clip_grad=None, momentum=0.9,
               weight_decay=0.05, weight_decay_end=None, lr=1.5e-4, min_lr=1e-4, warmup_lr=1e-6,
               warmup_epochs=40, warmup_steps=-1, epochs=401, drop_path=0.1, input_size=224,
               num_frames=16, sampling_rate=4, save_ckpt_freq=10, use_checkpoint=False,
               auto_resume=True, num_workers=10)
_MVD_B = dict(image_teacher_model="mae_teacher_vit_base_patch16", distillation_target_dim=768,
              video_teacher_model="pretrain_videomae_teacher_base_patch16_224",
              video_distillation_target_dim=768)
_MVD_L = dict(image_teacher_model="mae_teacher_vit_large_patch16", distillation_target_dim=1024,
              video_teacher_model="pretrain_videomae_teacher_large_patch16_224",
              video_distillation_target_dim=1024)
_MVD_S_STUDENT = dict(model="pretrain_masked_video_student_small_patch16_224", batch_size=16,
                      update_freq=2)
_MVD_B_STUDENT = dict(model="pretrain_masked_video_student_base_patch16_224", batch_size=16,
                      update_freq=2)
_MVD_H = dict(image_teacher_model="mae_teacher_vit_huge_patch14", distillation_target_dim=1280,
              video_teacher_model="pretrain_videomae_teacher_huge_patch16_224",
              video_distillation_target_dim=1280, teacher_input_size=196,
              video_teacher_input_size=224)
_MVD_L_STUDENT = dict(model="pretrain_masked_video_student_large_patch16_224", batch_size=8,
                      update_freq=2, feat_decoder_depth=4, feat_decoder_embed_dim=512,
                      feat_decoder_num_heads=8)
_MVD_H_STUDENT = dict(model="pretrain_masked_video_student_huge_patch16_224", batch_size=8,
                      update_freq=2, feat_decoder_depth=8, feat_decoder_embed_dim=640,
                      feat_decoder_num_heads=8, drop_path=0.2, use_checkpoint=True)
_MVD_800 = dict(epochs=801, min_lr=1e-5)  # the 800-epoch scripts: their parser's min_lr
PUB_FT_MVD = dict(PUB_FT, opt_betas=[0.9, 0.999], min_lr=1e-6, warmup_lr=1e-6, layer_decay=0.75,
                  drop_path=0.1, fc_drop_rate=0.0, save_ckpt_freq=5, use_checkpoint=False)
_MVD_K400 = dict(data_set="Kinetics-400", nb_classes=400, sampling_rate=4, test_num_segment=5,
                 lr=5e-4)
_MVD_SSV2 = dict(data_set="SSV2", nb_classes=174, test_num_segment=2)
_FT_MVD_LH = dict(fc_drop_rate=0.5, drop_path=0.3, use_checkpoint=True)
PUBLISHED.update({
    "mvd_small_from_base_k400": (32, dict(PUB_MVD, **_MVD_B, **_MVD_S_STUDENT)),
    "mvd_small_from_large_k400": (32, dict(PUB_MVD, **_MVD_L, **_MVD_S_STUDENT)),
    "mvd_base_from_base_k400": (32, dict(PUB_MVD, **_MVD_B, **_MVD_B_STUDENT)),
    "mvd_base_from_large_k400": (32, dict(PUB_MVD, **_MVD_L, **dict(_MVD_B_STUDENT, batch_size=8,
                                                                    update_freq=4))),
    # ViT-L: the 400-epoch script (EPOCHS=400, the default; EPOCHS=800 in its own test)
    "mvd_large_from_large_k400": (32, dict(PUB_MVD, **_MVD_L, **_MVD_L_STUDENT)),
    "mvd_huge_from_huge_k400": (32, dict(PUB_MVD, **_MVD_H, **_MVD_H_STUDENT, **_MVD_800)),
    # ViT-L fine-tuning: the 800-epoch model's scripts (the 400-epoch K400 one accumulates
    # 2 x 8 clips without checkpointing: the same 16 clips per GPU and update)
    "finetune_mvd_large_k400": (32, dict(PUB_FT_MVD, **_MVD_K400) | dict(**_FT_MVD_LH,
                                         model="vit_large_patch16_224", batch_size=16,
                                         update_freq=1, lr=1e-3, epochs=50)),
    "finetune_mvd_huge_k400": (32, dict(PUB_FT_MVD, **_MVD_K400) | dict(**_FT_MVD_LH,
                                        model="vit_huge_patch16_224", batch_size=8,
                                        update_freq=1, lr=1e-3, epochs=50)),
    "finetune_mvd_large_ssv2": (16, dict(PUB_FT_MVD, **_MVD_SSV2) | dict(**_FT_MVD_LH,
                                         model="vit_large_patch16_224", batch_size=16,
                                         update_freq=1, lr=5e-4, epochs=30)),
    "finetune_mvd_huge_ssv2": (16, dict(PUB_FT_MVD, **_MVD_SSV2) | dict(**_FT_MVD_LH,
                                        model="vit_huge_patch16_224", batch_size=8,
                                        update_freq=1, lr=5e-4, min_lr=1e-5, epochs=30)),
    "finetune_mvd_small_k400": (16, dict(PUB_FT_MVD, **_MVD_K400, model="vit_small_patch16_224",
                                         batch_size=12, update_freq=2, epochs=150)),
    "finetune_mvd_base_k400": (32, dict(PUB_FT_MVD, **_MVD_K400, model="vit_base_patch16_224",
                                        batch_size=6, update_freq=2, epochs=75)),
    "finetune_mvd_small_ssv2": (32, dict(PUB_FT_MVD, **_MVD_SSV2, model="vit_small_patch16_224",
                                         batch_size=12, update_freq=1, lr=1e-3, layer_decay=0.7,
                                         epochs=40)),
    "finetune_mvd_base_ssv2": (16, dict(PUB_FT_MVD, **_MVD_SSV2, model="vit_base_patch16_224",
                                        batch_size=24, update_freq=1, lr=5e-4, epochs=30,
                                        use_checkpoint=True)),
})
# Where ours differs on purpose (each marked "differs:" in scripts/recipes.sh, with the reason).
# The data-loader workers are a property of the cluster, not of the recipe: not compared.
DIFFERS = {
    "kd_small_ucf": dict(epochs=100, save_ckpt_freq=20),
    "kd_base_ucf": dict(epochs=100, save_ckpt_freq=20),
    **{c: dict(enable_deepspeed=False) for c in PUBLISHED if c.startswith("finetune")},
}
NOT_COMPARED = ("num_workers",)
# Ours only: the public code's behaviour that our flags spell out (run_kd.py, the ViT-S
# scripts' program, trains a teacher-side Linear; the teacher is VideoMAE ViT-B).
OURS = {c: dict(model_t=_B, teacher_proj="small" in c, reference_losses=False)
        for c in PUBLISHED if c.startswith("kd")}
# ... and MVD's 3-D table, which its student builds and its fine-tuning rebuilds
OURS.update({c: dict(pos_embed="sincos_3d") for c in MVD_CONFIGS})
METHOD_MD = os.path.join(ROOT, os.pardir, "shared", "docs", "METHOD.md")


def _run_dry(script, *extra, **env):
    """``script`` run with ``DRY_RUN=1``, :data:`PATHS` and ``env`` (and no launcher settings
    of ours from the environment)."""
    full = dict(os.environ, DRY_RUN="1", **PATHS, **env)
    for key in ("LAUNCHER", "PARTITION", "SRUN_ARGS", "GPUS", "GPUS_PER_NODE", "JOB_NAME", "GRES",
                "SBATCH_GRES", "SIGNAL", "CPUS_PER_TASK", "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK",
                "SLURM_SUBMIT_DIR"):
        if key not in env:
            full.pop(key, None)
    return subprocess.run(["bash", os.path.join(SCRIPTS, script), *extra], env=full,
                          capture_output=True, text=True, timeout=30)


def dry_run(script, *extra, **env):
    """The tokens of the command ``script`` prints with ``DRY_RUN=1``."""
    out = _run_dry(script, *extra, **env)
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout)


def dry_run_error(script, **env):
    """``(exit status, stderr)`` of ``script``'s dry run with a bad ``env``: one line."""
    out = _run_dry(script, **env)
    assert out.stderr.strip().count("\n") == 0, out.stderr
    return out.returncode, out.stderr


def split_command(tokens):
    """``(launcher tokens, python script name, script flags)``."""
    i = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    return tokens[:i], os.path.basename(tokens[i]), tokens[i + 1:]


def parser_for(script):
    if script == "run_mmkd_pretraining.py":
        from run_mmkd_pretraining import get_args_parser
        return get_args_parser()
    if script == "run_mvd_pretraining.py":
        from run_mvd_pretraining import get_args_parser
        return get_args_parser()
    from run_class_finetuning import get_args_parser
    return get_args_parser()


def expected(config):
    """``(python script, GPUs, {flag: value})`` our dry run of ``config`` must give."""
    gpus, values = PUBLISHED[config]
    values = {k: v for k, v in values.items() if k not in NOT_COMPARED}
    values.update(DIFFERS.get(config, {}), **OURS.get(config, {}))
    script = {"kd": "run_mmkd_pretraining.py", "mvd": "run_mvd_pretraining.py"}.get(
        config.split("_")[0], "run_class_finetuning.py")
    return script, gpus, values


def parsed(config, *extra, **env):
    """``(launcher tokens, python script name, our parser's values)`` of the dry run of
    ``config`` (its script with ``extra`` flags and ``env``)."""
    launcher, script, flags = split_command(dry_run(f"{config}_slurm.sh", *extra, **env))
    return launcher, script, parser_for(script).parse_args(flags)


def test_every_config_has_a_script():
    found = sorted(os.path.basename(p)[:-len("_slurm.sh")]
                   for p in glob.glob(os.path.join(SCRIPTS, "*_slurm.sh")))
    assert found == sorted(CONFIGS + TPN_CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_dry_run_gives_the_published_recipe(config):
    """Every flag the published script of ``config`` sets (or leaves at its parser's default)
    has the same value in our dry run, except the listed differences; the GPUs too."""
    launcher, script, args = parsed(config)
    want_script, gpus, want = expected(config)
    assert script == want_script
    assert launcher[0] == "srun" and f"--ntasks={gpus}" in launcher
    assert f"--gres=gpu:{min(gpus, 8)}" in launcher  # nodes of 8 GPUs
    assert f"--job-name={config}" in launcher and not any(t == "-p" for t in launcher)
    got = {k: getattr(args, k) for k in want}
    assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert args.log_dir == "/out/run" and args.output_dir == "/out/run"
    paths = {"run_class_finetuning.py": ("finetune",), "run_mmkd_pretraining.py": ("path_t",),
             "run_mvd_pretraining.py": ("image_teacher_model_ckpt_path",
                                        "video_teacher_model_ckpt_path")}[script]
    assert {getattr(args, p) for p in paths} <= set(PATHS.values())
    assert len({getattr(args, p) for p in paths}) == len(paths)
    assert args.data_path == "/data/set dir"


def test_mvd_large_800_epochs():
    """EPOCHS=800 of the ViT-L script: mvd_vit_large_from_vit_large_teacher_epoch_800's 801
    epochs and its parser's min lr; any other EPOCHS is a one-line error."""
    launcher, _, args = parsed("mvd_large_from_large_k400", EPOCHS="800")
    _, _, want = expected("mvd_large_from_large_k400")
    want.update(_MVD_800)
    assert {k: getattr(args, k) for k in want} == want
    assert "--job-name=mvd_large_from_large_k400_e800" in launcher
    rc, err = dry_run_error("mvd_large_from_large_k400_slurm.sh", EPOCHS="600")
    assert rc == 1 and "EPOCHS=600" in err


def method_md():
    if not os.path.isfile(METHOD_MD):
        pytest.skip("METHOD.md is not beside the repository (../shared/docs/METHOD.md)")
    with open(METHOD_MD, encoding="utf-8") as f:
        return f.read()


def test_distillation_scripts_follow_the_method_recipe_table():
    """METHOD.md's MMKD recipe (the K400 paragraph and the per-student weight table, and the
    UCF101 sentence) against the dry runs."""
    text = method_md()
    head = re.search(r"^\| student \|(.+)\|$", text, re.M).group(1)
    names = {"γ": "gamma", "α": "alpha", "β": "beta", "β1": "beta_kd1", "β2": "beta_kd2",
             "num_k": "num_k", "num_f": "num_f", "kd_T": "kd_T"}
    cols = [names[c.strip()] for c in head.split("|")]
    rows = dict(re.findall(r"^\| ViT-([BS]) \|(.+)\|$", text, re.M))
    assert set(rows) == {"B", "S"}
    para = re.search(r"Reference hyper-parameters \(K400,(.+?)\):", text, re.S).group(1)
    para = " ".join(para.split())
    num = lambda pattern: float(re.search(pattern, para).group(1))  # noqa: E731
    k400 = dict(epochs=num(r"(\d+) epochs"), warmup_epochs=num(r"warm-up (\d+)"),
                weight_decay=num(r"wd ([\d.]+)"), lr=num(r"base lr ([\d.e-]+)"),
                min_lr=num(r"min_lr ([\d.e-]+)"), batch_size=num(r"batch (\d+) per GPU"),
                mask_ratio=num(r"tube mask ([\d.]+)"))
    betas = [float(b) for b in re.search(r"betas \(([\d.]+), ([\d.]+)\)", para).groups()]
    gpus = int(num(r"on (\d+) GPUs"))
    ucf_mask, ucf_epochs = re.search(r"UCF101 distillation used mask ([\d.]+) and (\d+) epochs",
                                     text).groups()
    for size, letter in (("small", "S"), ("base", "B")):
        weights = dict(zip(cols, (float(v) for v in rows[letter].split("|"))))
        launcher, _, args = parsed(f"kd_{size}_k400")
        assert {k: getattr(args, k) for k in weights} == weights, size
        assert {k: getattr(args, k) for k in k400} == k400 and args.opt_betas == betas
        assert f"--ntasks={gpus}" in launcher
        if size == "base":
            base_dp = re.search(r"drop_path ([\d.]+) for ViT-B", para).group(1)
            assert args.drop_path == float(base_dp)
        _, _, ucf = parsed(f"kd_{size}_ucf")
        assert (ucf.mask_ratio, ucf.epochs) == (float(ucf_mask), int(ucf_epochs))


def test_kinetics_fine_tuning_follows_the_method_recipe():
    text = " ".join(method_md().split("## Fine-tuning and evaluation")[1].split("##")[0].split())
    num = lambda pattern: float(re.search(pattern, text).group(1))  # noqa: E731
    want = dict(layer_decay=num(r"lr decay ([\d.]+)"), lr=num(r"lr ([\d.e-]+) \(per 256\)"),
                warmup_epochs=num(r"warm-up (\d+)"), smoothing=num(r"smoothing ([\d.]+)"),
                mixup=num(r"mixup ([\d.]+)"), cutmix=num(r"cutmix ([\d.]+)"),
                reprob=num(r"random erasing ([\d.]+)"), drop_path=num(r"drop_path ([\d.]+)"),
                num_sample=num(r"num_sample (\d+)"))
    aa = re.search(r"RandAugment `([^`]+)`", text).group(1)
    views = re.search(r"K400 (\d+)x(\d+)x(\d+)", text).groups()
    for size in ("small", "base"):
        _, _, args = parsed(f"finetune_{size}_k400")
        assert {k: getattr(args, k) for k in want} == want and args.aa == aa
        got = (args.num_frames, args.test_num_segment, args.test_num_crop)
        assert got == tuple(map(int, views))


@pytest.mark.parametrize("config", ["kd_base_ucf", "finetune_small_hmdb"])
def test_extra_flags_pass_through_and_win(config):
    _, _, args = parsed(config, "--epochs", "1", "--output_dir", "/tmp/x y")
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
    rc, err = dry_run_error("kd_small_k400_slurm.sh", LAUNCHER="mpirun")
    assert rc == 2 and "LAUNCHER must be slurm or torchrun" in err


TPN_COMMON = dict(opt="sgd", momentum=0.9, lr=0.01, sched="multistep", decay_milestones=[75, 125],
                  decay_rate=0.1, epochs=150, warmup_epochs=0, batch_size=8, layer_decay=1.0,
                  drop_path=0.0, fc_drop_rate=None, smoothing=0.0, mixup=0.0, cutmix=0.0,
                  aa="none", reprob=0.0, num_sample=1, input_size=224, short_side_size=256,
                  fcn_test=True, test_num_crop=3, imagenet_init="/ckpt/resnet.pth",
                  data_path="/data/set dir", output_dir="/out/run", finetune="")
TPN_K400 = dict(data_set="Kinetics-400", nb_classes=400, weight_decay=1e-4, clip_grad=40.0,
                test_num_segment=10, test_flip=True)
TPN_SS = dict(nb_classes=174, num_frames=8, tsm_shift="inplace", weight_decay=5e-4,
              clip_grad=20.0, test_num_segment=2, test_flip=False)
FXS = {"8x8": (8, 8, False), "16x4": (16, 4, True), "32x2": (32, 2, True)}


@pytest.mark.parametrize("config,fxs", [(c, f) for c in TPN_CONFIGS for f in FXS
                                        if c.endswith("k400") or f == "8x8"])
def test_tpn_dry_runs_parse_with_the_tpn_recipe(config, fxs):
    launcher, script, args = parsed(config, FXS=fxs, IMAGENET_INIT="/ckpt/resnet.pth")
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
    assert {k: getattr(args, k) for k in want} == want


def test_tpn_bad_fxs_fails():
    rc, err = dry_run_error("tpn_r50_k400_slurm.sh", FXS="9x9")
    assert rc == 2 and "FXS must be 8x8, 16x4 or 32x2, got '9x9'" in err


def test_mvd_scripts_follow_the_method_recipe():
    """METHOD.md, "MVD exactly": the pre-training recipe and the fine-tuning sentences
    against the dry runs."""
    text = " ".join(method_md().split("## MVD exactly")[1].split("\n## ")[0].split())
    recipe = re.search(r"Recipe \(ViT-B from ViT-B, K400\): (.+?)\. S/B from L", text).group(1)
    num = lambda pattern, s=recipe: float(re.search(pattern, s).group(1))  # noqa: E731
    batch, accum, gpus = (int(v) for v in re.search(r"batch (\d+) x update_freq (\d+) x (\d+) GPUs",
                                                    recipe).groups())
    want = dict(mask_ratio=num(r"tube mask ([\d.]+)"), lr=num(r"lr ([\d.e-]+) per 256"),
                min_lr=num(r"--min_lr ([\d.e-]+)"), warmup_epochs=num(r"warm-up (\d+)"),
                epochs=num(r"(\d+) epochs"), drop_path=num(r"drop_path ([\d.]+)"),
                batch_size=batch, update_freq=accum)
    launcher, _, args = parsed("mvd_base_from_base_k400")
    assert {k: getattr(args, k) for k in want} == want and f"--ntasks={gpus}" in launcher
    assert args.opt_betas == [float(b) for b in re.search(r"AdamW \(([\d.]+), ([\d.]+)\)",
                                                          recipe).groups()]
    _, _, large = parsed("mvd_small_from_large_k400")
    dims = int(re.search(r"S/B from L: L teachers, target dims (\d+)", text).group(1))
    assert large.distillation_target_dim == large.video_distillation_target_dim == dims
    ssv2 = re.search(r"ViT-B SSv2 batch (\d+), lr ([\d.e-]+), (\d+) epochs, layer decay ([\d.]+) "
                     r"\(ViT-S ([\d.]+), (\d+) epochs\)", text).groups()
    launcher, _, b = parsed("finetune_mvd_base_ssv2")
    n = int(re.search(r"--ntasks=(\d+)", " ".join(launcher)).group(1))
    assert b.batch_size * b.update_freq * n == int(ssv2[0])
    assert (b.lr, b.epochs, b.layer_decay) == (float(ssv2[1]), int(ssv2[2]), float(ssv2[3]))
    _, _, s = parsed("finetune_mvd_small_ssv2")
    assert (s.layer_decay, s.epochs) == (float(ssv2[4]), int(ssv2[5]))
    assert (b.data_set, b.num_frames, b.test_num_segment, b.test_num_crop) == ("SSV2", 16, 2, 3)
    k400 = re.search(r"K400 ViT-B lr ([\d.e-]+), (\d+) epochs \(ViT-S (\d+)\)", text).groups()
    _, _, kb = parsed("finetune_mvd_base_k400")
    _, _, ks = parsed("finetune_mvd_small_k400")
    assert (kb.lr, kb.epochs, ks.epochs) == (float(k400[0]), int(k400[1]), int(k400[2]))
    assert (kb.sampling_rate, kb.test_num_segment, kb.test_num_crop) == (4, 5, 3)


@pytest.mark.parametrize("config", ["mvd_large_from_large_k400", "mvd_huge_from_huge_k400"])
def test_mvd_large_and_huge_scripts_build_their_models(config):
    """The ViT-L and ViT-H runs' student and teachers fit each other (widths, token grids: the
    ViT-H/14 image teacher on 196 px frames sees the student's 14 x 14 grid); built on the meta
    device with random teachers (the weight files are not here)."""
    import torch

    import run_mvd_pretraining as rmvd
    _, _, args = parsed(config)
    args.image_teacher_model_ckpt_path = args.video_teacher_model_ckpt_path = ""
    with torch.device("meta"):
        student = rmvd.build_models(args)[0]
    assert student.patch_embed.grid_size == (8, 14, 14)
    assert student.decoder_img.head.out_features == args.distillation_target_dim
    assert student.decoder_vid.head.out_features == args.video_distillation_target_dim
    assert len(student.decoder_img.blocks) == args.feat_decoder_depth
    assert student.decoder_vid.use_checkpoint == args.use_checkpoint


# ---------------------------------------------------------------------------------------------
# SLURM: sbatch defaults, the job-name argument, the allocation's shape, GPU-less partitions
# (run for real against slurmctld / slurmd in tests/test_slurm.py)
# ---------------------------------------------------------------------------------------------

def sbatch_header(script):
    """``{option: value}`` of the ``#SBATCH`` lines of ``script``."""
    options = {}
    for line in open(os.path.join(SCRIPTS, script)):
        if line.startswith("#SBATCH"):
            for token in line.split()[1:]:
                key, _, value = token.partition("=")
                options[key] = value
    return options


def test_sbatch_defaults_match_each_recipe():
    for path in sorted(glob.glob(os.path.join(SCRIPTS, "*_slurm.sh"))):
        script = os.path.basename(path)
        h = sbatch_header(script)
        launcher, _, _ = split_command(dry_run(script))
        ntasks = int(next(t for t in launcher if t.startswith("--ntasks=")).split("=")[1])
        per = int(h["--ntasks-per-node"])
        assert int(h["--nodes"]) * per == ntasks, script
        assert h["--gres"] == f"gpu:{per}" and h["--cpus-per-task"] == "10", script
        assert h["--job-name"] == script[:-len("_slurm.sh")], script
        assert {"--requeue", "--open-mode", "--signal"} <= set(h), script
        assert h["--open-mode"] == "append" and h["--signal"].startswith("USR1@"), script


def test_first_argument_not_a_flag_is_the_job_name():
    launcher, _, args = parsed("kd_base_ucf", "myjob", "--epochs", "1")
    assert "--job-name=myjob" in launcher and args.epochs == 1
    launcher, _, _ = parsed("kd_base_ucf", "--epochs", "1")
    assert "--job-name=kd_base_ucf" in launcher


def test_inside_an_allocation_srun_takes_its_shape():
    launcher, script, _ = split_command(dry_run("mvd_base_from_base_k400_slurm.sh",
                                                SLURM_JOB_ID="7", SLURM_CPUS_PER_TASK="6"))
    assert launcher == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=6", "python", "-u"]
    assert script == "run_mvd_pretraining.py"


@pytest.mark.parametrize("variable", ["GRES", "SBATCH_GRES"])
def test_a_partition_without_gpus(variable):
    launcher, _, _ = split_command(dry_run("kd_small_k400_slurm.sh", **{variable: "none"}))
    assert not any(t.startswith("--gres") for t in launcher) and "--ntasks=8" in launcher


def test_sbatch_copy_in_the_spool_directory_finds_the_repository(tmp_path):
    """sbatch runs a copy of the script from slurmd's spool directory: the repository is
    found from $SLURM_SUBMIT_DIR; elsewhere one line says what to do."""
    spool = tmp_path / "job00005"
    spool.mkdir()
    copy = spool / "slurm_script"
    copy.write_text(open(os.path.join(SCRIPTS, "kd_base_k400_slurm.sh")).read())
    env = dict(os.environ, DRY_RUN="1", SLURM_SUBMIT_DIR=ROOT, SLURM_JOB_ID="5")
    out = subprocess.run(["bash", str(copy)], env=env, capture_output=True, text=True,
                         timeout=30, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert split_command(shlex.split(out.stdout))[1] == "run_mmkd_pretraining.py"
    env["SLURM_SUBMIT_DIR"] = str(tmp_path)
    out = subprocess.run(["bash", str(copy)], env=env, capture_output=True, text=True,
                         timeout=30, cwd=str(tmp_path))
    assert out.returncode == 2 and "run sbatch from the repository root" in out.stderr
