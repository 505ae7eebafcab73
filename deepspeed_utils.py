"""DeepSpeed for fine-tuning (VideoMAE's ``--enable_deepspeed``): the flags, the DeepSpeed
config built from them, the engine set-up, and reading DeepSpeed checkpoints through
``checkpoint.py``.

DeepSpeed is optional: nothing here imports it until an engine is asked for, and then a
missing installation is one clear ``ImportError`` saying ``pip install deepspeed``.

Use in a training script (``run_class_finetuning.py``)::

    add_deepspeed_args(parser)
    ...
    if args.enable_deepspeed:
        require_deepspeed()                          # early, in set-up: fail before data loading
        config = build_deepspeed_config(args.batch_size, args.update_freq, args.world_size,
                                        amp_dtype, args.zero_stage, args.clip_grad)
        engine, optimizer = init_deepspeed(model, optimizer, config)
    # per batch: x = x.to(input_dtype(config)); loss = criterion(engine(x), y)
    #            engine.backward(loss); engine.step()   (accumulation, clipping, loss scale inside)
    # save:      engine.save_checkpoint(output_dir, tag=f"checkpoint-{epoch}",
    #                                   client_state={"epoch": epoch, "args": vars(args)})
    # weights:   weights.load_pretrained(model, output_dir, ...) or load_deepspeed_weights()
"""
import os
import socket

import torch
import torch.distributed as dist

from checkpoint import load_checkpoint, unwrap_state_dict

INSTALL_HINT = ("--enable_deepspeed needs DeepSpeed, which is not installed here: "
                "pip install deepspeed (or run without --enable_deepspeed)")
ZERO_STAGES = (0, 1, 2)  # ZeRO-3 would need partitioned model construction: not implemented


def require_deepspeed():
    """The ``deepspeed`` module. Raises ImportError with :data:`INSTALL_HINT` without it."""
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return deepspeed


def add_deepspeed_args(parser):
    """``--enable_deepspeed`` and ``--zero_stage`` (precision comes from the script's own
    ``--amp``, passed to :func:`build_deepspeed_config` as a dtype)."""
    g = parser.add_argument_group("DeepSpeed")
    g.add_argument("--enable_deepspeed", action="store_true",
                   help="train through a DeepSpeed engine (pip install deepspeed)")
    g.add_argument("--zero_stage", type=int, default=0, choices=ZERO_STAGES,
                   help="ZeRO optimizer-state (1) and gradient (2) partitioning")
    return parser


def build_deepspeed_config(batch_size, update_freq=1, world_size=1, amp_dtype=None,
                           zero_stage=0, clip_grad=None, initial_scale_power=16):
    """The DeepSpeed config dict for our flags.

    Args:
        batch_size: clips per process and micro-step (``--batch_size``).
        update_freq: micro-steps per update (``--update_freq``).
        world_size: processes.
        amp_dtype: ``torch.float16`` (DeepSpeed fp16 with dynamic loss scaling, starting at
            ``2 ** initial_scale_power``), ``torch.bfloat16`` or None (fp32). In fp16/bf16 the
            engine holds the model in that dtype: cast inputs with :func:`input_dtype`.
        zero_stage: 0, 1 or 2.
        clip_grad: max gradient norm (``--clip_grad``); None = no clipping.
    Returns:
        dict for ``deepspeed.initialize(config=...)``. The optimizer and lr schedule stay
        ours (timm, layer decay), passed to the engine as objects.
    Raises:
        ValueError: a ZeRO stage or dtype that is not supported.
    """
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"--zero_stage {zero_stage}: supported stages are {ZERO_STAGES}")
    if amp_dtype not in (None, torch.float16, torch.bfloat16):
        raise ValueError(f"DeepSpeed precision {amp_dtype}: use float16, bfloat16 or None (fp32)")
    return {
        "train_batch_size": batch_size * update_freq * world_size,
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": update_freq,
        "gradient_clipping": float(clip_grad) if clip_grad else 0.0,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # our timm optimizer, not a DeepSpeed one
        "fp16": {"enabled": amp_dtype == torch.float16, "loss_scale": 0,
                 "initial_scale_power": initial_scale_power, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": amp_dtype == torch.bfloat16},
        "steps_per_print": 10 ** 9,  # our logger prints
        "wall_clock_breakdown": False,
    }


def input_dtype(config):
    """The dtype the engine's model expects its inputs in, for a config of
    :func:`build_deepspeed_config`."""
    if config["fp16"]["enabled"]:
        return torch.float16
    return torch.bfloat16 if config["bf16"]["enabled"] else torch.float32


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_deepspeed(model, optimizer, config):
    """Wrap ``model`` and ``optimizer`` in a DeepSpeed engine.

    Uses the process group of ``distributed.init_distributed_mode`` when one is running; a
    single-process run gets a one-process group (gloo on CPU, NCCL on CUDA; ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` set in the environment if absent).

    The engine reads checkpoints (``engine.load_checkpoint``) only through :func:`safe_load`.

    Returns:
        ``(engine, optimizer)``: call ``engine(x)``, ``engine.backward(loss)``,
        ``engine.step()``; the returned optimizer's ``param_groups`` are the ones our lr
        scheduler updates.
    Raises:
        ImportError: DeepSpeed is not installed (:data:`INSTALL_HINT`).
    """
    ds = require_deepspeed()
    if not dist.is_initialized():
        for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=str(_free_port())).items():
            os.environ.setdefault(key, value)
    backend = "nccl" if next(model.parameters()).is_cuda else "gloo"
    ds.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    engine, optimizer, _, _ = ds.initialize(model=model, optimizer=optimizer, config=config)
    engine.checkpoint_engine.load = safe_load  # DeepSpeed would unpickle with weights_only=False
    return engine, optimizer


def deepspeed_safe_globals():
    """The DeepSpeed classes its ZeRO optimizer-state files hold besides tensors (an enum, a
    dataclass of two ints, the loss-scaler records), which safe loading may rebuild: none of
    them runs code when unpickled."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [DynamicLossScaler, LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path, map_location=None):
    """DeepSpeed's checkpoint-engine ``load``, through ``checkpoint.load_checkpoint``
    (``torch.load(weights_only=True)``, on the CPU; DeepSpeed moves what it loads to the
    device) with :func:`deepspeed_safe_globals` allowed: a DeepSpeed checkpoint never runs code.

    Raises:
        ValueError: one line naming the file that safe loading refuses or cannot read.
    """
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return load_checkpoint(path)


def load_deepspeed_weights(path):
    """The model weights of a DeepSpeed checkpoint (``save_dir``, a tag directory or its
    ``mp_rank_00_model_states.pt``), read with ``weights_only=True`` through
    ``checkpoint.load_checkpoint``; the ``module`` entry, as a state dict.

    Raises:
        FileNotFoundError: no DeepSpeed model-states file at ``path``.
        ValueError: ZeRO-3 partitioned weights (convert with DeepSpeed's ``zero_to_fp32.py``
            first), or an unreadable file.
    """
    ckpt = load_checkpoint(path)
    state = unwrap_state_dict(ckpt)
    ds_config = ckpt.get("ds_config") if isinstance(ckpt, dict) else None
    stage = (ds_config or {}).get("zero_optimization", {}).get("stage", 0)
    if stage == 3 or any(v.numel() == 0 for v in state.values()):
        raise ValueError(f"{path} holds ZeRO-3 partitioned weights; run DeepSpeed's "
                         f"zero_to_fp32.py on the checkpoint directory first")
    return state
