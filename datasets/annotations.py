"""Make and check ``path label`` annotation files (VideoMAE's ``train.csv`` format).

Converters from the official split files (labels become 0-based class indices):

- Kinetics-400: the official CSV ``label,youtube_id,time_start,time_end,split``; videos are
  named ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``; class index = position in the
  sorted class names (or in a given class-names file, so val/test reuse the train classes).
- Something-Something V1: ``something-something-v1-{train,validation}.csv`` (``id;template``
  lines) and ``something-something-v1-labels.csv`` (one template per line; class index = line
  position); videos are the JPEG frame folders ``{id}/`` (read by ``video_io.load_frames``).
- Something-Something V2: ``something-something-v2-{train,validation}.json`` (items with
  ``id`` and ``template``) and ``something-something-v2-labels.json``
  (``{"Template text": "index"}``; templates match after removing ``[`` ``]``); videos are
  ``{id}.webm``.
- UCF101: ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based) with ``trainlist0N.txt``
  (``Class/v_x.avi 1``) or ``testlist0N.txt`` (``Class/v_x.avi``, class from the folder).
- HMDB51: ``{class}_test_split{N}.txt`` files, lines ``video.avi id`` with id 1 = train,
  2 = test, 0 = unused; class index = position in the sorted class names.

``validate`` checks an annotation file: missing, unreadable or corrupted videos (frames spread
over the whole video, last one included, are decoded), videos shorter than one sampling
window (reported; still usable since clips are padded), and label problems.

CLI: ``python -m datasets.annotations {convert-k400,convert-ssv1,convert-ssv2,convert-ucf101,
convert-hmdb51,validate} -h``.
"""
import argparse
import csv
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .video_io import VideoDecodeError, load_frames, not_a_video_file, parse_annotation_line


def _read_lines(path):
    """``[(1-based line number, stripped text)]`` of the non-blank lines of a text file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    with open(path, encoding="utf-8-sig") as f:
        return [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]


def read_class_names(path):
    """Class names, one per line; the class index is the (0-based) line position."""
    return [line for _, line in _read_lines(path)]


def write_annotation(path, samples, prefix=""):
    """Write ``(video_path, label)`` pairs as ``{prefix}{video_path} {label}`` lines."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{prefix}{video} {label}\n" for video, label in samples)


def convert_k400(csv_path, class_names=None, ext="mp4"):
    """Official Kinetics-400 CSV -> ``(samples, class_names)``.

    Args:
        csv_path (str): ``label,youtube_id,time_start,time_end,split`` file.
        class_names (list[str] | None): class order to use; None = sorted names of this file.
    Raises:
        ValueError: missing columns, bad times, or a label not in ``class_names`` (file + line).
    """
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"label", "youtube_id", "time_start", "time_end"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)} (the test split has "
                         "no labels)")
    class_names = class_names or sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for lineno, row in enumerate(rows, 2):
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            label = index[row["label"]]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{csv_path}, line {lineno}: bad row {row} ({e!r})") from None
        samples.append((f"{row['youtube_id']}_{start:06d}_{end:06d}.{ext}", label))
    return samples, class_names


def convert_ssv2(json_path, labels_path, ext="webm"):
    """Something-Something V2 JSON -> ``samples`` (class indices from the labels file).

    Raises:
        ValueError: an item without a template or with an unknown template (names its id).
    """
    with open(labels_path, encoding="utf-8-sig") as f:
        labels = {template: int(i) for template, i in json.load(f).items()}
    with open(json_path, encoding="utf-8-sig") as f:
        items = json.load(f)
    samples = []
    for item in items:
        if "template" not in item:
            raise ValueError(f"{json_path}: item {item.get('id')} has no template (test split?)")
        template = item["template"].replace("[", "").replace("]", "")
        if template not in labels:
            raise ValueError(f"{json_path}: item {item['id']}: template {template!r} not in "
                             f"{labels_path}")
        samples.append((f"{item['id']}.{ext}", labels[template]))
    return samples


def convert_ssv1(csv_path, labels_path):
    """Something-Something V1 ``id;template`` CSV -> ``samples`` (``(id, class index)``, the
    frame folder named by the id; class index = the template's line in ``labels_path``).

    Raises:
        ValueError: a line without ``;`` or with a template not in the labels file (file +
            line).
    """
    index = {name: i for i, name in enumerate(read_class_names(labels_path))}
    samples = []
    for lineno, line in _read_lines(csv_path):
        video, sep, template = line.partition(";")
        if not sep or template not in index:
            raise ValueError(f"{csv_path}, line {lineno}: expected 'id;template' with a template "
                             f"of {labels_path}, got {line!r}")
        samples.append((video, index[template]))
    return samples


def convert_ucf101(class_ind_path, split_path):
    """UCF101 ``classInd.txt`` + ``trainlist0N.txt``/``testlist0N.txt`` -> ``(samples, names)``.

    Raises:
        ValueError: bad lines, unknown classes, or a folder that disagrees with the index.
    """
    names = {}
    for lineno, line in _read_lines(class_ind_path):
        idx, _, name = line.partition(" ")
        if not idx.isdigit() or not name:
            raise ValueError(f"{class_ind_path}, line {lineno}: expected 'index name', got {line!r}")
        names[int(idx) - 1] = name.strip()
    class_names = [names[i] for i in sorted(names)]
    by_folder = {name.lower(): i for i, name in names.items()}
    samples = []
    for lineno, line in _read_lines(split_path):
        video, _, idx = line.partition(" ")
        label = by_folder.get(video.split("/")[0].lower())
        if idx.strip():
            if not idx.strip().isdigit() or int(idx) - 1 not in names:
                raise ValueError(f"{split_path}, line {lineno}: bad class index {idx.strip()!r}")
            if label is not None and label != int(idx) - 1:
                raise ValueError(f"{split_path}, line {lineno}: folder of {video} is not class {idx}")
            label = int(idx) - 1
        if label is None:
            raise ValueError(f"{split_path}, line {lineno}: unknown class folder in {video!r}")
        samples.append((video, label))
    return samples, class_names


def convert_hmdb51(split_dir, split=1, subset="train"):
    """HMDB51 ``{class}_test_split{split}.txt`` files -> ``(samples, class_names)``.

    Raises:
        ValueError: no split files, a bad subset, or a line that is not ``video id``.
    """
    wanted = {"train": "1", "test": "2"}.get(subset)
    if wanted is None:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    pattern = re.compile(rf"^(.+)_test_split{split}\.txt$")
    files = sorted(f for f in os.listdir(split_dir) if pattern.match(f))
    if not files:
        raise ValueError(f"no *_test_split{split}.txt files in {split_dir}")
    class_names = [pattern.match(f).group(1) for f in files]
    samples = []
    for label, (name, file) in enumerate(zip(class_names, files)):
        for lineno, line in _read_lines(os.path.join(split_dir, file)):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{file}, line {lineno}: expected 'video.avi 0|1|2', got {line!r}")
            if parts[1] == wanted:
                samples.append((f"{name}/{parts[0]}", label))
    return samples, class_names


@dataclass
class ValidationReport:
    """Result of ``validate_annotation``: ``(line, path, message)`` problems by kind."""
    errors: dict = field(default_factory=dict)    # kind -> list; hard: lines to remove
    warnings: dict = field(default_factory=dict)  # kind -> list; usable lines
    clean_lines: list = field(default_factory=list)
    num_lines: int = 0

    def add(self, table, kind, line, path, message):
        table.setdefault(kind, []).append((line, path, message))

    @property
    def ok(self):
        return not self.errors


def check_video(path, min_frames=1, num_probe=4):
    """Decode ``num_probe`` frames spread over a video (first and last included).

    Returns:
        ``(kind, message)``: ``('ok', ...)``, ``('short', ...)`` (fewer than ``min_frames``
        frames), ``('missing', ...)``, ``('not_a_file', what)`` (a FIFO, socket or device)
        or ``('corrupted', reason)``.
    """
    if not os.path.exists(path):
        return "missing", "file not found"
    special = not_a_video_file(path)
    if special:
        return "not_a_file", f"{special}, not a video file or frame folder"
    count = []

    def probe(n, fps):
        count.append(n)
        return np.unique(np.linspace(0, n - 1, num_probe).round().astype(np.int64))
    try:
        load_frames(path, probe)
    except VideoDecodeError as e:
        return "corrupted", e.reason
    if count[0] < min_frames:
        return "short", f"{count[0]} frames < {min_frames} (clips will be padded)"
    return "ok", f"{count[0]} frames"


def _check_video_args(args):
    return check_video(*args)


def validate_annotation(anno_path, data_root="", nb_classes=None, num_frames=16,
                        sampling_rate=4, num_probe=4, workers=1, sep=" "):
    """Check every line of an annotation file; see the module docstring.

    Returns:
        ``ValidationReport``. Error kinds: ``format``, ``label``, ``missing``, ``not_a_file`` (a FIFO,
        socket or device), ``corrupted``;
        warning kinds: ``short``, ``empty_class``.
    Raises:
        FileNotFoundError: the annotation file is missing.
    """
    report, entries = ValidationReport(), []
    for lineno, line in _read_lines(anno_path):
        report.num_lines += 1
        try:
            video, label_text = parse_annotation_line(line, sep)
        except ValueError as e:
            report.add(report.errors, "format", lineno, line, str(e))
            continue
        if not re.fullmatch(r"-?\d+", label_text):
            report.add(report.errors, "label", lineno, video, f"label {label_text!r} is not an integer")
            continue
        if nb_classes is not None and not 0 <= int(label_text) < nb_classes:
            report.add(report.errors, "label", lineno, video,
                       f"label {label_text} outside [0, {nb_classes})")
            continue
        entries.append((lineno, line, os.path.join(data_root, video), int(label_text)))
    jobs = [(path, num_frames * sampling_rate, num_probe) for _, _, path, _ in entries]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_check_video_args, jobs, chunksize=16))
    else:
        results = [check_video(*job) for job in jobs]
    seen = set()
    for (lineno, line, path, label), (kind, message) in zip(entries, results):
        if kind in ("missing", "not_a_file", "corrupted"):
            report.add(report.errors, kind, lineno, path, message)
            continue
        if kind == "short":
            report.add(report.warnings, kind, lineno, path, message)
        report.clean_lines.append(line)
        seen.add(label)
    for label in sorted(set(range(nb_classes or 0)) - seen):
        report.add(report.warnings, "empty_class", 0, "", f"class {label} has no usable video")
    return report


def _print_report(report, anno_path):
    for table, level in ((report.errors, "ERROR"), (report.warnings, "WARNING")):
        for kind, problems in table.items():
            for line, path, message in problems:
                where = f"line {line}: " if line else ""
                print(f"{level} [{kind}] {anno_path}: {where}{path + ': ' if path else ''}{message}")
    counts = ", ".join(f"{len(v)} {k}" for t in (report.errors, report.warnings) for k, v in t.items())
    print(f"{anno_path}: {report.num_lines} lines, {len(report.clean_lines)} usable"
          f"{'; ' + counts if counts else ''}")


def _save(args, samples, class_names=None):
    write_annotation(args.out, samples, args.prefix)
    print(f"wrote {len(samples)} videos to {args.out}")
    if class_names is not None and args.classes_out:
        with open(args.classes_out, "w", encoding="utf-8") as f:
            f.writelines(name + "\n" for name in class_names)
        print(f"wrote {len(class_names)} class names to {args.classes_out}")


def main(argv=None):
    """CLI entry point; returns the exit status (1 when ``validate`` finds errors)."""
    parser = argparse.ArgumentParser(prog="python -m datasets.annotations", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def converter(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", required=True, help="annotation file to write")
        p.add_argument("--prefix", default="", help="prepended to every video path")
        return p
    p = converter("convert-k400", "official Kinetics-400 CSV")
    p.add_argument("--csv", required=True)
    p.add_argument("--classes_in", help="class-names file to use (e.g. the train split's)")
    p.add_argument("--classes_out", help="write the class names here")
    p.add_argument("--ext", default="mp4")
    p = converter("convert-ssv1", "Something-Something V1 CSV (frame folders)")
    p.add_argument("--csv", required=True, help="something-something-v1-{train,validation}.csv")
    p.add_argument("--labels", required=True, help="something-something-v1-labels.csv")
    p = converter("convert-ssv2", "Something-Something V2 JSON")
    p.add_argument("--json", required=True)
    p.add_argument("--labels", required=True, help="something-something-v2-labels.json")
    p.add_argument("--ext", default="webm")
    p = converter("convert-ucf101", "UCF101 classInd.txt + train/test list")
    p.add_argument("--class_ind", required=True)
    p.add_argument("--split_file", required=True)
    p.add_argument("--classes_out")
    p = converter("convert-hmdb51", "HMDB51 *_test_splitN.txt files")
    p.add_argument("--split_dir", required=True)
    p.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    p.add_argument("--subset", default="train", choices=("train", "test"))
    p.add_argument("--classes_out")
    p = sub.add_parser("validate", help="check an annotation file and its videos")
    p.add_argument("anno_path")
    p.add_argument("--data_root", default="")
    p.add_argument("--nb_classes", type=int)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--sampling_rate", type=int, default=4)
    p.add_argument("--num_probe", type=int, default=4, help="frames decoded per video")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--write_clean", metavar="OUT", help="write the lines without errors here")
    args = parser.parse_args(argv)

    if args.command == "convert-k400":
        classes = read_class_names(args.classes_in) if args.classes_in else None
        _save(args, *convert_k400(args.csv, classes, args.ext))
    elif args.command == "convert-ssv1":
        _save(args, convert_ssv1(args.csv, args.labels))
    elif args.command == "convert-ssv2":
        _save(args, convert_ssv2(args.json, args.labels, args.ext))
    elif args.command == "convert-ucf101":
        _save(args, *convert_ucf101(args.class_ind, args.split_file))
    elif args.command == "convert-hmdb51":
        _save(args, *convert_hmdb51(args.split_dir, args.split, args.subset))
    else:
        report = validate_annotation(args.anno_path, args.data_root, args.nb_classes,
                                     args.num_frames, args.sampling_rate, args.num_probe,
                                     args.workers)
        _print_report(report, args.anno_path)
        if args.write_clean:
            with open(args.write_clean, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in report.clean_lines)
            print(f"wrote {len(report.clean_lines)} lines to {args.write_clean}")
        return 0 if report.ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
