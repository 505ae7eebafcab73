"""The run state of every training script, saved and resumed in one place, and a clean stop on
a signal (SLURM preemption, a time limit's warning, ``scancel --signal``, ``kill``).

What a checkpoint holds (:meth:`RunState.save`): the model, the optimizer (re-matched by
parameter groups on load, ``optim_factory.load_optimizer_state``), the loss scaler, the
epoch and the number of micro-batches of it already done, every rank's RNG states
(``reproducibility.all_rng_states``) and every rank's running sums of the epoch's metrics.
The data need nothing more: an epoch's order comes from ``(seed, epoch)``
(:class:`ResumableSampler`) and each item from ``(seed, epoch, index)``, so a resumed run
starts its sampler at the first item not yet trained on and every later step's loss and the
final weights equal an uninterrupted run's bit for bit. DeepSpeed runs save through the
engine (its ZeRO partitions) with the same fields in its ``client_state``.

Files in ``--output_dir``: ``checkpoint-<epoch>.pth`` every ``--save_ckpt_freq`` epochs and at
the end (kept), and ``checkpoint-latest.pth``, replaced atomically at every epoch end, every
``--save_latest_minutes`` minutes and on a stop (a kept epoch's file is hard-linked to it, not
written twice). DeepSpeed: tag directories ``checkpoint-<epoch>/`` and ``checkpoint-latest/``,
its ``latest`` file naming the newest; DeepSpeed rewrites ``checkpoint-latest/`` in place, so
a kill during that write falls back to the newest kept tag.

Stopping (:class:`StopRequest`): SIGUSR1 or SIGTERM only sets a flag. After each optimizer
update the ranks agree on it (one small ``all_reduce`` per update, with rank 0's clock for the
timed saves), so every rank stops after the same update; rank 0 writes the checkpoint, and the
job asks SLURM to requeue it (``scontrol requeue $SLURM_JOB_ID``) or, outside SLURM, the
process exits with :data:`REQUEUE_EXIT` (75, ``EX_TEMPFAIL``: run the same command again to
resume). A kill without a signal (``kill -9``, a lost node) costs what was trained since the
last ``checkpoint-latest``: one epoch, or ``--save_latest_minutes``.
"""
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist

import distributed as du
from checkpoint import (CheckpointWriteError, checkpoint_candidates, first_loadable,
                        load_resume_checkpoint, save_checkpoint, unwrap_state_dict)
from logger import Averager
from modeling_tpn import adopt_tsm_shift
from optim_factory import load_optimizer_state
from reproducibility import all_rng_states, resume_rng_state
from weights import adopt_position_table, load_weights

REQUEUE_EXIT = 75  # EX_TEMPFAIL: stopped on a signal after saving; run again to resume
LATEST = "checkpoint-latest"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class ResumableSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (the order of an epoch from ``(seed, epoch)``, also on one
    process) that can start an epoch at its ``start``-th item, for a resume in the middle of
    an epoch; ``start`` goes back to 0 at the next :meth:`set_epoch`."""

    start = 0

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.start = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self):
        return super().__len__() - self.start


class StopRequest:
    """Set by SIGUSR1 / SIGTERM: the handler only records the signal, and training stops
    after the update in progress (:meth:`RunState.after_update`). :meth:`install` replaces
    this process's handlers (once; a second call keeps them) and :meth:`restore` puts the
    previous ones back. A script's ``main`` installs them before its set-up
    (``run_dir.releases_output_dir``), so a signal during data indexing is not lost, and
    they are restored when training ends (the final test is not deferred)."""

    def __init__(self):
        self.signum, self._previous = None, {}

    def _handle(self, signum, frame):
        self.signum = signum

    def install(self):
        if not self._previous:
            self.signum = None
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


STOP = StopRequest()  # this process's


def gather_objects(obj):
    """Every rank's ``obj`` (picklable), by rank; ``[obj]`` without a process group."""
    if not du.is_dist():
        return [obj]
    out = [None] * du.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _agree(flags, device):
    """Every rank's ``flags`` (a list of 0/1) OR-ed over ranks: one ``all_reduce``."""
    if not du.is_dist():
        return flags
    t = torch.tensor(flags, dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def requeue_or_exit(stopped_by):
    """The end of a run stopped on a signal after its checkpoint: under SLURM rank 0 asks
    for a requeue; every rank leaves the process group and exits with :data:`REQUEUE_EXIT`."""
    job, main = os.environ.get("SLURM_JOB_ID"), du.is_main_process()
    du.shutdown()
    if job and main:
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if res.returncode == 0:
            print(f"stopped by {stopped_by}: SLURM job {job} requeued; it resumes from "
                  f"{LATEST}", flush=True)
        else:
            print(f"stopped by {stopped_by}: scontrol requeue {job} failed "
                  f"({(res.stderr or res.stdout).strip()[:200]}); submit the job again to "
                  f"resume", flush=True)
    elif main:
        print(f"stopped by {stopped_by}: checkpoint saved; run the same command again to "
              f"resume (exit status {REQUEUE_EXIT})", flush=True)
    sys.exit(REQUEUE_EXIT)


class RunState:
    """Save and resume of one training run (the scripts' only path for both).

    Args:
        args: the run's flags (``output_dir``, ``resume``, ``auto_resume``, ``save_ckpt_freq``,
            ``save_latest_minutes``, ``epochs``, ``batch_size``, ``update_freq``); ``resume``
            sets ``args.start_epoch`` (and ``args.pos_embed`` / ``args.tsm_shift`` as the
            checkpoint had them).
        model: the bare model (not DDP-wrapped); optimizer: its optimizer.
        sampler: the training :class:`ResumableSampler`.
        steps_per_epoch: optimizer updates per epoch.
        scaler: ``torch.amp.GradScaler`` or None; engine: the DeepSpeed engine or None.
        device: for the per-update agreement.
        filter_fn: ``(checkpoint, model) -> state dict`` for the model (pre-training reads
            MVD's layout too); default: the checkpoint's state dict as saved.
    """

    def __init__(self, args, model, optimizer, sampler, steps_per_epoch, *, scaler=None,
                 engine=None, device="cpu", filter_fn=None):
        self.args, self.model, self.optimizer, self.sampler = args, model, optimizer, sampler
        self.steps_per_epoch, self.scaler, self.engine = steps_per_epoch, scaler, engine
        self.device, self.filter_fn = device, filter_fn
        self.start_batch, self.partial = 0, None
        self.interval = 60 * float(getattr(args, "save_latest_minutes", 0) or 0)
        self.last_save = time.monotonic()
        self.stop = STOP.install()

    # -- saving ---------------------------------------------------------------------------

    def _fields(self, epoch, batches_done, partial):
        """The fields beside the weights; ``epoch`` is the epoch in progress."""
        update = (epoch * self.steps_per_epoch + batches_done // self.args.update_freq
                  if batches_done else (epoch + 1) * self.steps_per_epoch)  # updates done
        return {"epoch": epoch - 1 if batches_done else epoch, "step": update,
                "resume_epoch": epoch if batches_done else epoch + 1,
                "resume_batch": batches_done, "world_size": du.get_world_size(),
                "batch_size": self.args.batch_size, "update_freq": self.args.update_freq,
                "partial_epoch": partial,
                "args": vars(self.args), "rng_states": all_rng_states()}

    def save(self, epoch, batches_done=0, partial=None):
        """Save the state after ``batches_done`` micro-batches of ``epoch`` (0: after the
        whole epoch, which then also writes the kept file when it is due). A collective.

        Raises:
            CheckpointWriteError: on every rank when rank 0 (or a DeepSpeed rank) could not
                write; the previous files are untouched.
        """
        if not self.args.output_dir:
            return
        fields = self._fields(epoch, batches_done, gather_objects(partial))
        kept = not batches_done and ((epoch + 1) % self.args.save_ckpt_freq == 0
                                     or epoch + 1 == self.args.epochs)
        error = None
        try:
            if self.engine is not None:
                self._save_deepspeed(fields, f"checkpoint-{epoch}" if kept else LATEST)
            elif du.is_main_process():
                self._save_file(fields, kept and os.path.join(self.args.output_dir,
                                                              f"checkpoint-{epoch}.pth"))
        except CheckpointWriteError as e:
            error = str(e)
        self.last_save = time.monotonic()
        ok = du.every_rank(error is None, self.device)
        if not ok:
            raise CheckpointWriteError(error or "another rank could not write its checkpoint")

    def _save_file(self, fields, kept_path):
        latest = os.path.join(self.args.output_dir, LATEST + ".pth")
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else None, **fields}
        if not kept_path:
            save_checkpoint(latest, state)
            return
        save_checkpoint(kept_path, state)
        tmp = f"{latest}.tmp.{os.getpid()}"
        try:  # the same bytes: a hard link where the file system has them, else a copy
            try:
                os.link(kept_path, tmp)
            except OSError:
                shutil.copyfile(kept_path, tmp)
            os.replace(tmp, latest)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise CheckpointWriteError.from_exception(latest, e) from None

    def _save_deepspeed(self, fields, tag):
        # every rank writes its ZeRO partition; 'latest' still names the previous tag until
        # the save is complete
        try:
            self.engine.save_checkpoint(self.args.output_dir, tag=tag, client_state=fields)
        except (OSError, RuntimeError) as e:
            raise CheckpointWriteError.from_exception(
                os.path.join(self.args.output_dir, tag), e) from None

    def end_epoch(self, epoch):
        """After epoch ``epoch``: ``checkpoint-latest`` and, when due, the kept file."""
        self.save(epoch)

    def after_update(self, epoch, i, avg, skipped, seen):
        """Called by the engines after each optimizer update (micro-batch ``i`` of ``epoch``
        done): the ranks agree whether a stop was asked or a timed save is due; then all save
        (``checkpoint-latest``) and, on a stop, leave (:func:`requeue_or_exit`)."""
        due = (self.interval > 0 and du.is_main_process()
               and time.monotonic() - self.last_save >= self.interval)
        stop, due = _agree([int(self.stop.signum is not None), int(due)], self.device)
        if not (stop or due):
            return
        partial = {"sum": dict(avg.sum), "count": dict(avg.count), "skipped": skipped,
                   "seen": seen}
        self.save(epoch, i + 1, partial)
        if stop:
            print(f"epoch {epoch}: stopping after update {i // self.args.update_freq + 1} of "
                  f"{self.steps_per_epoch}; saved {LATEST}", flush=True)
            requeue_or_exit(self._stopped_by())

    def epoch_start(self, epoch):
        """``(first micro-batch, Averager, skipped, seen)`` for ``epoch``: where a resumed
        epoch continues (the sampler already placed), else the start of the epoch."""
        avg, skipped, seen = Averager(), 0, 0
        start, partial = self.start_batch, self.partial
        self.start_batch, self.partial = 0, None
        if start and partial is not None:
            avg.sum.update(partial["sum"])
            avg.count.update(partial["count"])
            skipped, seen = partial["skipped"], partial["seen"]
        return start, avg, skipped, seen

    def set_epoch(self, epoch):
        """The sampler's order of ``epoch``, from its first item not yet trained on."""
        start = self.start_batch
        self.sampler.set_epoch(epoch)
        self.sampler.start = start * self.args.batch_size

    def stop_if_asked(self, epoch):
        """At the end of ``epoch``, after its log record: leave as :meth:`after_update` does
        when a stop was asked meanwhile (the epoch's checkpoint is already written). After
        the last epoch the signal handlers are restored."""
        stop, = _agree([int(self.stop.signum is not None)], self.device)
        if stop:
            requeue_or_exit(self._stopped_by())
        if epoch + 1 >= self.args.epochs:
            self.stop.restore()

    def _stopped_by(self):
        return signal.Signals(self.stop.signum).name if self.stop.signum else "another rank"

    # -- resuming -------------------------------------------------------------------------

    def resume(self):
        """Load ``--resume`` or (``--auto_resume``) the newest loadable checkpoint of
        ``--output_dir``; sets ``args.start_epoch`` and the position within that epoch.
        Returns the path, or None.

        Raises:
            ValueError, FileNotFoundError: one line (a key mismatch: one per kind) naming
                the checkpoint.
        """
        if self.engine is not None:
            path, ckpt = self._resume_deepspeed()
        else:
            path, ckpt = load_resume_checkpoint(self.args.resume, self.args.output_dir,
                                                self.args.auto_resume)
        if not path:
            return None
        if self.engine is None:
            load_model(self.args, self.model, ckpt, path, self.filter_fn)
            if ckpt.get("optimizer"):
                load_optimizer_state(self.optimizer, ckpt["optimizer"], path)
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        self.args.start_epoch = ckpt.get("resume_epoch", ckpt["epoch"] + 1)
        batch = ckpt.get("resume_batch", 0)
        same = ((ckpt.get("world_size"), ckpt.get("batch_size"), ckpt.get("update_freq"))
                == (du.get_world_size(), self.args.batch_size, self.args.update_freq))
        if batch and not same:
            print(f"warning: {path} was saved in the middle of epoch {self.args.start_epoch} "
                  f"by {ckpt.get('world_size')} processes of --batch_size "
                  f"{ckpt.get('batch_size')} x --update_freq {ckpt.get('update_freq')}; this "
                  f"run differs and restarts that epoch from its start")
            batch = 0
        if batch:
            self.start_batch = batch
            self.partial = (ckpt.get("partial_epoch") or [None] * du.get_world_size())[
                du.get_rank()]
        restored = resume_rng_state(ckpt.get("rng_states"), du.get_rank())
        where = (f"epoch {self.args.start_epoch} after {batch // self.args.update_freq} of "
                 f"{self.steps_per_epoch} updates" if batch else f"epoch {ckpt['epoch']} done")
        print(f"resumed from {path}: {where}, global step {ckpt.get('step', '?')}"
              + ("" if restored else "; no RNG state in it: drop path draws a new stream"))
        return path

    def _resume_deepspeed(self):
        """DeepSpeed's resume (weights, ZeRO optimizer partitions, loss scale) of the tag
        directories of ``--resume`` or ``--output_dir``; ``(path, client_state)``."""
        args, engine = self.args, self.engine
        if args.resume:
            tags = checkpoint_candidates(args.resume) or [args.resume]
        else:
            tags = [p for p in checkpoint_candidates(args.output_dir if args.auto_resume else "")
                    if os.path.isdir(p)]
        if not tags:
            return None, None

        def load(path):
            load_dir, tag = os.path.split(os.path.normpath(path))
            try:
                loaded, client = engine.load_checkpoint(load_dir, tag=tag)
            except (RuntimeError, KeyError, AssertionError) as e:  # DeepSpeed's own checks
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(f"cannot resume from {path}: {first[:500]}") from None
            if loaded is None or "epoch" not in (client or {}):
                raise ValueError(f"cannot resume from {path}: not a DeepSpeed checkpoint of "
                                 f"this script")
            return client

        path, client = first_loadable(tags, load)
        # a TSM CNN: the shift the run was trained with, from its recorded arguments
        args.tsm_shift = adopt_tsm_shift(engine.module, {"args": client.get("args")}, path,
                                         layout="ours")
        return path, client

    def log_position(self):
        """``(epoch, global update)`` a resumed run continues at, for ``RunLogger(resume=)``:
        log records and tensorboard events from there on are the redone ones'."""
        return (self.args.start_epoch,
                self.args.start_epoch * self.steps_per_epoch
                + self.start_batch // self.args.update_freq)


def load_model(args, model, ckpt, path, filter_fn=None):
    """The weights of checkpoint ``ckpt`` (read from ``path``) into ``model``, with the
    position table (a ViT) and TSM shift (a TSM CNN) it was trained with recorded in ``args``.

    Raises:
        weights.KeyMismatchError: one line per kind of mismatch (wrong shape, missing,
            unexpected), naming ``path``.
    """
    if hasattr(model, "pos_embed_type"):  # a ViT: the table it was trained with
        args.pos_embed = adopt_position_table(model, ckpt, path)
    if hasattr(args, "tsm_shift"):
        args.tsm_shift = adopt_tsm_shift(model, ckpt, path)
    state = filter_fn(ckpt, model) if filter_fn else unwrap_state_dict(ckpt)
    load_weights(model, state, path)


def resume_weights(args, model):
    """``--eval``: the weights only, of ``--resume`` or (``--auto_resume``) the newest
    loadable checkpoint of ``--output_dir``. Returns the path or None.

    Raises:
        ValueError, FileNotFoundError: one line per problem, naming the checkpoint.
    """
    path, ckpt = load_resume_checkpoint(args.resume, args.output_dir, args.auto_resume)
    if path:
        load_model(args, model, ckpt, path)
        print(f"resumed from {path} (epoch {ckpt.get('epoch', '?')} done)")
    return path
