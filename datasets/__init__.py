"""Video data: annotation files, decoding, sampling, augmentation and the data sets.

Entry points for the training scripts (VideoMAE's ``build_pretraining_dataset`` and
``build_dataset``, with the same argument names):

- ``build_pretraining_dataset(args, mask_generator)`` -> ``VideoMAEPretrainDataset``
- ``build_dataset(is_train, test_mode, args)`` -> ``(VideoClsDataset, nb_classes)``
- ``collate_skip_none``: the ``collate_fn`` for both (corrupted videos give ``None`` items).
"""
import os

from .classification import VideoClsDataset
from .collate import collate_skip_none
from .pretrain import VideoMAEPretrainDataset
from .sampling import (EpochSeed, dense_sample_indices, dense_test_indices, global_rngs_from,
                       spatial_crop_offsets, test_clip_starts, tsn_sample_indices)
from .video_io import VideoDecodeError, load_frames, read_annotation

# Per benchmark: frame sampling, flip, default number of classes and of test clips.
DATA_SETS = {
    "Kinetics-400": dict(sampling="dense", flip=True, nb_classes=400, test_num_segment=5),
    "SSV2": dict(sampling="tsn", flip=False, nb_classes=174, test_num_segment=2),
    # Something-Something V1: JPEG frame folders (video_io.load_frames reads a directory)
    "SSV1": dict(sampling="tsn", flip=False, nb_classes=174, test_num_segment=2),
    "UCF101": dict(sampling="dense", flip=True, nb_classes=101, test_num_segment=5),
    "HMDB51": dict(sampling="dense", flip=True, nb_classes=51, test_num_segment=5),
}
SPLIT_FILES = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}

__all__ = ["DATA_SETS", "VideoClsDataset", "VideoMAEPretrainDataset", "VideoDecodeError",
           "build_dataset", "build_pretraining_dataset", "collate_skip_none",
           "dense_sample_indices", "dense_test_indices", "EpochSeed", "global_rngs_from",
           "load_frames", "read_annotation", "spatial_crop_offsets", "test_clip_starts",
           "tsn_sample_indices"]


def build_pretraining_dataset(args, mask_generator):
    """Pre-training data from ``args.data_path`` (an annotation file, or a directory holding
    ``train.csv``), ``args.data_root``, ``args.num_frames``, ``args.sampling_rate``,
    ``args.input_size`` and optional ``args.num_sample`` (default 1).

    Raises:
        FileNotFoundError, ValueError: see ``VideoMAEPretrainDataset``.
    """
    anno_path = args.data_path
    if os.path.isdir(anno_path):
        anno_path = os.path.join(anno_path, SPLIT_FILES["train"])
    return VideoMAEPretrainDataset(
        anno_path, getattr(args, "data_root", ""), args.num_frames, args.sampling_rate,
        args.input_size, mask_generator, num_sample=getattr(args, "num_sample", 1))


def build_dataset(is_train, test_mode, args, anno_file=None):
    """Fine-tuning/evaluation data: ``train.csv`` (``is_train``), ``test.csv`` (``test_mode``)
    or ``val.csv`` from the directory ``args.data_path``; ``anno_file`` reads another of its
    files in that mode (the frozen evaluation's test views of ``train.csv``).

    Reads ``args.data_set`` (one of ``DATA_SETS``), ``data_path``, ``num_frames``,
    ``sampling_rate``, ``input_size``, and optional ``nb_classes`` (default: the benchmark's),
    ``data_root`` (''), ``short_side_size`` (``input_size``), ``test_num_segment``
    (5; SSV2 2), ``test_num_crop`` (3), ``fcn_test`` (False: the test crops are
    ``short_side_size`` squares instead of ``input_size`` ones), ``num_sample`` (1), ``aa`` (None),
    ``train_interpolation`` ('bicubic'), ``reprob`` (0), ``remode`` ('pixel'), ``recount`` (1).
    Returns:
        ``(VideoClsDataset, nb_classes)``.
    Raises:
        ValueError: unknown ``--data_set``, ``--data_path`` not a directory, bad annotations.
        FileNotFoundError: missing split file or video.
    """
    if args.data_set not in DATA_SETS:
        raise ValueError(f"--data_set must be one of {sorted(DATA_SETS)}, got {args.data_set!r}")
    spec = DATA_SETS[args.data_set]
    if not os.path.isdir(args.data_path):
        raise ValueError(f"--data_path must be a directory holding train.csv, val.csv and "
                         f"test.csv, got {args.data_path!r}")
    mode = "train" if is_train else "test" if test_mode else "validation"
    nb_classes = getattr(args, "nb_classes", None) or spec["nb_classes"]
    aa = getattr(args, "aa", None)
    short_side = getattr(args, "short_side_size", args.input_size)
    crop = short_side if mode == "test" and getattr(args, "fcn_test", False) else args.input_size
    dataset = VideoClsDataset(
        os.path.join(args.data_path, anno_file or SPLIT_FILES[mode]), getattr(args, "data_root", ""), mode,
        nb_classes=nb_classes, num_frames=args.num_frames, sampling_rate=args.sampling_rate,
        sampling=spec["sampling"], flip=spec["flip"], input_size=crop, short_side_size=short_side,
        test_num_segment=getattr(args, "test_num_segment", spec["test_num_segment"]),
        test_num_crop=getattr(args, "test_num_crop", 3), num_sample=getattr(args, "num_sample", 1),
        auto_augment=None if aa in (None, "", "none", "None") else aa,
        interpolation=getattr(args, "train_interpolation", "bicubic"),
        reprob=getattr(args, "reprob", 0.0), remode=getattr(args, "remode", "pixel"),
        recount=getattr(args, "recount", 1))
    return dataset, nb_classes
