"""Feature extraction on real clips with a tiny random model, from our checkpoints (pre-training
and fine-tuned layouts) and from a Hugging Face directory."""
import os

import numpy as np
import pytest
import torch

from checkpoint import save_checkpoint
from conftest import VIDEOS
from extract_features import build_feature_encoder, load_clips, main
from model_factory import create_classifier, create_student

GEOM = dict(img_size=32, num_frames=4)
CLIP = dict(num_frames=4, sampling_rate=2, input_size=32)
CLIPS = [os.path.join(VIDEOS, n) for n in ("arm_wrestling_demo.mp4", "flipping_a_pancake.mkv")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    student = create_student("pretrain_videomae_tiny_patch16_224", decoder_depth=1, **GEOM)
    clf = create_classifier("vit_tiny_patch16_224", num_classes=5, **GEOM)
    with torch.no_grad():
        clf.fc_norm.weight.normal_()
    paths = {"pretrain": str(d / "pretrain.pth"), "finetune": str(d / "finetune.pth")}
    save_checkpoint(paths["pretrain"], {"model": student.state_dict()})
    save_checkpoint(paths["finetune"], {"model": clf.state_dict()})
    return paths, student, clf


def test_npy_per_video_matches_the_model(checkpoints, tmp_path):
    paths, student, _ = checkpoints
    out = str(tmp_path / "feats")
    main(["--checkpoint", paths["pretrain"], "--model", "pretrain_videomae_tiny_patch16_224",
          "--videos", *CLIPS, os.path.join(VIDEOS, "corrupted_h264.mp4"), "--output_dir", out,
          "--num_frames", "4", "--sampling_rate", "2", "--input_size", "32", "--num_workers", "0"])
    feats = {n: np.load(os.path.join(out, n)) for n in sorted(os.listdir(out))}
    assert sorted(feats) == ["arm_wrestling_demo.npy", "flipping_a_pancake.npy"]  # corrupt skipped
    enc = student.encoder.eval()
    for path in CLIPS:
        x = load_clips(path, **CLIP)  # [1, 3, 4, 32, 32]
        with torch.no_grad():
            want = enc.norm(enc.forward_features(x).tokens).mean(dim=1)[0]  # final norm, mean
        got = feats[os.path.basename(path).rsplit(".", 1)[0] + ".npy"]
        assert got.shape == (192,)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert not np.allclose(feats["arm_wrestling_demo.npy"], feats["flipping_a_pancake.npy"])


def test_finetuned_tokens_and_pooled_and_hf_dir(checkpoints, tmp_path):
    paths, _, clf = checkpoints
    anno = tmp_path / "list.csv"
    anno.write_text("".join(f"{os.path.basename(p)} {i}\n" for i, p in enumerate(CLIPS)))
    common = ["--anno", str(anno), "--data_root", VIDEOS, "--num_frames", "4",
              "--sampling_rate", "2", "--input_size", "32", "--num_workers", "0",
              "--num_segments", "2"]
    main(["--checkpoint", paths["finetune"], "--model", "vit_tiny_patch16_224", "--tokens",
          "--output", str(tmp_path / "tok.pt"), *common])
    main(["--checkpoint", paths["finetune"], "--model", "vit_tiny_patch16_224",
          "--output", str(tmp_path / "pool.pt"), *common])
    tok = torch.load(tmp_path / "tok.pt", weights_only=True)
    pool = torch.load(tmp_path / "pool.pt", weights_only=True)
    assert tok["features"].shape == (2, 8, 192) and pool["features"].shape == (2, 192)
    assert pool["labels"] == [0, 1] and pool["paths"] == CLIPS
    # pooled = the classifier's pre-logits (fc_norm of the token mean), averaged over 2 clips
    clf.eval()
    with torch.no_grad():
        x = load_clips(CLIPS[1], num_segments=2, **CLIP)
        want = clf.forward_head(clf.forward_features(x).tokens, pre_logits=True).mean(dim=0)
    torch.testing.assert_close(pool["features"][1], want, atol=1e-5, rtol=1e-5)
    # the same weights as a transformers directory give the same features
    pytest.importorskip("transformers")
    from hf_interop import export_to_hf
    export_to_hf(clf, str(tmp_path / "hf"))
    enc = build_feature_encoder(str(tmp_path / "hf"))
    enc.fc_norm.eps = clf.fc_norm.eps  # transformers' fc_norm eps is 1e-5 (see hf_interop)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[1].mean(dim=0), want, atol=1e-5, rtol=1e-5)


def test_missing_model_name_is_an_error(checkpoints):
    paths, _, _ = checkpoints
    with pytest.raises(ValueError, match="--model is needed"):
        build_feature_encoder(paths["pretrain"])
