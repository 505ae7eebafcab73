"""The output directory of a run: held by one run at a time, writable, and free of the
temporary files of runs that were killed while saving.

Two runs writing one ``--output_dir`` would interleave ``log.json`` and overwrite each other's
checkpoints, so a run takes a lock on ``<output_dir>/.run.lock`` before it builds anything
and keeps it until it ends. The lock is ``fcntl.flock``: the kernel drops it when the
process ends, however it ends, so a killed run leaves nothing stuck. Forked children
(data-loader workers) close their copy of the lock file at once, so they cannot keep the
lock alive after their parent died. (A POSIX ``lockf`` lock would not be inherited, but is
dropped when the process closes *any* descriptor of the file.) NFS supports these locks; a
file system that does not (Lustre mounted without ``flock``) gets a warning and no lock.
The lock file holds the holder's pid, host, start time and command, which a second run
prints when it refuses the directory.

Under DDP only rank 0 takes the lock and checks the directory; every rank gets its verdict.
"""
import errno
import fcntl
import functools
import os
import re
import shlex
import socket
import sys
import tempfile
import time

import distributed as du

LOCK_FILE = ".run.lock"
_TMP_FILE = re.compile(r".+\.tmp\.\d+")  # checkpoint.save_checkpoint's <path>.tmp.<pid>
_held = {}  # real path of an output directory -> its open lock file, in this process


def _not_writable(flag, path, e):
    return ValueError(f"{flag} {path} is not writable ({e.strerror or e}); give a directory "
                      f"this user can create files in")


def lock_output_dir(output_dir):
    """Create ``output_dir`` and take its lock for this process (a second call for the same
    directory returns the same lock).

    Returns:
        The open lock file, or None where the file system has no locks (a warning is printed).
    Raises:
        ValueError: one line: the directory cannot be created or written, or another live
            process holds it (its pid, host, start time and command).
    """
    path = os.path.realpath(output_dir)
    if path in _held:
        return _held[path]
    try:
        os.makedirs(path, exist_ok=True)
        f = open(os.path.join(path, LOCK_FILE), "a+")
    except OSError as e:
        raise _not_writable("--output_dir", output_dir, e) from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            f.close()
            print(f"warning: cannot lock --output_dir {output_dir} on this file system "
                  f"({e.strerror}); make sure no other run writes to it")
            return None
        f.seek(0)
        holder = f.read().strip() or "a process that is still starting"
        f.close()
        raise ValueError(f"--output_dir {output_dir} is in use by another run ({holder}); "
                         f"wait for it to end or give another --output_dir") from None
    command = shlex.join([os.path.basename(sys.executable), *sys.argv])
    f.truncate(0)
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command[:300]}\n")
    f.flush()
    _held[path] = f
    return f


def _forget_locks_in_child():
    """In a forked child: close the inherited lock files (the parent keeps its locks)."""
    for f in _held.values():
        f.close()
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def release_output_dir(output_dir):
    """Give up this process's lock on ``output_dir`` (nothing when it holds none)."""
    f = _held.pop(os.path.realpath(output_dir), None) if output_dir else None
    if f is not None:
        f.close()  # closing the file drops the lock


def remove_orphaned_tmp_files(output_dir):
    """Delete the ``*.tmp.<pid>`` files in ``output_dir``: unfinished checkpoint writes of
    runs that were killed (a live run would hold the directory's lock, which the caller
    holds). Returns their names."""
    names = sorted(n for n in os.listdir(output_dir) if _TMP_FILE.fullmatch(n)
                   and os.path.isfile(os.path.join(output_dir, n)))
    for name in names:
        os.remove(os.path.join(output_dir, name))
    return names


def _check_writable(flag, directory):
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise _not_writable(flag, directory, e) from None


def claim_output_dir(output_dir, log_dir=None):
    """Everything a run checks about the directories it writes, before it builds anything:
    rank 0 creates and locks ``output_dir`` (:func:`lock_output_dir`), checks that it and
    ``log_dir`` (tensorboard) are writable, and removes the temporary files of killed runs
    (only under the lock). Call on every rank after the process group is up.

    Raises:
        ValueError: on every rank, with rank 0's one-line reason.
    """
    error = None
    if du.is_main_process():
        try:
            if output_dir:
                _check_writable("--output_dir", output_dir)
                if lock_output_dir(output_dir) is not None:
                    removed = remove_orphaned_tmp_files(output_dir)
                    if removed:
                        print(f"removed {len(removed)} unfinished checkpoint file(s) of a run "
                              f"that was killed: {', '.join(removed)}")
            if log_dir:
                _check_writable("--log_dir", log_dir)
        except ValueError as e:
            error = str(e)
    error = du.broadcast_from_main(error)
    if error:
        raise ValueError(error)


def releases_output_dir(main):
    """Decorator of a script's ``main(args)``: a training run's stop signals are handled from
    the start (``run_state.STOP``), and the ``--output_dir`` lock is released and the signal
    handlers restored when ``main`` returns or exits, also in-process (tests, notebooks)."""
    @functools.wraps(main)
    def wrapper(args, *rest, **kwargs):
        from run_state import STOP  # lazily: run_state imports what imports this module
        if not getattr(args, "eval", False):  # training: a stop signal is handled, not fatal
            STOP.install()
        try:
            return main(args, *rest, **kwargs)
        finally:
            release_output_dir(getattr(args, "output_dir", ""))
            STOP.restore()
    return wrapper
