"""Frozen-feature evaluation of a pre-trained video encoder: k-NN, linear or attentive probe.

    python run_frozen_eval.py --probe knn --model vit_small_patch16_224 \
        --finetune mmkd_small_k400.pth --data_set Kinetics-400 --data_path lists/k400 \
        --output_dir out/knn
    python run_frozen_eval.py --probe linear --lr 0.1 ... --feature_cache feats/  # lr sweep:
        # the features are decoded and encoded once, then read from feats/
    python run_frozen_eval.py --probe attentive --epochs 20 ...

The encoder is frozen and loaded as ``extract_features.py`` loads it (ours, VideoMAE, MVD,
MMKD pre-training or fine-tuned, DeepSpeed directories, Hugging Face directories, the Keras
port's ``.h5``); ``--finetune ''`` evaluates a randomly initialised pre-training encoder
(``--seed``). Flags mean what they mean in ``run_class_finetuning.py``; ``--data_path`` holds
``train.csv`` and ``test.csv``.

Protocol: the fine-tuning test's views of ``test.csv`` (``--test_num_segment`` clips x
``--test_num_crop`` crops, the data set's sampling: Kinetics 16x5x3 dense, SSv2 16x2x3 TSN),
every view scored, the class probabilities of a video's views averaged, then Top-1 / Top-5 /
mean class accuracy over videos, written to ``predictions.csv`` and ``probe_summary.json``.

- ``knn``: pooled features (the token mean after the encoder's final norm; a fine-tuned
  classifier's ``fc_norm`` output) of ``train.csv`` (``--train_num_segment`` x
  ``--train_num_crop`` centred views, averaged per video) are the bank; every test view is
  classified by its ``--knn_k`` = 20 nearest neighbours in cosine similarity, votes weighted
  by ``exp(sim / 0.07)`` (DINO), the vote shares averaged over the views of a video.
- ``linear``: MAE's linear probe (BatchNorm without affine + Linear; LARS, ``--lr`` 0.1 per
  256 features, 90 epochs, 10 warm-up, cosine, no weight decay) trained on the pooled
  feature of every training view.
- ``attentive``: V-JEPA's attentive probe (one cross-attention block with a learned query
  over the last layer's tokens, then Linear; AdamW, lr 1e-3 per 256 clips, weight decay
  0.01, 20 epochs) trained on augmented training clips (random resized crop, flip) through
  the frozen encoder.

k-NN and linear features are cached on disk (``--feature_cache``), keyed by the checkpoint's
SHA-256, the list's SHA-256 and the protocol, so another probe or learning rate on the same
features decodes nothing. Runs on any number of processes (``torchrun``, ``srun``) with the
same results: each view is encoded on one process and all are gathered.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

import distributed as du
from datasets import DATA_SETS, build_dataset
from engine_for_finetuning import (average_views, multiview_test, summarize_views,
                                   train_one_epoch)
from extract_features import FeatureEncoder, _size, build_feature_encoder
from flag_checks import check_flags
from frozen_eval import (cache_name, cached_features, file_digest, gather_views, per_video,
                         scored, shard_loader, view_features)
from logger import RunLogger
from model_factory import ARCHS, CLASSIFIER_MODELS, PRETRAIN_MODELS
from modeling_encoder import VideoViTEncoder
from optim_factory import build_lr_scheduler, scale_lrs
from pos_embed import add_pos_embed_arg
from probes import KNN_K, KNN_T, AttentiveProbe, ProbedEncoder, knn_scores, train_linear
from run_dir import claim_output_dir, releases_output_dir

# the probes' recipes: MAE's linear probing, V-JEPA's attentive probe (k-NN trains nothing)
PROBE_DEFAULTS = {
    "knn": {},
    "linear": dict(epochs=90, lr=0.1, warmup_epochs=10, weight_decay=0.0, batch_size=1024),
    "attentive": dict(epochs=20, lr=1e-3, warmup_epochs=0, weight_decay=0.01, batch_size=16),
}


def get_args_parser():
    p = argparse.ArgumentParser("Frozen-feature evaluation: k-NN, linear, attentive probes",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--probe", required=True, choices=sorted(PROBE_DEFAULTS))
    a("--finetune", default="", help="checkpoint file or directory (ours, VideoMAE/MVD/MMKD, "
      "DeepSpeed, Hugging Face, Keras .h5); empty = a randomly initialised encoder")
    a("--model", default=None, choices=sorted(CLASSIFIER_MODELS) + sorted(PRETRAIN_MODELS),
      help="encoder size (not needed for a Hugging Face directory)")
    a("--data_set", default="Kinetics-400", choices=sorted(DATA_SETS))
    a("--data_path", required=True, help="directory with train.csv and test.csv")
    a("--data_root", default="", help="prefix for relative video paths")
    a("--nb_classes", type=int, default=None, help="default: the data set's")
    a("--input_size", type=int, default=224)
    a("--short_side_size", type=int, default=224, help="short side before the crops")
    a("--num_frames", type=int, default=16)
    a("--sampling_rate", type=int, default=4)
    add_pos_embed_arg(p)
    a("--test_num_segment", type=int, default=None, help="temporal test views (default: the "
      "data set's, 5; SSv2 2)")
    a("--test_num_crop", type=int, default=3, choices=[1, 3], help="spatial test views")
    a("--train_num_segment", type=int, default=1, help="k-NN bank / linear training: "
      "temporal views of every training video")
    a("--train_num_crop", type=int, default=1, choices=[1, 3],
      help="k-NN bank / linear training: spatial views of every training video")
    a("--knn_k", type=int, default=KNN_K, help="k-NN neighbours")
    a("--knn_temperature", type=float, default=KNN_T, help="k-NN vote temperature")
    a("--epochs", type=int, default=None, help="probe training epochs (linear 90, attentive 20)")
    a("--lr", type=float, default=None, help="lr per 256 samples (linear 0.1, attentive 1e-3)")
    a("--warmup_epochs", type=int, default=None, help="linear 10, attentive 0")
    a("--weight_decay", type=float, default=None, help="linear 0, attentive 0.01")
    a("--batch_size", type=int, default=None, help="probe training batch per process: "
      "features (linear, 1024) or clips (attentive, 16)")
    a("--feature_batch_size", type=int, default=8, help="clips per forward pass of the encoder")
    a("--feature_cache", default="", help="directory of cached features (default: "
      "<output_dir>/feature_cache; share one between the runs of a sweep); 'none' = no cache")
    a("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast of the encoder")
    a("--num_workers", type=int, default=2)
    a("--output_dir", default="", help="predictions.csv, probe_summary.json, log.json")
    a("--log_dir", default=None, help="tensorboard directory (attentive probe)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--seed", type=int, default=0)
    a("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def resolve_args(args):
    """The probe's recipe where a flag is not given, the data set's defaults, and the fixed
    settings of the reused schedule. Raises ValueError naming a bad flag."""
    for k, v in PROBE_DEFAULTS[args.probe].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    spec = DATA_SETS[args.data_set]
    args.nb_classes = args.nb_classes or spec["nb_classes"]
    args.test_num_segment = args.test_num_segment or spec["test_num_segment"]
    if args.short_side_size < args.input_size:
        raise ValueError(f"--short_side_size {args.short_side_size} is smaller than the "
                         f"--input_size {args.input_size} crops")
    if args.feature_cache == "" and args.output_dir:
        args.feature_cache = os.path.join(args.output_dir, "feature_cache")
    if args.feature_cache == "none":
        args.feature_cache = ""
    # the attentive probe reuses the fine-tuning loop and schedule
    args.update_freq, args.warmup_lr, args.min_lr, args.warmup_steps = 1, 0.0, 0.0, -1
    args.sched, args.num_sample, args.aa, args.reprob = "cosine", 1, None, 0.0
    check_flags(args)
    if not os.path.isdir(args.data_path):
        raise ValueError(f"--data_path must be a directory holding train.csv and test.csv, "
                         f"got {args.data_path!r}")


def build_encoder(args):
    """The frozen :class:`extract_features.FeatureEncoder` of ``--finetune`` (a seeded random
    pre-training encoder, with its final norm, when empty)."""
    if args.finetune:
        return build_feature_encoder(args.finetune, args.model, args.input_size,
                                     args.num_frames, args.pos_embed)
    if not args.model:
        raise ValueError("--model is needed for a random encoder (no --finetune)")
    torch.manual_seed(args.seed)
    arch = {k: v for k, v in ARCHS[_size(args.model)].items() if not k.startswith("decoder")}
    print(f"warning: no --finetune: evaluating a randomly initialised {args.model} encoder")
    return FeatureEncoder(VideoViTEncoder(img_size=args.input_size, num_frames=args.num_frames,
                                          pos_embed=args.pos_embed, **arch)).eval()


def view_set(args, split, num_segment, num_crop):
    """Test-mode views of ``<data_path>/<split>.csv``: ``VideoClsDataset`` with
    ``num_segment`` x ``num_crop`` views per video."""
    sub = argparse.Namespace(**{**vars(args), "test_num_segment": num_segment,
                                "test_num_crop": num_crop})
    return build_dataset(False, True, sub, anno_file=f"{split}.csv")[0]


def protocol(args):
    """The settings the features depend on (besides the checkpoint and the list)."""
    spec = DATA_SETS[args.data_set]
    return dict(data_set=args.data_set, sampling=spec["sampling"], num_frames=args.num_frames,
                sampling_rate=args.sampling_rate, input_size=args.input_size,
                short_side_size=args.short_side_size, model=args.model,
                pos_embed=args.pos_embed, amp=args.amp, data_root=args.data_root,
                test_views=f"{args.test_num_segment}x{args.test_num_crop}",
                train_views=f"{args.train_num_segment}x{args.train_num_crop}")


def features(args, encoder, device, split, digest):
    """Gathered pooled features of every view of ``split`` (cached). Returns the
    :func:`frozen_eval.gather_views` dict."""
    views = ((args.test_num_segment, args.test_num_crop) if split == "test" else
             (args.train_num_segment, args.train_num_crop))
    dataset = view_set(args, split, *views)
    list_file = os.path.join(args.data_path, f"{split}.csv")
    name = cache_name(checkpoint=digest, list=file_digest(list_file), views=views,
                      **protocol(args))
    cache_file = os.path.join(args.feature_cache, name) if args.feature_cache else ""
    amp = torch.bfloat16 if args.amp == "bf16" else None
    t0 = time.time()
    out, hit = cached_features(cache_file, lambda: gather_views(view_features(
        encoder, shard_loader(dataset, args.feature_batch_size, args.num_workers), device,
        amp_dtype=amp, desc=split)))
    print(f"{split}: {out['features'].shape[0]} views of {len(out['video_ids'])} videos "
          f"({views[0]}x{views[1]} each), features {tuple(out['features'].shape[1:])}, "
          f"{'read from ' + cache_file if hit else 'encoded'} in {time.time() - t0:.1f}s"
          + (f", skipped {out['skipped']} views of corrupted videos" if out["skipped"] else ""))
    return out


def knn_or_linear(args, encoder, device, digest):
    """Scores of every test view by the k-NN or linear probe; returns the input of
    ``summarize_views`` and the probe's summary entries."""
    train = features(args, encoder, device, "train", digest)
    test = features(args, encoder, device, "test", digest)
    if args.probe == "knn":
        _, bank, bank_labels = per_video(train)
        probs = knn_scores(bank, bank_labels, test["features"], args.nb_classes,
                           k=args.knn_k, temperature=args.knn_temperature)
        extra = dict(knn_k=args.knn_k, knn_temperature=args.knn_temperature,
                     bank_size=bank.shape[0])
    else:
        logger = RunLogger(args.output_dir)

        def log(epoch, loss):
            logger.log_json({"epoch": epoch, "train_loss": loss})
        probe = train_linear(train["features"], train["label"], args.nb_classes,
                             epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                             seed=args.seed, log=log)
        with torch.no_grad():
            probs = F.softmax(probe(test["features"]), dim=1)
        extra = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                     train_views=int(train["features"].shape[0]))
    extra["num_train_videos"] = len(train["video_ids"])
    _, mean_probs, _ = average_views(test["video_index"], test["view"], probs)
    _, _, labels = per_video(test)
    # how sure the probe is, where Top-1 saturates (a small test set)
    extra["true_class_prob"] = mean_probs[torch.arange(len(labels)), labels].mean().item() \
        if len(labels) else float("nan")
    return scored(test, probs), extra


def attentive(args, encoder, device):
    """Train V-JEPA's probe on augmented training clips through the frozen encoder, then the
    multi-view test. Returns its summary (written by ``multiview_test``)."""
    pe = encoder.encoder.patch_embed
    torch.manual_seed(args.seed)  # the same probe on every process
    probe = AttentiveProbe(encoder.encoder.embed_dim, encoder.encoder.num_heads, args.nb_classes)
    model = ProbedEncoder(encoder, probe).to(device)
    train_set = build_dataset(True, False, args)[0]
    sampler = torch.utils.data.DistributedSampler(train_set, du.get_world_size(), du.get_rank(),
                                                  shuffle=True, seed=args.seed)
    from datasets.collate import collate_skip_none
    loader = torch.utils.data.DataLoader(train_set, sampler=sampler, batch_size=args.batch_size,
                                         num_workers=args.num_workers, drop_last=True,
                                         collate_fn=collate_skip_none)
    if len(loader) == 0:
        raise ValueError(f"{args.data_path}/train.csv: {len(train_set)} clips give no batch of "
                         f"--batch_size {args.batch_size} per process")
    scale_lrs(args)
    optimizer = create_optimizer_v2(probe, "adamw", lr=args.lr_scaled,
                                    weight_decay=args.weight_decay)
    sched, _, _ = build_lr_scheduler(optimizer, args, len(loader))
    ddp = model
    if args.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    logger = RunLogger(args.output_dir, args.log_dir)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    print(f"attentive probe: {sum(p.numel() for p in probe.parameters()) / 1e6:.2f}M "
          f"parameters over {pe.num_patches} tokens; {len(loader)} steps per epoch, lr "
          f"{args.lr_scaled:.3e}")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch, args.seed + du.get_rank())
        stats = train_one_epoch(ddp, torch.nn.CrossEntropyLoss(), loader, optimizer, device,
                                epoch, lr_scheduler=sched, steps_per_epoch=len(loader),
                                amp_dtype=amp, logger=logger)
        print(f"epoch {epoch}: loss {stats.get('loss', float('nan')):.4f}")
        logger.log_json({"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}})
    logger.close()
    test_set = build_dataset(False, True, args)[0]
    return model, test_set, dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                 weight_decay=args.weight_decay,
                                 num_train_videos=len(train_set.samples))


@releases_output_dir
def main(args):
    t0 = time.time()
    try:
        resolve_args(args)
        du.init_distributed_mode(args)
        claim_output_dir(args.output_dir, None)
        digest = file_digest(args.finetune)
        encoder = build_encoder(args)
        np.random.seed(args.seed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    device = torch.device(args.device)
    pe = encoder.encoder.patch_embed  # a Hugging Face config brings its own geometry
    args.num_frames, args.input_size = pe.num_frames, pe.img_size
    head = dict(probe=args.probe, checkpoint=args.finetune or "random initialisation",
                checkpoint_sha256=digest, model=args.model, protocol=protocol(args),
                feature_dim=encoder.encoder.embed_dim)
    views = args.test_num_segment * args.test_num_crop
    try:
        if args.probe == "attentive":
            model, test_set, extra = attentive(args, encoder, device)
            summary = multiview_test(model, shard_loader(test_set, args.feature_batch_size,
                                                         args.num_workers), device,
                                     amp_dtype=torch.bfloat16 if args.amp == "bf16" else None,
                                     output_dir=args.output_dir, views_per_video=views,
                                     summary_file="probe_summary.json", extra={**head, **extra})
        else:
            merged, extra = knn_or_linear(args, encoder, device, digest)
            summary = summarize_views(merged, output_dir=args.output_dir if du.is_main_process()
                                      else "", views_per_video=views,
                                      summary_file="probe_summary.json", extra={**head, **extra})
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.probe} probe, {args.test_num_segment}x{args.test_num_crop} views of "
          f"{summary['num_videos']} test videos ({summary['num_views']} views): Top-1 "
          f"{summary['top1']:.2f} | Top-{summary['topk_used']} {summary['top5']:.2f} | mean "
          f"class accuracy {summary['mean_class_acc']:.2f} | {time.time() - t0:.1f}s"
          + (f"; written to {args.output_dir}" if args.output_dir else ""))
    du.shutdown()
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())
