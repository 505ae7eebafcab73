"""Range checks of the numeric command-line flags: one table for every training script, run
before anything is built, so that a value outside its range stops the run with one line
naming the flag and what is allowed (instead of a traceback from the data loader, a NaN loss
epochs later, or a silently changed setting).

The training scripts, ``extract_features.py``, ``run_vis.py`` and
``tools/convert_checkpoint.py`` all check their flags here. A flag joins by adding a row to
:data:`FLAG_RANGES`; a script checks the flags it has
(``check_flags(args)`` skips names the parser does not define, and values left at None,
which mean "not set" / "the default"). Checks that relate two flags or a flag and the model
(divisibility by the tubelet, ``--num_k`` against the visible tokens) stay in the scripts'
``resolve_args``.
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """Allowed values ``low <= v <= high`` (``<`` where ``*_open``); always finite."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def allows(self, value):
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self):
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(x):
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, high_open=True)  # a rate that must leave something: dropout, masking

# flag (argparse dest) -> allowed range; every script checks the rows it has
FLAG_RANGES = {
    # run length and batching
    "epochs": AT_LEAST_1, "batch_size": AT_LEAST_1, "update_freq": AT_LEAST_1,
    "save_ckpt_freq": AT_LEAST_1, "start_epoch": AT_LEAST_0, "num_workers": AT_LEAST_0,
    "save_latest_minutes": AT_LEAST_0,
    "seed": Range(0, 2 ** 32 - 1),  # numpy's seed range
    # clip geometry and sampling
    "num_frames": AT_LEAST_1, "input_size": AT_LEAST_1, "sampling_rate": AT_LEAST_1,
    "short_side_size": AT_LEAST_1, "num_sample": AT_LEAST_1, "test_num_segment": AT_LEAST_1,
    "num_segments": AT_LEAST_1, "nb_classes": AT_LEAST_1,
    # optimisation
    "lr": POSITIVE, "min_lr": AT_LEAST_0, "warmup_lr": AT_LEAST_0, "warmup_epochs": AT_LEAST_0,
    "warmup_steps": Range(-1), "weight_decay": AT_LEAST_0, "weight_decay_end": AT_LEAST_0,
    "clip_grad": POSITIVE, "opt_eps": POSITIVE, "opt_betas": FRACTION, "momentum": PROBABILITY,
    "layer_decay": Range(0, 1, low_open=True), "decay_milestones": AT_LEAST_1,
    "decay_rate": Range(0, 1, low_open=True),
    # regularisation and augmentation
    "drop_path": FRACTION, "fc_drop_rate": FRACTION, "smoothing": FRACTION,
    "mixup": AT_LEAST_0, "cutmix": AT_LEAST_0, "cutmix_minmax": PROBABILITY,
    "mixup_prob": PROBABILITY, "mixup_switch_prob": PROBABILITY, "reprob": PROBABILITY,
    "recount": AT_LEAST_1, "init_scale": AT_LEAST_0,
    # pre-training: masking, decoder, distillation
    "mask_ratio": FRACTION, "decoder_depth": AT_LEAST_0, "pixel_loss_weight": AT_LEAST_0,
    "num_k": AT_LEAST_1, "num_f": AT_LEAST_1, "kd_T": POSITIVE, "temperature_s": POSITIVE,
    "temperature_t": POSITIVE, "gamma": AT_LEAST_0, "alpha": AT_LEAST_0, "beta": AT_LEAST_0,
    "beta_kd1": AT_LEAST_0, "beta_kd2": AT_LEAST_0,
    # MVD: feature decoders and teachers
    "feat_decoder_depth": AT_LEAST_1, "feat_decoder_embed_dim": AT_LEAST_1,
    "feat_decoder_num_heads": AT_LEAST_1, "distillation_target_dim": AT_LEAST_1,
    "video_distillation_target_dim": AT_LEAST_1, "teacher_input_size": AT_LEAST_1,
    "video_teacher_input_size": AT_LEAST_1,
    "image_teacher_loss_weight": AT_LEAST_0, "video_teacher_loss_weight": AT_LEAST_0,
    # frozen evaluation: probes and the online k-NN
    "knn_eval_freq": AT_LEAST_0, "knn_k": AT_LEAST_1, "knn_temperature": POSITIVE,
    "train_num_segment": AT_LEAST_1, "feature_batch_size": AT_LEAST_1,
}


def flag_errors(args, ranges=None):
    """``["--flag must be <range>, got <value>", ...]`` for every flag of ``args`` outside its
    range in ``ranges`` (default :data:`FLAG_RANGES`); a list-valued flag (``nargs``) is
    checked value by value."""
    errors = []
    for name, allowed in (FLAG_RANGES if ranges is None else ranges).items():
        value = getattr(args, name, None)
        if value is None or isinstance(value, bool):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(allowed.allows(v) for v in values):
            shown = " ".join(str(v) for v in values)
            errors.append(f"--{name} must be {allowed}, got {shown}")
    return errors


def check_flags(args, ranges=None):
    """Raise ValueError (one line, every bad flag) when :func:`flag_errors` finds any."""
    errors = flag_errors(args, ranges)
    if errors:
        raise ValueError("; ".join(errors))
