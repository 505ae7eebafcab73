"""Fine-tuning and multi-view testing of a pre-trained video ViT (VideoMAE's
``run_class_finetuning.py``, the protocol of VideoMAE Sec. 4, MVD and MMKD Sec. 4.1).

    python run_class_finetuning.py --model vit_small_patch16_224 --data_set Kinetics-400 \
        --data_path lists/k400 --finetune mmkd_small_k400.pth --output_dir out/ \
        --batch_size 16 --epochs 150 --layer_decay 0.75 --dist_eval

The pre-trained encoder (a student, a teacher, a VideoMAE/MVD/MMKD pre-training or
fine-tuned checkpoint, or a Hugging Face one; loaded by ``weights.load_pretrained``, which
rebuilds the fixed position table for ``--num_frames`` / ``--input_size`` and resizes a learned
one) gets a new ``fc_norm`` and head; training uses layer-wise lr decay, Mixup/CutMix,
label smoothing, RandAugment, random erasing and repeated augmentation; every epoch is
validated on ``val.csv`` (one view per video) when it exists, and the run ends with the
multi-view test on ``test.csv`` (``--test_num_segment`` x ``--test_num_crop`` views per
video, probabilities averaged), written to ``predictions.csv`` and ``test_summary.json``.
``--eval`` runs only that test.

The same script trains and tests TPN's CNNs (``--model tpn_r50`` ...; ``modeling_tpn``):
ImageNet initialisation from a torchvision ResNet file (``--imagenet_init``), SGD with
Nesterov momentum (``--opt sgd``), the multi-step schedule (``--sched multistep``), the
auxiliary head's loss logged as ``loss_aux``, and the fully convolutional test
(``--fcn_test``: 3 crops of the whole ``--short_side_size`` square, ``--test_flip``).
``--enable_deepspeed`` (``--zero_stage`` 0-2) trains through a
DeepSpeed engine, which then saves DeepSpeed checkpoint directories (``<output_dir>/latest``,
``<output_dir>/checkpoint-<epoch>/``) that ``--eval``, ``--finetune`` and resuming read too.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import distributed as du
import eval_protocol
from checkpoint import CheckpointWriteError, latest_checkpoint
from datasets import DATA_SETS
from deepspeed_utils import (add_deepspeed_args, build_deepspeed_config, init_deepspeed,
                             input_dtype, require_deepspeed)
from engine_for_finetuning import (DeepSpeedStep, NonFiniteLossError, TorchStep, evaluate,
                                   multiview_test, train_one_epoch)
from flag_checks import check_flags
from logger import RunLogger
from model_factory import CLASSIFIER_MODELS, CNN_MODELS, create_classifier
from modeling_encoder import compile_blocks
from modeling_resnet3d import TSM_SHIFT_PLACES
from modeling_tpn import load_imagenet_init
from optim_factory import (add_optim_args, amp_setup, build_lr_scheduler, build_optimizer,
                           scale_lrs)
from pos_embed import add_pos_embed_arg
from run_dir import claim_output_dir, releases_output_dir
from run_state import ResumableSampler, RunState, resume_weights
from weights import load_pretrained


def get_args_parser():
    """VideoMAE's fine-tuning flags (defaults: its ViT-B Kinetics-400 recipe)."""
    p = argparse.ArgumentParser("Video ViT fine-tuning and multi-view test",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--batch_size", type=int, default=64, help="clips per process and step")
    a("--epochs", type=int, default=30)
    a("--update_freq", type=int, default=1, help="gradient accumulation steps")
    a("--save_ckpt_freq", type=int, default=100,
      help="save every this many epochs (and at the end)")
    # model
    a("--model", default="vit_base_patch16_224", choices=sorted(CLASSIFIER_MODELS) + CNN_MODELS)
    a("--finetune", default="", help="pre-trained checkpoint (student, teacher, VideoMAE/MVD/"
      "MMKD pre-training or fine-tuned; for the CNNs ours, decisionforce/TPN's or mmaction2's); "
      "empty = random initialisation")
    a("--imagenet_init", default="", help="CNNs: torchvision ImageNet ResNet weights (a "
      "resnet50/resnet101 .pth state dict) to initialise the backbone, inflated to 3-D; "
      "empty = random")
    a("--tsm_shift", default="residual", choices=sorted(TSM_SHIFT_PLACES),
      help="TSM backbones: residual = TSM's and mmaction2's shift (the shortcut sees the "
      "unshifted input), inplace = decisionforce/TPN's (each stage's projection shortcut sees "
      "the shifted input); a checkpoint's layout or recorded setting overrides this")
    a("--input_size", type=int, default=224, help="clip height = width in pixels")
    a("--num_frames", type=int, default=16)
    add_pos_embed_arg(p)
    a("--drop_path", type=float, default=0.1)
    a("--fc_drop_rate", type=float, default=None,
      help="dropout before the head (default: 0 for the ViTs, 0.5 for the CNNs)")
    a("--init_scale", type=float, default=0.001,
      help="the new head's truncated-normal (std 0.02) weights are multiplied by this (ViTs)")
    a("--use_checkpoint", action="store_true", help="activation checkpointing of the blocks")
    # optimisation (VideoMAE fine-tuning defaults)
    add_optim_args(p, lr=1e-3, min_lr=1e-6, warmup_epochs=5)
    a("--layer_decay", type=float, default=0.75, help="layer-wise lr decay (1 = none)")
    # augmentation and regularisation
    a("--smoothing", type=float, default=0.1, help="label smoothing")
    a("--mixup", type=float, default=0.8, help="mixup alpha (0 = off)")
    a("--cutmix", type=float, default=1.0, help="cutmix alpha (0 = off)")
    a("--cutmix_minmax", type=float, nargs=2, default=None, help="cutmix box ratio range")
    a("--mixup_prob", type=float, default=1.0)
    a("--mixup_switch_prob", type=float, default=0.5, help="chance of cutmix when both are on")
    a("--mixup_mode", default="batch", choices=["batch", "pair", "elem"])
    a("--aa", default="rand-m7-n4-mstd0.5-inc1", help="RandAugment ('none' = off)")
    a("--train_interpolation", default="bicubic")
    a("--reprob", type=float, default=0.25, help="random erasing probability")
    a("--remode", default="pixel")
    a("--recount", type=int, default=1)
    a("--num_sample", type=int, default=2, help="repeated augmentation: copies per clip")
    # data
    a("--data_set", default="Kinetics-400", choices=sorted(DATA_SETS))
    a("--nb_classes", type=int, default=None, help="default: the data set's")
    a("--data_path", required=True, help="directory with train.csv, val.csv, test.csv")
    a("--data_root", default="", help="prefix for relative video paths")
    a("--sampling_rate", type=int, default=4)
    a("--short_side_size", type=int, default=224, help="short side before the test crops")
    a("--test_num_segment", type=int, default=5, help="temporal test views")
    a("--test_num_crop", type=int, default=3, choices=[1, 3], help="spatial test views")
    a("--fcn_test", action=argparse.BooleanOptionalAction, default=False,
      help="CNNs: fully convolutional test, crops of the whole --short_side_size square "
           "instead of --input_size (TPN's 256 px test)")
    a("--test_flip", action=argparse.BooleanOptionalAction, default=False,
      help="average a horizontally flipped pass of every test view in")
    # run
    a("--dist_eval", action=argparse.BooleanOptionalAction, default=True,
      help="shard validation and test over the processes (exact, no padding)")
    a("--eval", action="store_true", help="only the multi-view test")
    du.add_run_args(p)
    add_deepspeed_args(p)
    return p


# ---------------------------------------------------------------------------------------------
# set-up
# ---------------------------------------------------------------------------------------------

def resolve_args(args, model):
    """Check the flags against the model and derive the run's values (token grid, effective
    batch, scaled lrs, mixup on/off). Raises ValueError naming the flag."""
    if args.short_side_size < args.input_size:
        raise ValueError(f"--short_side_size {args.short_side_size} is smaller than the "
                         f"--input_size {args.input_size} crops")
    cnn = model.is_fully_convolutional
    if args.fcn_test and not cnn:
        raise ValueError(f"--fcn_test needs a fully convolutional model ({', '.join(CNN_MODELS)}); "
                         f"the input size of {args.model} is fixed by its position table")
    if cnn:  # ViT-only settings: say so rather than silently train something else
        ignored = [f"--{k} {getattr(args, k)}" for k, off in (("layer_decay", 1.0),
                                                              ("drop_path", 0.0))
                   if getattr(args, k) != off]
        if ignored:
            print(f"note: {', '.join(ignored)} ignored: layer-wise lr decay and drop path are "
                  f"ViT settings, {args.model} is a CNN")
        args.layer_decay, args.drop_path = 1.0, 0.0
    args.token_grid = list(model.patch_embed.grid_size) if not cnn else None
    # as loaded: checkpoints record the table used (a CNN has none)
    args.pos_embed = model.pos_embed_type if not cnn else None
    args.tsm_shift = getattr(getattr(model, "backbone", None), "shift_place", None)  # TSM only
    scale_lrs(args)
    args.mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if args.mixup_active and not args.eval and args.batch_size * args.num_sample % 2:
        raise ValueError(f"Mixup/CutMix pairs clips: --batch_size {args.batch_size} x "
                         f"--num_sample {args.num_sample} must be even (or --mixup 0 --cutmix 0)")


def build_model(args):
    """The classifier of ``--model`` (identical on every process) with ``--finetune`` loaded."""
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = create_classifier(args.model, num_classes=args.nb_classes,
                              fc_drop_rate=args.fc_drop_rate, init_scale=args.init_scale,
                              img_size=args.input_size,
                              num_frames=args.num_frames, drop_path_rate=args.drop_path,
                              use_checkpoint=args.use_checkpoint, pos_embed=args.pos_embed,
                              tsm_shift=args.tsm_shift)
    if args.imagenet_init:
        if not model.is_fully_convolutional:  # a CNN: an ImageNet ResNet backbone
            raise ValueError(f"--imagenet_init initialises the CNNs ({', '.join(CNN_MODELS)}), "
                             f"not {args.model}; use --finetune")
        load_imagenet_init(model, args.imagenet_init)
        print(f"backbone initialised from the ImageNet weights {args.imagenet_init}")
    if args.finetune:  # encoder weights must all fit; fc_norm / head are new
        missing, unexpected = load_pretrained(model, args.finetune, args.finetune)
        if args.eval:  # a test of a head the file does not have scores chance
            eval_protocol.require_trained_head(missing, args.finetune, args.nb_classes)
        print(f"loaded {args.finetune}: new (missing) keys {missing or 'none'}; unused keys "
              f"{unexpected or 'none'}")
    return model


class ShardSampler(torch.utils.data.Sampler):
    """Items ``rank, rank + world, ...`` in order: every item on exactly one process, no
    padding (``DistributedSampler`` repeats items to even out the shards, which would count
    some videos twice in an evaluation)."""

    def __init__(self, num_items, rank=0, world_size=1):
        self.indices = range(rank, num_items, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_loader(args, mode):
    """``(dataset, loader, sampler)`` of ``mode`` in ``train``/``validation``/``test``, or
    ``(None, None, None)`` for a validation split without ``val.csv``."""
    from datasets import build_dataset
    from datasets.collate import collate_skip_none

    if mode == "validation" and not os.path.isfile(os.path.join(args.data_path, "val.csv")):
        return None, None, None
    dataset, _ = build_dataset(mode == "train", mode == "test", args)
    if mode == "train":  # the order from (seed, epoch) on one process too (set_epoch)
        sampler = ResumableSampler(dataset, du.get_world_size(), du.get_rank(), shuffle=True,
                                   seed=args.seed)
    elif args.distributed and args.dist_eval:
        sampler = ShardSampler(len(dataset), du.get_rank(), du.get_world_size())
    else:
        sampler = ShardSampler(len(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=args.pin_mem and torch.device(args.device).type == "cuda",
        drop_last=mode == "train", collate_fn=collate_skip_none,
        persistent_workers=args.num_workers > 0 and mode != "test",
        generator=torch.Generator().manual_seed(args.seed))  # not the global RNG's stream
    return dataset, loader, sampler


def build_training(args, model, steps_per_epoch):
    """Optimizer (timm, layer-wise lr decay; the CNNs decay every parameter, as their mmcv
    recipes), per-update schedule with warm-up, Mixup and the loss. Returns
    ``(optimizer, lr_scheduler, mixup_fn, criterion, warmup)``."""
    optimizer = build_optimizer(model, args, layer_decay=args.layer_decay,
                                filter_bias_and_bn=model.filter_bias_and_bn)
    lr_scheduler, warmup, _ = build_lr_scheduler(optimizer, args, steps_per_epoch)
    mixup_fn = None
    if args.mixup_active:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
                         cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
                         switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.nb_classes)
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    return optimizer, lr_scheduler, mixup_fn, criterion, warmup


def setup(args):
    """Everything before the first step; bad input fails here with one clear message.
    Returns ``(model, loaders)`` with ``loaders`` a dict of ``(dataset, loader, sampler)``."""
    check_flags(args)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is visible; use --device cpu")
    if args.enable_deepspeed:
        require_deepspeed()  # ImportError saying how to install it, before any data is read
    if args.resume and not os.path.exists(args.resume):
        raise FileNotFoundError(f"--resume checkpoint {args.resume!r} does not exist")
    du.init_distributed_mode(args)
    claim_output_dir(args.output_dir, args.log_dir)
    if args.nb_classes is None:
        args.nb_classes = DATA_SETS[args.data_set]["nb_classes"]
    model = build_model(args)
    resolve_args(args, model)
    modes = ("test",) if args.eval else ("train", "validation", "test")
    loaders = {mode: build_loader(args, mode) for mode in modes}
    seed = args.seed + du.get_rank()  # different augmentation on every rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    if not args.eval and len(loaders["train"][1]) < args.update_freq:
        raise ValueError(f"{args.data_path}: {len(loaders['train'][0])} training clips give "
                         f"{len(loaders['train'][1])} batches of --batch_size {args.batch_size} "
                         f"per process, fewer than --update_freq {args.update_freq}")
    return model, loaders


def run_test(args, model, loaders, device, **eval_kwargs):
    """The multi-view test on ``test.csv`` (``eval_kwargs``: ``amp_dtype`` / ``dtype`` of
    ``multiview_test``); prints and returns the summary."""
    dataset, loader, _ = loaders["test"]
    record = eval_protocol.test_record(args, dataset)  # what the result is comparable with
    print(eval_protocol.describe(record))
    t0 = time.time()
    summary = multiview_test(model, loader, device, **eval_kwargs, output_dir=args.output_dir,
                             views_per_video=args.test_num_segment * args.test_num_crop,
                             flip=args.test_flip, extra=record)
    print(f"multi-view test ({args.test_num_segment}x{args.test_num_crop} views"
          f"{', fully convolutional' if args.fcn_test else ''}"
          f"{', flip averaged in' if args.test_flip else ''}) of "
          f"{summary['num_videos']} videos, {summary['num_views']} views: Top-1 "
          f"{summary['top1']:.2f} | Top-{summary['topk_used']} {summary['top5']:.2f} | mean "
          f"class accuracy {summary['mean_class_acc']:.2f} | skipped {summary['skipped_views']} "
          f"views | {time.time() - t0:.1f}s")
    return summary


def _describe(args, model, optimizer, warmup, steps_per_epoch, mixup_fn):
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    schedule = (f"min {args.min_lr_scaled:.3e}" if args.sched == "cosine" else
                f"x{args.decay_rate} from epochs {args.decay_milestones}")
    print(f"{args.model}: {n_params / 1e6:.2f}M parameters, {args.nb_classes} classes, token "
          f"grid {args.token_grid}; effective batch {args.total_batch_size} = {args.batch_size} "
          f"x {args.world_size} processes x {args.update_freq} accumulation (x {args.num_sample} "
          f"repeated augmentation); lr {args.lr_scaled:.3e} ({schedule}, warm-up {warmup} "
          f"updates), layer decay {args.layer_decay}, "
          f"{len(optimizer.param_groups)} parameter groups; {steps_per_epoch} updates per "
          f"epoch; mixup {'on' if mixup_fn else 'off'}")


def train(args, model, loaders, device, amp_dtype, scaler):
    """The epoch loop: train, save every ``--save_ckpt_freq`` epochs and at the end, validate
    when there is a validation split, log. Returns the evaluation kwargs for the test
    (``amp_dtype``, or with DeepSpeed the engine's ``dtype``)."""
    train_set, train_loader, train_sampler = loaders["train"]
    steps_per_epoch = len(train_loader) // args.update_freq
    optimizer, lr_scheduler, mixup_fn, criterion, warmup = build_training(args, model,
                                                                          steps_per_epoch)
    _describe(args, model, optimizer, warmup, steps_per_epoch, mixup_fn)
    engine = None
    if args.enable_deepspeed:  # no DDP, no GradScaler: the engine does both
        ds_config = build_deepspeed_config(args.batch_size, args.update_freq, args.world_size,
                                           amp_dtype, args.zero_stage, args.clip_grad)
        engine, optimizer = init_deepspeed(model, optimizer, ds_config)
        step = DeepSpeedStep(engine, input_dtype(ds_config))
        print(f"DeepSpeed ZeRO-{args.zero_stage}, {step.dtype}")
    else:
        ddp = model
        if args.distributed:
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        step = TorchStep(ddp, optimizer, loss_scaler=scaler, amp_dtype=amp_dtype,
                         clip_grad=args.clip_grad, update_freq=args.update_freq)
    state = RunState(args, model, optimizer, train_sampler, steps_per_epoch, scaler=scaler,
                     engine=engine, device=device)
    try:
        resumed = state.resume()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    logger = RunLogger(args.output_dir, args.log_dir,
                       resume=state.log_position() if resumed else None)
    logger.write_args(args)
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        state.set_epoch(epoch)
        train_set.set_epoch(epoch, args.seed + du.get_rank())  # items from (seed, epoch, index)
        try:
            stats = train_one_epoch(step.model, criterion, train_loader, optimizer, device, epoch,
                                    lr_scheduler=lr_scheduler, steps_per_epoch=steps_per_epoch,
                                    mixup_fn=mixup_fn, update_freq=args.update_freq,
                                    logger=logger, step=step, run_state=state)
        except NonFiniteLossError as e:
            last = latest_checkpoint(args.output_dir)
            sys.exit(f"error: {e}. Last good checkpoint: {last or 'none written yet'}")
        aux = f" (aux {stats['loss_aux']:.4f})" if "loss_aux" in stats else ""
        print(f"epoch {epoch}: loss {stats.get('loss', float('nan')):.4f}{aux} | lr "
              f"{stats.get('lr', 0):.3e} | {stats.get('clips_per_s', 0):.2f} clips/s | skipped "
              f"{stats['skipped_videos']} corrupted videos")
        save_error = None
        try:
            state.end_epoch(epoch)
        except CheckpointWriteError as e:
            save_error = e  # stop after this epoch's log line
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in stats.items()}}
        if loaders["validation"][1] is not None:
            val = evaluate(model, loaders["validation"][1], device, **step.eval_kwargs,
                           distributed=args.distributed and args.dist_eval)
            print(f"epoch {epoch} validation of {val['num_videos']} videos: Top-1 "
                  f"{val['acc1']:.2f} | Top-5 {val['acc5']:.2f} | loss {val['loss']:.4f}")
            record.update({f"val_{k}": v for k, v in val.items()})
        logger.log_json(record)
        if save_error:
            sys.exit(f"error: {save_error}")
        state.stop_if_asked(epoch)
    logger.close()
    print(f"training time {time.time() - start:.1f}s")
    return step.eval_kwargs


@releases_output_dir
def main(args):
    try:
        model, loaders = setup(args)
        amp_dtype, scaler = amp_setup(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    device = torch.device(args.device)
    model.to(device)
    if args.compile:  # in place: checkpoints keep their keys
        print(f"torch.compile: {compile_blocks(model)} transformer blocks")
    eval_kwargs = dict(amp_dtype=amp_dtype)
    if args.eval:
        try:
            resumed = resume_weights(args, model)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        if not resumed and not args.finetune:
            print("warning: --eval without --finetune, --resume or a checkpoint in "
                  "--output_dir tests a randomly initialised model")
        RunLogger(args.output_dir).write_args(args)
    else:
        eval_kwargs = train(args, model, loaders, device, amp_dtype, scaler)
    run_test(args, model, loaders, device, **eval_kwargs)
    du.shutdown()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
