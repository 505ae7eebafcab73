"""The published recipes the model-zoo launch scripts reproduce, as data, and the check that
a run still follows the one it names (``--recipe NAME``, a flag of every training script:
``distributed.add_run_args``; every zoo script passes it).

Most fine-tuned numbers 1-3 points below a zoo row come from a setting that drifted
silently: a total batch below the published one (fewer GPUs without accumulation,
MCG-NJU/VideoMAE issues 37 and 64), a missing ``--data_set SSV2`` (issue 6), another number
of test views. At start a run with ``--recipe`` compares its resolved settings with the row
and prints one warning line per difference, naming the published value; the differences go
into ``args.json`` (``recipe_drift``). A run without ``--recipe`` prints nothing new.

Compared (:data:`COMPARED`): the effective batch in clips (``--batch_size`` x processes x
``--update_freq``), the lr per 256 clips (``--lr``; the run scales it by batch / 256), epochs,
warm-up epochs, frames and sampling rate, mask ratio (pre-training), data set and number of
classes, and the test views (fine-tuning). Other flags (augmentation, regularisation) are
checked against the published scripts by ``tests/test_scripts.py``; here only what a user
changes by accident when moving a run to another cluster.

Sources: MMKD rows from xiaojieli0903/MaskAgain's scripts and METHOD.md (8 GPUs for
Kinetics-400, 4 for UCF101 / HMDB51; UCF101 distillation 100 epochs as METHOD.md states);
MVD rows from ruiwang2021/mvd's scripts (pre-training on 32 GPUs; fine-tuning on the GPUs each
script's comment gives); TPN rows from decisionforce/TPN's configs (32 GPUs x 8 clips).
``scripts/recipes.sh`` holds the same values as flags; ``tests/test_recipes.py`` checks that
every zoo script's dry run resolves to its row without a difference.
"""
from dataclasses import asdict, dataclass

import distributed as du


@dataclass(frozen=True)
class Recipe:
    """One published row. ``None``: not part of that recipe (no mask in fine-tuning, no data
    set / test views in pre-training, no frame stride under TSN sampling)."""
    source: str  # the published script or config it reproduces
    gpus: int
    batch_size: int  # clips per GPU and step
    update_freq: int
    lr: float  # per 256 clips
    epochs: int
    warmup_epochs: int
    num_frames: int
    sampling_rate: int = None
    mask_ratio: float = None
    data_set: str = None
    nb_classes: int = None
    test_views: str = None  # "clips x crops"

    @property
    def total_batch(self):
        return self.gpus * self.batch_size * self.update_freq


def _mmkd_kd(data, gpus, lr, epochs, mask):
    return Recipe(f"MaskAgain scripts/kd_*_{data}_slurm.sh", gpus, 64, 1, lr, epochs, 40, 16, 4,
                  mask_ratio=mask)


def _ft(source, gpus, batch, freq, lr, epochs, data_set, classes, views, sampling_rate=4,
        frames=16, warmup=5):
    return Recipe(source, gpus, batch, freq, lr, epochs, warmup, frames, sampling_rate,
                  data_set=data_set, nb_classes=classes, test_views=views)


def _mvd_pt(batch, freq, epochs=401):
    return Recipe("ruiwang2021/mvd pretrain_mvd_*_on_k400.sh", 32, batch, freq, 1.5e-4, epochs,
                  40, 16, 4, mask_ratio=0.9)


_MMKD_FT = "MaskAgain scripts/finetune_*_slurm.sh"
_MVD_FT = "ruiwang2021/mvd finetune_on_{k400,ssv2}.sh"
_TPN = "decisionforce/TPN config_files"

RECIPES = {
    # MMKD distillation (teacher VideoMAE ViT-B)
    "kd_small_k400": _mmkd_kd("k400", 8, 1.5e-4, 400, 0.9),
    "kd_base_k400": _mmkd_kd("k400", 8, 1.5e-4, 400, 0.9),
    "kd_small_ucf": _mmkd_kd("ucf", 4, 3e-4, 100, 0.75),
    "kd_base_ucf": _mmkd_kd("ucf", 4, 3e-4, 100, 0.75),
    # MMKD fine-tuning
    "finetune_small_k400": _ft(_MMKD_FT, 8, 32, 1, 1e-3, 150, "Kinetics-400", 400, "5x3"),
    "finetune_base_k400": _ft(_MMKD_FT, 8, 32, 1, 1e-3, 75, "Kinetics-400", 400, "5x3"),
    "finetune_small_ucf": _ft(_MMKD_FT, 4, 32, 1, 5e-4, 100, "UCF101", 101, "5x3"),
    "finetune_base_ucf": _ft(_MMKD_FT, 4, 32, 1, 5e-4, 100, "UCF101", 101, "5x3"),
    "finetune_small_hmdb": _ft(_MMKD_FT, 4, 32, 1, 1e-3, 50, "HMDB51", 51, "10x3",
                               sampling_rate=2),
    "finetune_base_hmdb": _ft(_MMKD_FT, 4, 32, 1, 1e-3, 50, "HMDB51", 51, "5x3"),
    # MVD distillation (32 GPUs; 1024 clips per update for ViT-S/B, 512 for ViT-L/H)
    "mvd_small_from_base_k400": _mvd_pt(16, 2),
    "mvd_small_from_large_k400": _mvd_pt(16, 2),
    "mvd_base_from_base_k400": _mvd_pt(16, 2),
    "mvd_base_from_large_k400": _mvd_pt(8, 4),
    "mvd_large_from_large_k400": _mvd_pt(8, 2),
    "mvd_large_from_large_k400_e800": _mvd_pt(8, 2, epochs=801),
    "mvd_huge_from_huge_k400": _mvd_pt(8, 2, epochs=801),
    # MVD fine-tuning
    "finetune_mvd_small_k400": _ft(_MVD_FT, 16, 12, 2, 5e-4, 150, "Kinetics-400", 400, "5x3"),
    "finetune_mvd_base_k400": _ft(_MVD_FT, 32, 6, 2, 5e-4, 75, "Kinetics-400", 400, "5x3"),
    "finetune_mvd_large_k400": _ft(_MVD_FT, 32, 16, 1, 1e-3, 50, "Kinetics-400", 400, "5x3"),
    "finetune_mvd_huge_k400": _ft(_MVD_FT, 32, 8, 1, 1e-3, 50, "Kinetics-400", 400, "5x3"),
    "finetune_mvd_small_ssv2": _ft(_MVD_FT, 32, 12, 1, 1e-3, 40, "SSV2", 174, "2x3",
                                   sampling_rate=None),
    "finetune_mvd_base_ssv2": _ft(_MVD_FT, 16, 24, 1, 5e-4, 30, "SSV2", 174, "2x3",
                                  sampling_rate=None),
    "finetune_mvd_large_ssv2": _ft(_MVD_FT, 16, 16, 1, 5e-4, 30, "SSV2", 174, "2x3",
                                   sampling_rate=None),
    "finetune_mvd_huge_ssv2": _ft(_MVD_FT, 16, 8, 1, 5e-4, 30, "SSV2", 174, "2x3",
                                  sampling_rate=None),
}
# TPN and its baselines: Kinetics-400 at each published FxS, Something-Something V1 / V2
for _model in ("tpn_r50", "tpn_r101", "slowonly_r50", "slowonly_r101"):
    for _frames, _rate in ((8, 8), (16, 4), (32, 2)):
        RECIPES[f"{_model}_k400_{_frames}x{_rate}"] = _ft(
            _TPN, 32, 8, 1, 0.01, 150, "Kinetics-400", 400, "10x3", sampling_rate=_rate,
            frames=_frames, warmup=0)
for _model in ("tsm_r50", "tsm_r50_tpn"):
    for _data in ("ssv1", "ssv2"):
        RECIPES[f"{_model}_{_data}"] = _ft(_TPN, 32, 8, 1, 0.01, 150, _data.upper(), 174, "2x3",
                                           sampling_rate=None, frames=8, warmup=0)

# the settings compared, with the words of the warning lines
COMPARED = {"total_batch": "effective batch (clips per update: --batch_size x processes x "
                           "--update_freq)",
            "lr": "lr per 256 clips (--lr)", "epochs": "--epochs",
            "warmup_epochs": "--warmup_epochs", "num_frames": "--num_frames",
            "sampling_rate": "--sampling_rate", "mask_ratio": "--mask_ratio",
            "data_set": "--data_set", "nb_classes": "--nb_classes",
            "test_views": "test views (--test_num_segment x --test_num_crop)"}


TEST_SETTINGS = ("num_frames", "sampling_rate", "data_set", "nb_classes", "test_views")


def get_recipe(name):
    """The :class:`Recipe` of ``name``. Raises ValueError naming ``--recipe`` and the known
    names."""
    if name not in RECIPES:
        raise ValueError(f"--recipe {name!r} is not a published recipe; known: "
                         f"{', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def resolved_settings(args, world_size=None):
    """The compared settings of a run (:data:`COMPARED` keys) from its flags and
    ``world_size`` processes (default: the running process group's)."""
    world = du.get_world_size() if world_size is None else world_size
    get = lambda k: getattr(args, k, None)  # noqa: E731
    views = (f"{args.test_num_segment}x{args.test_num_crop}"
             if get("test_num_segment") is not None and get("test_num_crop") is not None else None)
    return {"total_batch": args.batch_size * world * args.update_freq, "lr": args.lr,
            "epochs": args.epochs, "warmup_epochs": get("warmup_epochs"),
            "num_frames": get("num_frames"), "sampling_rate": get("sampling_rate"),
            "mask_ratio": get("mask_ratio"), "data_set": get("data_set"),
            "nb_classes": get("nb_classes"), "test_views": views}


def drift(args, world_size=None):
    """The differences between a run and its ``args.recipe``: ``[{setting, ours,
    published}]`` (empty without ``--recipe`` or when it follows the row). A setting the
    recipe leaves open (None) is not compared; a test alone (``--eval``) compares only
    :data:`TEST_SETTINGS`.

    Raises:
        ValueError: an unknown ``--recipe``.
    """
    if not getattr(args, "recipe", None):
        return []
    recipe = get_recipe(args.recipe)
    published = {**asdict(recipe), "total_batch": recipe.total_batch}
    ours = resolved_settings(args, world_size)
    # a test alone (--eval): only what the test sees
    compared = TEST_SETTINGS if getattr(args, "eval", False) else COMPARED
    out = []
    for key in compared:
        want, got = published[key], ours[key]
        if want is None:
            continue
        same = (abs(got - want) <= 1e-9 * abs(want) if isinstance(want, float)
                and isinstance(got, (int, float)) else got == want)
        if not same:
            out.append({"setting": key, "ours": got, "published": want})
    return out


def drift_lines(args, found):
    """The warning lines of :func:`drift`'s ``found``, one per difference."""
    recipe = get_recipe(args.recipe)
    lines = []
    for d in found:
        line = (f"warning: recipe {args.recipe}: {COMPARED[d['setting']]} is {d['ours']}, the "
                f"published recipe has {d['published']}")
        if d["setting"] == "total_batch":
            line += (f" ({recipe.batch_size} x {recipe.gpus} GPUs x {recipe.update_freq}); "
                     f"raise --update_freq or the number of processes to match")
        lines.append(line)
    return lines


def report_drift(args):
    """Print :func:`drift`'s lines (rank 0) and set ``args.recipe_drift`` (recorded in
    ``args.json``). Nothing is printed or set without ``--recipe``. Returns the list."""
    if not getattr(args, "recipe", None):
        return []
    found = drift(args)
    for line in drift_lines(args, found):
        print(line, flush=True)
    if not found:
        print(f"recipe {args.recipe}: the resolved settings follow the published recipe "
              f"({get_recipe(args.recipe).source})")
    args.recipe_drift = found
    return found
