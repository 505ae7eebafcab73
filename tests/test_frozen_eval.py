"""Frozen-feature evaluation: k-NN against a brute-force loop, the linear and attentive probes
leave the encoder untouched, the feature cache, two processes against one, the online k-NN of
pre-training (schedule, resume), and the probe table on the bundled clips."""
import contextlib
import copy
import io
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import run_frozen_eval as rfe
import run_mmkd_pretraining as rmp
from conftest import VIDEOS
from engine_for_finetuning import average_views
from frozen_eval import OnlineKNN, gather_views, shard_loader, view_features
from model_factory import create_student
from probes import LinearProbe, knn_scores, train_linear

GOOD = ["arm_wrestling_demo.mp4", "flipping_a_pancake.mkv", "kinetics_clip_test.avi",
        "ntu_rgbd_S001C001P001R001A001_rgb.avi"]
CLIP = ["--input_size", "32", "--short_side_size", "32", "--num_frames", "4",
        "--sampling_rate", "2", "--num_workers", "0", "--device", "cpu"]
PRE_CLIP = ["--input_size", "32", *CLIP[4:]]  # the pre-training scripts have no short side
TINY = "pretrain_videomae_tiny_patch16_224"


@pytest.fixture(autouse=True, scope="module")
def _tiny(two_block_tiny):
    yield


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Two classes of two real clips each; the test list holds the corrupted clip too."""
    d = tmp_path_factory.mktemp("split")
    (d / "train.csv").write_text("".join(f"{c} {i % 2}\n" for i, c in enumerate(GOOD)))
    (d / "test.csv").write_text("".join(f"{c} {i % 2}\n" for i, c in
                                        enumerate(GOOD + ["corrupted_h264.mp4"])))
    return str(d)


def flags(split, probe, out, *extra):
    return ["--probe", probe, "--model", TINY, "--data_set", "UCF101", "--nb_classes", "2",
            "--data_path", split, "--data_root", VIDEOS, "--test_num_segment", "2",
            "--test_num_crop", "3", "--output_dir", str(out), *CLIP, *extra]


def parsed(argv):
    args = rfe.get_args_parser().parse_args(argv)
    rfe.resolve_args(args)
    args.distributed = False
    return args


# ---------------------------------------------------------------------------------------------
# k-NN against a brute-force loop
# ---------------------------------------------------------------------------------------------

def brute_force_knn(bank, bank_labels, query, num_classes, k, t):
    """One query: sort the bank by (-cosine, index), vote exp(cos / t) with the first k."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]
    q = unit(query)
    sims = [(sum(a * b for a, b in zip(q, unit(row))), j) for j, row in enumerate(bank)]
    votes = [0.0] * num_classes
    for s, j in sorted(sims, key=lambda sj: (-sj[0], sj[1]))[:k]:
        votes[bank_labels[j]] += math.exp(s / t)
    return [v / sum(votes) for v in votes]


def test_knn_equals_a_brute_force_loop_with_ties_large_k_and_views():
    # rows 1 and 4 are the same feature with different labels (a tie that k=1 cuts); class 2
    # has one member, fewer than k
    bank = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0], [2, 1, 1], [1, 0, 1]]
    bank_labels = [0, 1, 0, 2, 0, 1, 1]
    # 3 videos x 2 views
    queries = [[0, 1, 0.1], [1, 0, 0], [0, 0.1, 1], [0.2, 0.1, 1], [1, 1, 1], [0, 1, 0]]
    video = torch.tensor([0, 0, 1, 1, 2, 2])
    labels = torch.tensor([1, 2, 0])
    for k in (1, 4, 20):
        probs = knn_scores(torch.tensor(bank, dtype=torch.float64), torch.tensor(bank_labels),
                           torch.tensor(queries, dtype=torch.float64), 3, k=k, temperature=0.07)
        want = torch.tensor([brute_force_knn(bank, bank_labels, q, 3, k, 0.07)
                             for q in queries], dtype=torch.float64)
        torch.testing.assert_close(probs, want, rtol=1e-9, atol=1e-12)
        _, mean, _ = average_views(video, torch.tensor([0, 1] * 3), probs)
        brute_mean = [[sum(want[2 * v + i][c] for i in range(2)) / 2 for c in range(3)]
                      for v in range(3)]
        top1 = [max(range(3), key=lambda c: row[c]) for row in brute_mean]
        assert mean.argmax(dim=1).tolist() == top1
        if k == 1:  # the tie: row 1 (label 1) is listed before row 4 (label 0) and wins
            assert probs[5].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(knn_scores(torch.eye(3), torch.arange(3), torch.eye(3), 3).argmax(1),
                          torch.arange(3))
    with pytest.raises(ValueError, match="at least one training feature"):
        knn_scores(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.eye(3), 3)


# ---------------------------------------------------------------------------------------------
# the probes leave the encoder alone
# ---------------------------------------------------------------------------------------------

def test_linear_probe_learns_separable_features_and_has_no_affine_norm():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    losses = []
    probe = train_linear(x, y, 2, epochs=60, lr=200.0, batch_size=64, warmup_epochs=2,
                         log=lambda e, loss: losses.append(loss))
    assert isinstance(probe, LinearProbe) and probe.norm.weight is None and not probe.training
    assert losses[-1] < losses[0]
    assert (probe(x).argmax(1) == y).float().mean() > 0.85


def test_linear_probe_pipeline_gives_the_encoder_no_gradient(split, tmp_path):
    args = parsed(flags(split, "linear", tmp_path, "--epochs", "3", "--lr", "50",
                        "--test_num_crop", "1"))
    encoder = rfe.build_encoder(args)
    before = copy.deepcopy(encoder.state_dict())
    merged, extra = rfe.knn_or_linear(args, encoder, torch.device("cpu"), "random")
    assert all(p.grad is None for p in encoder.parameters())
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert merged["probs"].shape == (4 * 2, 2) and merged["skipped"] == 2  # corrupted: 2 views
    assert extra["num_train_videos"] == 4 and math.isfinite(extra["true_class_prob"])


def test_cross_attention_is_self_attention_when_the_queries_are_the_tokens():
    from modeling_encoder import Attention
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4).eval()
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x, q = torch.randn(2, 5, 16), torch.randn(2, 1, 16)
    torch.testing.assert_close(attn.cross(x, x), attn(x))
    # one query: softmax over the 5 tokens of its scaled dot products, written out
    w_q, w_k, w_v = attn.qkv.weight.chunk(3)
    qh = (q @ w_q.T + attn.q_bias).view(2, 1, 4, 4).transpose(1, 2)
    kh = (x @ w_k.T).view(2, 5, 4, 4).transpose(1, 2)
    vh = (x @ w_v.T + attn.v_bias).view(2, 5, 4, 4).transpose(1, 2)
    out = ((qh @ kh.transpose(-1, -2)) / 2).softmax(-1) @ vh  # head_dim 4: scale 1/2
    torch.testing.assert_close(attn.cross(q, x), attn.proj(out.transpose(1, 2).flatten(2)))


def test_attentive_probe_trains_only_the_probe(split, tmp_path):
    args = parsed(flags(split, "attentive", tmp_path, "--epochs", "1", "--batch_size", "2",
                        "--lr", "10"))
    encoder = rfe.build_encoder(args)
    before = copy.deepcopy(encoder.state_dict())
    model, test_set, _ = rfe.attentive(args, encoder, torch.device("cpu"))
    torch.manual_seed(args.seed)
    initial = type(model.probe)(192, 3, 2).state_dict()
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    changed = [k for k, v in model.probe.state_dict().items() if not torch.equal(v, initial[k])]
    assert "head.weight" in changed and "query" in changed and "block.attn.qkv.weight" in changed
    assert len(test_set) == 5 * 6
    # the script: the multi-view test of the probed encoder, written as the other probes are
    out = tmp_path / "script"
    summary = rfe.main(rfe.get_args_parser().parse_args(flags(
        split, "attentive", out, "--epochs", "1", "--batch_size", "2", "--test_num_segment",
        "1", "--test_num_crop", "1")))
    assert json.load(open(out / "probe_summary.json")) == summary
    assert summary["num_videos"] == 4 and summary["skipped_views"] == 1
    assert summary["probe"] == "attentive" and summary["protocol"]["test_views"] == "1x1"
    assert len(open(out / "predictions.csv").read().splitlines()) == 1 + 4


# ---------------------------------------------------------------------------------------------
# the cache, and the end-to-end script
# ---------------------------------------------------------------------------------------------

def test_cached_features_equal_a_fresh_extraction(split, tmp_path, capsys):
    args = parsed(flags(split, "knn", tmp_path / "a", "--feature_cache", str(tmp_path / "c")))
    encoder = rfe.build_encoder(args)
    first = rfe.features(args, encoder, torch.device("cpu"), "test", "random")
    second = rfe.features(args, encoder, torch.device("cpu"), "test", "random")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test:")]
    assert "encoded" in said[0] and "read from" in said[1]
    fresh = gather_views(view_features(encoder, shard_loader(rfe.view_set(args, "test", 2, 3), 3),
                                       "cpu"))
    assert len(os.listdir(tmp_path / "c")) == 1
    for got in (first, second):
        for k in ("video_index", "view", "label", "features"):
            assert torch.equal(got[k], fresh[k]), k
        assert got["video_ids"] == fresh["video_ids"] and got["skipped"] == fresh["skipped"] == 6
    assert fresh["features"].shape == (24, 192)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, argvs, online, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import model_factory
    model_factory.ARCHS["tiny"] = dict(model_factory.ARCHS["tiny"], depth=2)
    torch.set_num_threads(1)
    results = [rfe.main(rfe.get_args_parser().parse_args(a)) for a in argvs]
    import distributed as du
    args = rfe.get_args_parser().parse_args(argvs[0])
    du.init_distributed_mode(args)
    torch.manual_seed(0)
    knn = OnlineKNN(*online, data_root=VIDEOS, num_frames=4, sampling_rate=2, input_size=32,
                    batch_size=3)
    results.append(knn.evaluate(create_student(TINY, decoder_depth=1, img_size=32,
                                               num_frames=4)))
    du.shutdown()
    if rank == 0:
        torch.save(results, out)


def test_two_processes_give_the_numbers_of_one(split, tmp_path):
    lists = (os.path.join(split, "train.csv"), os.path.join(split, "test.csv"))
    argvs = {n: [flags(split, probe, tmp_path / n / probe, "--epochs", "20", "--lr", "3000",
                       "--feature_cache", str(tmp_path / n / "cache"))
                 for probe in ("knn", "linear")] for n in ("one", "two")}
    mp.spawn(_worker, args=(_free_port(), argvs["two"], lists, str(tmp_path / "two.pt")),
             nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    # one thread, as each worker: the linear probe's lr 3000 would otherwise magnify the
    # other reduction order of a 2-thread matmul past the tolerance
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = [rfe.main(rfe.get_args_parser().parse_args(a)) for a in argvs["one"]]
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    knn = OnlineKNN(*lists, data_root=VIDEOS, num_frames=4, sampling_rate=2, input_size=32,
                    batch_size=3)
    student = create_student(TINY, decoder_depth=1, img_size=32, num_frames=4)
    one.append(knn.evaluate(student))
    # the second evaluation encodes the clips kept from the first: the same numbers
    assert set(knn.kept) == {"train", "val"} and knn.evaluate(student) == one[-1]
    for a, b in zip(one[:2], two[:2]):
        for k in ("top1", "top5", "mean_class_acc", "num_videos", "num_views", "skipped_views"):
            assert a[k] == b[k], k
        assert a["true_class_prob"] == pytest.approx(b["true_class_prob"], abs=1e-5)
    assert one[2] == pytest.approx(two[2])
    for probe in ("knn", "linear"):
        rows = [open(tmp_path / n / probe / "predictions.csv").read().splitlines()
                for n in ("one", "two")]
        assert [r.split(",")[:4] for r in rows[0]] == [r.split(",")[:4] for r in rows[1]]
    summary = json.load(open(tmp_path / "two" / "knn" / "probe_summary.json"))
    assert summary["num_videos"] == 4 and summary["num_views"] == 24
    assert summary["skipped_views"] == 6 and summary["checkpoint_sha256"] == "random"


# ---------------------------------------------------------------------------------------------
# online k-NN in pre-training, and the table
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(split, tmp_path_factory):
    """A pixel pre-training with the online k-NN every 2 epochs: 3 epochs, then resumed to 4.
    Returns ``(output dir, printed text, argv)``."""
    d = tmp_path_factory.mktemp("mae")
    (d / "pretrain.csv").write_text("".join(f"{c} 0\n" for c in GOOD))
    argv = ["--data_path", str(d / "pretrain.csv"), "--data_root", VIDEOS, "--model", TINY,
            "--decoder_depth", "1", "--batch_size", "2", "--mask_ratio", "0.5", "--lr", "1e-3",
            "--warmup_epochs", "0", "--save_ckpt_freq", "1", "--output_dir", str(d / "out"),
            "--log_dir", str(d / "tb"),
            "--knn_eval_freq", "2", "--knn_train_list", os.path.join(split, "train.csv"),
            "--knn_val_list", os.path.join(split, "test.csv"), *PRE_CLIP]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        for epochs in ("3", "4"):
            rmp.main(rmp.get_args_parser(teacher=False).parse_args(argv + ["--epochs", epochs]))
    return d / "out", text.getvalue(), argv


def test_online_knn_at_the_asked_epochs_and_after_resume(pretrained, split, tmp_path):
    out, text, argv = pretrained
    assert "resumed from" in text and "% of the epoch" in text
    log = [json.loads(line) for line in open(out / "log.json")]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert [r["epoch"] for r in log if "knn_top1" in r] == [1, 3]
    for r in log:
        if "knn_top1" in r:
            assert 0 <= r["knn_top1"] <= 100 and r["knn_top5"] == 100.0  # 2 classes
            assert r["knn_videos"] == 4  # the corrupted query is skipped
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(out.parent / "tb")).Reload()
    # 2 updates per epoch: epochs 1 and 3 end at updates 4 and 8
    assert [e.step for e in tb.Scalars("knn/knn_top1")] == [4, 8]
    no_val = argv[:argv.index("--knn_val_list")] + argv[argv.index("--knn_val_list") + 2:]
    with pytest.raises(SystemExit, match="needs --knn_val_list"):
        rmp.main(rmp.get_args_parser(teacher=False).parse_args(
            no_val + ["--epochs", "1", "--output_dir", str(tmp_path / "x")]))


def test_probe_table_prints_real_numbers_for_a_random_and_a_trained_encoder(pretrained, split,
                                                                            tmp_path):
    import tools.probe_table as pt
    encoders = [["random", TINY, ""], ["trained", TINY, str(pretrained[0] / "checkpoint-3.pth")]]
    common = ["--data_set", "UCF101", "--nb_classes", "2", "--data_path", split, "--data_root",
              VIDEOS, "--test_num_segment", "1", "--test_num_crop", "1", "--epochs", "20", "--lr",
              "3000", *CLIP]
    results = pt.run_all(encoders, ["knn", "linear"], str(tmp_path / "t"), common)
    text = pt.table(results, encoders, ["knn", "linear"])
    print("\n" + text)
    rows = [line for line in text.splitlines() if line.startswith(("| random", "| trained"))]
    assert len(rows) == 2
    for row in rows:
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 4 and all(math.isfinite(c) for c in cells)
    assert results["random", "knn"]["checkpoint_sha256"] == "random"
    assert len(results["trained", "knn"]["checkpoint_sha256"]) == 64
