"""The public code's own data loaders, imported from a checkout of it, for ``bench_data.py``.

``--reference_repo DIR`` is a checkout of xiaojieli0903/MaskAgain (MMKD) or MCG-NJU/VideoMAE
(their data code is the same): its ``datasets.build_pretraining_dataset`` (the ``VideoMAE``
pre-training set: TSN-style sampling, PIL multi-scale crop, tube mask) and ``build_dataset``
for Kinetics-400 training (decord, RandAugment, random resized crop, random erasing,
``--num_sample`` copies of one decode) run as they are, from that directory; nothing of them
is copied into this project.

Their modules are top-level (``datasets``, ``masking_generator``, ``transforms``, ...), and
two of those names are ours: they are imported with ``DIR`` first on ``sys.path`` and our
modules moved out of ``sys.modules`` meanwhile, then ours are put back (their functions keep
their own modules' globals). Three things their code imports are missing from a current
environment and get stand-ins, only while their modules are imported and their data sets
built, and only where the real package is not installed:

- ``pandas`` (``read_csv`` of the annotation file): a reader of the same space-separated
  ``path label`` lines returning ``.values`` as an object array;
- ``numpy.lib.function_base`` (removed in NumPy 2; ``kinetics.py`` imports ``disp`` from it
  and does not use it);
- ``cv2`` (``functional.resize_clip`` on numpy clips, which only their test-mode loader
  calls): its two constants and a ``resize`` that raises, so a path that needs it fails.
"""
import argparse
import contextlib
import os
import sys
import types

import numpy as np

THEIR_MODULES = ("datasets", "kinetics", "ssv2", "transforms", "masking_generator",
                 "video_transforms", "volume_transforms", "functional", "rand_augment",
                 "random_erasing")


def _pandas_stand_in():
    def read_csv(path, header=None, delimiter=" "):
        with open(path) as f:
            rows = [line.rstrip("\n").rsplit(delimiter, 1) for line in f if line.strip()]
        table = np.empty((len(rows), 2), dtype=object)
        for i, (name, label) in enumerate(rows):
            table[i] = name, int(label)
        return types.SimpleNamespace(values=table)
    return types.SimpleNamespace(read_csv=read_csv)


def _cv2_stand_in():
    def resize(*args, **kwargs):
        raise RuntimeError("cv2 (opencv-python) is not installed: the reference code's numpy "
                           "resize (its test-mode loader) cannot run")
    return types.SimpleNamespace(INTER_LINEAR=1, INTER_NEAREST=0, resize=resize)


def _missing(name):
    try:
        __import__(name)
        return False
    except ImportError:
        return True


@contextlib.contextmanager
def their_modules(repo):
    """Within: ``DIR``'s top-level modules importable by their names, stand-ins for what is
    missing; ours (and ``sys.path``) restored on exit. Raises FileNotFoundError if ``repo``
    has no ``datasets.py`` and ``kinetics.py``."""
    repo = os.path.abspath(repo)
    for f in ("datasets.py", "kinetics.py"):
        if not os.path.isfile(os.path.join(repo, f)):
            raise FileNotFoundError(f"--reference_repo {repo}: no {f} (expected a checkout of "
                                    f"xiaojieli0903/MaskAgain or MCG-NJU/VideoMAE)")
    ours = {k: v for k, v in sys.modules.items()
            if k.split(".")[0] in THEIR_MODULES}
    for k in ours:
        del sys.modules[k]
    stand_ins = {}
    if _missing("pandas"):
        stand_ins["pandas"] = _pandas_stand_in()
    if _missing("cv2"):
        stand_ins["cv2"] = _cv2_stand_in()
    if _missing("numpy.lib.function_base"):
        stand_ins["numpy.lib.function_base"] = types.SimpleNamespace(disp=print)
    sys.modules.update(stand_ins)
    path = list(sys.path)
    sys.path.insert(0, repo)
    try:
        yield
    finally:
        sys.path[:] = path
        for k in [k for k in sys.modules if k.split(".")[0] in THEIR_MODULES]:
            del sys.modules[k]
        for k in stand_ins:
            sys.modules.pop(k, None)
        sys.modules.update(ours)


def _args(**kw):
    return argparse.Namespace(**kw)


class ReferenceDataset:
    """One of their data sets behind the interface ``bench_data.time_datasets`` uses:
    ``samples`` (one row per video), ``len()`` and ``[i]`` (never ``None``: their loaders
    retry another video instead)."""

    def __init__(self, dataset, samples, clips_per_item):
        self.dataset, self.samples, self.clips_per_item = dataset, samples, clips_per_item

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def _annotation(names, videos, tmp, file_name):
    """Their loaders take the annotation's paths as they are: absolute paths."""
    path = os.path.join(tmp, file_name)
    with open(path, "w") as f:
        f.writelines(f"{os.path.join(os.path.abspath(videos), n)} 0\n" for n in names)
    return path


def pretrain_dataset(repo, names, videos, tmp, num_frames, sampling_rate, input_size,
                     mask_ratio=0.9):
    """Their ``build_pretraining_dataset(args)`` on ``names`` (tube mask, one clip per item:
    their pre-training has no repeated sampling)."""
    anno = _annotation(names, videos, tmp, "reference_pretrain.csv")
    args = _args(data_path=anno, num_frames=num_frames, sampling_rate=sampling_rate,
                 input_size=input_size, mask_type="tube", mask_ratio=mask_ratio,
                 window_size=(num_frames // 2, input_size // 16, input_size // 16))
    with their_modules(repo), contextlib.redirect_stdout(open(os.devnull, "w")):
        import datasets as theirs
        ds = theirs.build_pretraining_dataset(args)
    return ReferenceDataset(ds, names, 1)


def finetune_dataset(repo, names, videos, tmp, num_frames, sampling_rate, input_size,
                     num_sample):
    """Their ``build_dataset(is_train=True, ...)`` for Kinetics-400 on ``names`` with
    VideoMAE's / MMKD's fine-tuning recipe (RandAugment ``rand-m7-n4-mstd0.5-inc1``, bicubic,
    random erasing 0.25 pixel mode, ``num_sample`` copies of one decode)."""
    split = os.path.join(tmp, "reference_finetune")
    os.makedirs(split, exist_ok=True)
    os.replace(_annotation(names, videos, tmp, "train.csv"), os.path.join(split, "train.csv"))
    args = _args(data_set="Kinetics-400", data_path=split, num_frames=num_frames,
                 sampling_rate=sampling_rate, input_size=input_size, short_side_size=input_size,
                 test_num_segment=5, test_num_crop=3, nb_classes=400, num_sample=num_sample,
                 aa="rand-m7-n4-mstd0.5-inc1", train_interpolation="bicubic", reprob=0.25,
                 remode="pixel", recount=1)
    with their_modules(repo), contextlib.redirect_stdout(open(os.devnull, "w")):
        import datasets as theirs
        ds, _ = theirs.build_dataset(is_train=True, test_mode=False, args=args)
    return ReferenceDataset(ds, names, num_sample)
