"""Reading annotation lists and decoding the sampled frames of a video.

Annotation files follow VideoMAE's ``train.csv``/``val.csv``/``test.csv`` (despite the
name, one ``path label`` pair per line, space separated); comma-separated lines are accepted
too. Decoding uses decord (the ``decord2`` package, decord's maintained fork with the same
API; ``VideoReader(..., num_threads=1)``, only the requested frames via ``get_batch``) and
falls back to PyAV when decord is missing or cannot open a file.

Every decoding failure is reported as one exception type, ``VideoDecodeError``, so that data
sets can skip the video. A partly decodable file (e.g. a broken H.264 stream: decord decodes
the frames before the damage, then raises ``DECORDError``) raises it when a requested frame
cannot be decoded, or, with ``check_last=True``, when its last frame cannot; the data sets
use that on a video's first load (``guard.py``) so such a file is skipped as a whole.

A directory is read as a video whose frames are its image files in name order (the JPEG
frame folders of Something-Something V1, ``00001.jpg`` ...), decoded with PIL.

AVI files are decoded with PyAV (sequentially, no seeking): decord returns wrong (stale)
frames at random for the last frames of AVI files (dmlc/decord#195), e.g. for frame 163 of
``tests/data/videos/kinetics_clip_test.avi`` in 24-94 % of tries and frame 101 of 103 of the
NTU sample in 4 of 5; PyAV is also no slower on them (short UCF101/HMDB51-style clips).
"""
import os
import re
import stat

import numpy as np

# Sampling arithmetic lives in sampling.py; re-exported here for convenience.
from .sampling import (dense_sample_indices, dense_test_indices, spatial_crop_offsets,  # noqa: F401
                       test_clip_starts, tsn_sample_indices)

try:
    import decord
    try:  # FFmpeg's messages about broken streams would flood the logs of every worker
        decord.logging.set_level(decord.logging.QUIET)
    except AttributeError:
        pass
except ImportError:  # PyAV only
    decord = None


PYAV_EXTENSIONS = (".avi",)  # decoded with PyAV: decord's frame access is unreliable on them
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the frames of a frame folder


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: missing, unopenable, empty, undecodable or malformed.

    Attributes:
        path (str): the video file.
        reason (str): what went wrong.
    """

    def __init__(self, path, reason):
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # picklable across data loader workers
        return type(self), (self.path, self.reason)


def parse_annotation_line(line, sep=" "):
    """Split one annotation line into ``(path, label_text)`` at its LAST separator.

    Separators are ``sep`` and ``,`` (runs of them count as one), so paths may contain
    spaces or commas. Raises ``ValueError`` if there is no separator.
    """
    pattern = _LINE_PATTERNS.get(sep)
    if pattern is None:
        seps = re.escape(sep) + ",\\s" if sep.isspace() else re.escape(sep) + ","
        pattern = _LINE_PATTERNS[sep] = re.compile(rf"^(.*[^{seps}])[{seps}]+([^{seps}]+)$")
    match = pattern.match(line.strip())
    if match is None:
        raise ValueError(f"expected 'path{sep}label', got {line.strip()!r}")
    return match.group(1), match.group(2)


_LINE_PATTERNS = {}


def not_a_video_file(path):
    """What ``path`` is when it exists but is neither a regular file nor a directory (a
    FIFO, a socket, a device): ``'a FIFO (named pipe)'`` ..., else None. Decoders would
    block on a FIFO or read a device forever, so such an entry is reported as what it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def read_annotation(path, data_root="", sep=" ", *, nb_classes=None, check_exists=False):
    """Read a ``path label`` annotation file.

    Args:
        path (str): the annotation file. Blank lines are skipped.
        data_root (str): prefix of relative video paths.
        sep (str): separator besides ``,`` (VideoMAE: a space).
        nb_classes (int | None): when given, labels must lie in ``[0, nb_classes)``.
        check_exists (bool): check that every video file (or frame folder) exists.
    Returns:
        list of ``(video_path: str, label: int)``.
    Raises:
        FileNotFoundError: the annotation file, or (``check_exists``) a video, is missing.
        ValueError: unreadable or empty file, a line that is not ``path label``, a label
            that is not an integer or is out of range. Messages name the file and the
            1-based line number.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"annotation file {path} not found")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of line 1
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read annotation file {path}: {e}") from e
    samples = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            video, label_text = parse_annotation_line(line, sep)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"{where}: label {label_text!r} is not an integer") from None
        if nb_classes is not None and not 0 <= label < nb_classes:
            raise ValueError(f"{where}: label {label} outside [0, {nb_classes}) "
                             f"(--nb_classes {nb_classes})")
        video = os.path.join(data_root, video) if data_root else video
        if check_exists and not os.path.exists(video):
            raise FileNotFoundError(f"{where}: video file {video} not found")
        if check_exists and not_a_video_file(video):
            raise ValueError(f"{where}: {video} is {not_a_video_file(video)}, not a video file "
                             f"or frame folder")
        samples.append((video, label))
    if not samples:
        raise ValueError(f"annotation file {path} is empty")
    return samples


def load_frames(path, indices_fn, *, width=-1, height=-1, short_side=-1, check_last=False):
    """Decode the frames ``indices_fn(num_video_frames, fps)`` of a video.

    Backend: decord, except for ``PYAV_EXTENSIONS`` files, if decord is not installed or if
    it cannot open the file: PyAV.

    Args:
        path (str): video file (any container/codec FFmpeg reads), or a folder of frames
            (:data:`FRAME_EXTENSIONS` files, in name order; ``fps`` is then 0).
        indices_fn (callable): ``(num_video_frames: int, fps: float) -> int array [T]``.
        width, height (int): when both > 0, frames are resized while decoding.
        short_side (int): when > 0 (and no ``width``/``height``), a video whose short side is
            longer is scaled while decoding (FFmpeg's swscale, in the same pass as the
            YUV -> RGB conversion; bicubic with decord2, bilinear with PyAV) so that its
            short side is ``short_side``, keeping the aspect ratio (:func:`scaled_size`);
            smaller videos are decoded as they are.
            Data sets pass the smallest size their crops need, which saves the conversion
            and the later resize of full-size frames (e.g. 3x on 1080p sources).
        check_last (bool): also decode the video's last frame (not returned), so that a
            stream that breaks part-way fails whatever frames were asked for.
    Returns:
        np.ndarray ``[T, H, W, 3]`` uint8 RGB.
    Raises:
        VideoDecodeError: missing file, unopenable, no frames, a frame that does not decode,
            or frames of the wrong shape.
        ValueError: from ``indices_fn`` (bad sampling settings).
    """
    if os.path.isdir(path):
        frames, indices = _folder_frames(path, indices_fn, width, height, check_last, short_side)
        return _checked(path, frames, indices, width, height)
    if not os.path.isfile(path):
        special = not_a_video_file(path)
        raise VideoDecodeError(path, f"{special}, not a video file" if special else "file not found")
    use_decord = decord is not None and not path.lower().endswith(PYAV_EXTENSIONS)
    if short_side > 0 and not (width > 0 and height > 0) and use_decord:
        # decord needs the output size up front; PyAV (below) reads it from the stream
        size = _probe_size(path)
        if size is not None:
            width, height = scaled_size(*size, short_side)
    reader = _open_decord(path, width, height) if use_decord else None
    if reader is not None:
        frames, indices = _decord_frames(path, reader, indices_fn, check_last)
    else:
        frames, indices = _pyav_frames(path, indices_fn, width, height, check_last, short_side)
    return _checked(path, frames, indices, width, height)


def _checked(path, frames, indices, width, height):
    """``frames`` after checking they are uint8 ``[T, H, W, 3]`` (``H, W`` as asked)."""
    expected = (len(indices),) + ((height, width) if width > 0 and height > 0 else frames.shape[1:3])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[:3] != expected \
            or frames.shape[3] != 3:
        raise VideoDecodeError(path, f"frames of shape {frames.shape} {frames.dtype}, "
                                     f"expected {expected + (3,)} uint8")
    return frames


def scaled_size(width, height, short_side):
    """``(width, height)`` scaled so that the short side is ``short_side`` (aspect kept, the
    long side rounded down as torchvision's ``resize(size=short_side)`` does), or unchanged
    when the short side is already ``<= short_side``."""
    if min(width, height) <= short_side:
        return width, height
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


_SIZES = {}  # path -> (width, height): probed once per process (data loader worker)


def _probe_size(path):
    """``(width, height)`` of the first video stream from the container header, or None."""
    if path not in _SIZES:
        import av
        try:
            with av.open(path) as container:
                cc = container.streams.video[0].codec_context
                _SIZES[path] = (cc.width, cc.height) if cc.width > 0 and cc.height > 0 else None
        except Exception:  # unreadable here: decode at full size, decord reports the error
            return None
    return _SIZES[path]


def _open_decord(path, width, height):
    try:
        return decord.VideoReader(path, num_threads=1, width=width, height=height)
    except Exception:  # decord raises DECORDError/RuntimeError; PyAV gets a second chance
        return None


def _indices(path, indices_fn, num_video_frames, fps, check_last):
    """``(indices [T], frames to decode: sorted unique indices, + the last one if asked)``."""
    if num_video_frames < 1:
        raise VideoDecodeError(path, "no frames")
    indices = np.asarray(indices_fn(num_video_frames, fps), dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= num_video_frames:
        raise ValueError(f"frame indices {indices} outside [0, {num_video_frames}) for {path}")
    return indices, np.unique(np.append(indices, num_video_frames - 1) if check_last else indices)


def _decord_frames(path, reader, indices_fn, check_last):
    indices, unique = _indices(path, indices_fn, len(reader), float(reader.get_avg_fps()),
                               check_last)
    try:
        frames = reader.get_batch(unique).asnumpy()[np.searchsorted(unique, indices)]
    except Exception as e:
        message = re.sub(r"\[[\d:]+\] \S+:\d+: ", "", str(e).splitlines()[0])  # drop C++ locations
        raise VideoDecodeError(path, f"decord: {message[:300]}") from None
    return frames, indices


def _pyav_frames(path, indices_fn, width, height, check_last, short_side=-1):
    import av
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            num = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            indices, unique = _indices(path, indices_fn, num, fps, check_last)
            if not stream.frames:  # counted by demuxing: rewind
                container.seek(0, stream=stream)
            wanted, found = set(unique.tolist()), {}
            if short_side > 0 and not (width > 0 and height > 0):
                cc = stream.codec_context
                if cc.width > 0 and cc.height > 0:
                    width, height = scaled_size(cc.width, cc.height, short_side)
            size = dict(width=width, height=height) if width > 0 and height > 0 else {}
            for i, frame in enumerate(container.decode(stream)):  # sequential: no seeking
                if i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24", **size)
                if i >= unique[-1]:
                    break
    except VideoDecodeError:
        raise
    except Exception as e:  # av.error.*: unopenable file or broken stream
        raise VideoDecodeError(path, f"PyAV: {e}") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise VideoDecodeError(path, f"stream ended before frame {missing[0]} of {num}")
    frames = np.stack([found[i] for i in indices.tolist()])
    if size and frames.shape[1:3] != (height, width):
        raise VideoDecodeError(path, f"frames of {frames.shape[2]}x{frames.shape[1]}, expected "
                                     f"{width}x{height}")
    return frames, indices


def _folder_frames(path, indices_fn, width, height, check_last, short_side=-1):
    """The requested frames of a frame folder, decoded and resized (as ``load_frames``
    asks) with PIL."""
    from PIL import Image
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
    indices, unique = _indices(path, indices_fn, len(files), 0.0, check_last)
    found = {}
    for i in unique.tolist():
        try:
            with Image.open(os.path.join(path, files[i])) as image:
                image = image.convert("RGB")
                size = ((width, height) if width > 0 and height > 0 else
                        scaled_size(*image.size, short_side) if short_side > 0 else image.size)
                found[i] = np.asarray(image if size == image.size else
                                      image.resize(size, Image.BILINEAR))
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise VideoDecodeError(path, f"frame {files[i]}: {e}") from None
    if len({f.shape for f in found.values()}) > 1:
        raise VideoDecodeError(path, "frames of different sizes")
    return np.stack([found[i] for i in indices.tolist()]), indices
