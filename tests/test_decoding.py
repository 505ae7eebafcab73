"""The decoder: decord2 (the maintained fork of decord, same ``import decord`` API) returns the
frames decord 0.6.0 returned, and the frames PyAV returns.

Pins: MD5 of the ``uint8 [16, H, W, 3]`` arrays of 16 frames spread over each bundled clip
(``np.linspace(0, n - 1, 16)``), recorded with decord 0.6.0 and decord2 3.4.0 (2026-12-02).
Full-size frames are the same bits in both. Frames scaled while decoding (``width``/``height``,
what ``load_frames(short_side=...)`` asks for) are not: decord 0.6.0's FFmpeg scaled
bilinearly, decord2's FFmpeg 8 scale filter is bicubic by default (its frames are closest to
PyAV's bicubic, mean difference 0.36 levels, 0.6.0's to PyAV's bilinear, 0.33).
AVI files are left out: the project decodes them with PyAV (``video_io.PYAV_EXTENSIONS``).
"""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import VIDEOS

decord = pytest.importorskip("decord")
av = pytest.importorskip("av")

SCALED = (160, 120)  # width, height asked of the decoder
CLIPS = {  # name: (frames, full-size MD5, scaled MD5 with decord 0.6.0, with decord2 3.4.0)
    "arm_wrestling_demo.mp4": (280, "1806473edf2a7a111c409e1dc517eb7c",
                               "8085e7713a1b567976385d83d04ba974",
                               "6763192fe448c7c9f18810e7a6068e8a"),
    "ava_style_demo.mp4": (57, "777f26ef0e8f541e92b17e4bb7cb47ec",
                           "fd129b81ff72b7ae8b2a037bb73d7145", "10c56b904d02130462867c2b95ab1e47"),
    "flipping_a_pancake.mkv": (310, "4240fb8017968a612ee771227df823ea",
                               "a3f58123c2f33e76b1157daf3a738bda",
                               "d09089fd511914ec96d7d91327818893"),
    "kinetics_clip_test.mp4": (300, "8ed41a300179a917ae4c51b5f3f7dc66",
                               "1f7b4eee40c9baaa91db91e99b9ce51c",
                               "35c1b268e4ba2bbb63cb0256bb236583"),
    "short_clip_part0.mp4": (32, "86a2ae77cca12633eeae2c90e4a54aff",
                             "2486b2d6c52d7836cc99bc4bf718989f",
                             "db7f1a9cc2211c70c227ebc178a315a5"),
}
SCALED_PINS = {"0.6.0": 2, "3.4.0": 3}  # decord.__version__ -> column of CLIPS
# the scale filter each version's FFmpeg uses by default (PyAV's name for it)
FILTER = "BILINEAR" if decord.__version__.startswith("0.") else "BICUBIC"


def md5(array):
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


def pyav_frames(path, indices, **size):
    """Frames ``indices`` (sorted) decoded sequentially by PyAV, RGB uint8 ``[T, H, W, 3]``."""
    wanted, out = set(indices), []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24", **size))
            if i >= indices[-1]:
                break
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_decord_frames_are_the_pinned_ones_and_pyavs(name):
    path = os.path.join(VIDEOS, name)
    n, full_md5 = CLIPS[name][:2]
    reader = decord.VideoReader(path, num_threads=1)
    assert len(reader) == n
    indices = np.linspace(0, n - 1, 16).astype(int).tolist()
    full = reader.get_batch(indices).asnumpy()
    assert md5(full) == full_md5  # decord 0.6.0's frames, bit for bit
    np.testing.assert_array_equal(full, pyav_frames(path, indices))  # the H.264 decoder's RGB
    width, height = SCALED
    scaled = decord.VideoReader(path, num_threads=1, width=width, height=height)
    scaled = scaled.get_batch(indices).asnumpy()
    assert scaled.shape == (16, height, width, 3)
    if decord.__version__ in SCALED_PINS:
        assert md5(scaled) == CLIPS[name][SCALED_PINS[decord.__version__]]
    # any version: one scale filter's rounding away from PyAV's (swscale) resize
    reference = pyav_frames(path, indices, width=width, height=height, interpolation=FILTER)
    diff = np.abs(scaled.astype(np.int16) - reference)
    assert diff.mean() < 0.6, (diff.mean(), FILTER)


ENCODE_VP9 = """
import sys, av
with av.open(sys.argv[1]) as src, av.open(sys.argv[2], "w") as out:
    frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), src.decode(video=0))]
    stream = out.add_stream("libvpx-vp9", rate=30)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for f in frames:
        out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(stream.encode())
"""


def test_vp9_webm_decodes_as_pyav_decodes_it(tmp_path):
    """A VP9 ``.webm`` (made here from a bundled clip with PyAV's libvpx encoder, in a
    process of its own: decord 0.6.0's bundled FFmpeg, once loaded, makes PyAV's encoder fail
    to open): decord's frames equal PyAV's."""
    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("PyAV was built without libvpx-vp9")
    src, path = os.path.join(VIDEOS, "short_clip_part0.mp4"), str(tmp_path / "clip.webm")
    subprocess.run([sys.executable, "-c", ENCODE_VP9, src, path], check=True)
    reader = decord.VideoReader(path, num_threads=1)
    assert len(reader) == 12
    decoded = reader.get_batch([0, 5, 11]).asnumpy()
    np.testing.assert_array_equal(decoded, pyav_frames(path, [0, 5, 11]))
    original = pyav_frames(src, [0, 5, 11])
    assert np.abs(decoded.astype(np.int16) - original).mean() < 8  # lossy, the same clip
