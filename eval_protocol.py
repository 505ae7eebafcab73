"""What a test result was measured on, so that two Top-1 figures can be compared: the
multi-view protocol (frames x clips x crops, frame sampling, spatial views, how the views'
scores are merged), how many videos the list names and how many were found and scored, and
a SHA-256 fingerprint of the annotation list. ``run_class_finetuning.py`` prints it before
the test and records it in ``test_summary.json`` (``--eval`` and the end-of-training test).

Also the check that ``--eval`` tests a trained classifier: a pre-training checkpoint (or one
fine-tuned for another number of classes) has no head for the run's classes, and testing it
reports chance accuracy (MCG-NJU/VideoMAE issues 75 and 84: about 0 %).
"""
import hashlib
import os

from datasets import DATA_SETS, SPLIT_FILES

# parameter names of a classification head (ViTs: fc_norm + head; TPN's CNNs: cls_head and
# the auxiliary head of the neck)
HEAD_KEYS = ("head.", "fc_norm.", "cls_head.")


def file_sha256(path, chunk=1 << 20):
    """Hex SHA-256 of the bytes of ``path``. Raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def protocol(args):
    """The test protocol of a fine-tuning run's flags, as a dict.

    Keys: ``protocol`` (``'16x5x3'``: frames x temporal clips x spatial crops), ``sampling``
    (dense: every ``sampling_rate``-th frame, clips evenly spaced over the video; TSN:
    ``num_frames`` segments, clip ``i`` takes frame ``i`` of each), ``crops`` (the short side
    and the crop size), ``merge`` (the rule that makes one score per video), ``data_set``,
    ``nb_classes``.
    """
    spec = DATA_SETS[args.data_set]
    views = args.test_num_segment * args.test_num_crop
    if spec["sampling"] == "dense":
        sampling = (f"dense: {args.num_frames} frames {args.sampling_rate} apart per clip, "
                    f"{args.test_num_segment} clips evenly spaced over the video")
    else:
        sampling = (f"TSN: {args.num_frames} segments, {args.test_num_segment} clips at "
                    f"offsets within the segments")
    size = args.short_side_size if getattr(args, "fcn_test", False) else args.input_size
    crops = (f"short side {args.short_side_size}, {args.test_num_crop} crop(s) of {size} px"
             f"{' (fully convolutional)' if getattr(args, 'fcn_test', False) else ''}"
             f"{', + horizontal flip' if getattr(args, 'test_flip', False) else ''}")
    merge = (f"softmax probabilities averaged over the {views} views of each video"
             f"{' and their flips' if getattr(args, 'test_flip', False) else ''}; Top-1/Top-5 "
             f"over videos")
    return {"protocol": f"{args.num_frames}x{args.test_num_segment}x{args.test_num_crop}",
            "sampling": sampling, "crops": crops, "merge": merge, "data_set": args.data_set,
            "nb_classes": args.nb_classes}


def annotation_record(anno_path, samples):
    """The annotation list of a test: its path, SHA-256 fingerprint, the number of videos it
    lists and how many of them exist on disk (a regular file or a frame folder).

    Args:
        anno_path: the list (``test.csv``); samples: its ``(video_path, label)`` pairs.
    """
    found = sum(os.path.isfile(p) or os.path.isdir(p) for p, _ in samples)
    return {"annotation_file": os.path.abspath(anno_path),
            "annotation_sha256": file_sha256(anno_path), "videos_listed": len(samples),
            "videos_found": found}


def test_record(args, dataset):
    """:func:`protocol` + :func:`annotation_record` of the test set ``dataset``
    (``datasets.VideoClsDataset`` of ``<data_path>/test.csv``)."""
    anno = os.path.join(args.data_path, SPLIT_FILES["test"])
    return {**protocol(args), **annotation_record(anno, dataset.samples)}


def describe(record):
    """One line for the log: protocol, sampling, videos and the list's fingerprint."""
    return (f"test protocol {record['protocol']} (frames x clips x crops) on {record['data_set']}"
            f" ({record['nb_classes']} classes): {record['sampling']}; {record['crops']}; "
            f"{record['merge']}; {record['videos_listed']} videos listed, "
            f"{record['videos_found']} found; list {record['annotation_file']} sha256 "
            f"{record['annotation_sha256'][:16]}")


def require_trained_head(missing, path, nb_classes):
    """Refuse to ``--eval`` a checkpoint whose classification head the model did not get.

    Args:
        missing: the keys :func:`weights.load_pretrained` left new (missing in the file,
            or dropped as a head of another number of classes).
        path: the checkpoint (``--finetune``); nb_classes: the run's ``--nb_classes``.
    Raises:
        ValueError: one line naming the file, the new head keys and the flag to use.
    """
    new = [k for k in missing if k.startswith(HEAD_KEYS)]
    if new:
        raise ValueError(f"--eval of {path}: it holds no trained classification head for "
                         f"--nb_classes {nb_classes} (new: {', '.join(new[:4])}), so the test "
                         f"would score chance: it is a pre-training checkpoint (or fine-tuned "
                         f"for other classes); fine-tune from it with --finetune {path} "
                         f"(without --eval), then --eval the fine-tuned checkpoint")
