"""Run a training script so that a stop signal lands after a known optimizer update, for the
resume tests (tests/test_run_state.py, tests/test_slurm.py).

    STOP_AT_UPDATE=K python tests/pause_at_update.py SCRIPT.py [flags]
        the process sends itself SIGUSR1 just before update K's stop check (K counted from 1
        over this process's updates): it stops after update K;
    PAUSE_AT_UPDATE=K PAUSE_FILE=PATH python tests/pause_at_update.py SCRIPT.py [flags]
        rank 0 creates PATH after update K and waits there (at most PAUSE_SECONDS, default
        120) until a SIGUSR1 / SIGTERM has arrived, e.g. from ``scancel --signal=USR1`` or a
        time limit's ``--signal``; only in a job's first run (``SLURM_RESTART_COUNT`` unset
        or 0), so that a requeued job runs straight through.

A signal that arrives while Python is still importing torch is recorded and handed on, as
the scripts' own handler (``run_state.STOP``) would from their ``main`` on.
"""
import os
import runpy
import signal
import sys
import time

early = []
for _s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(_s, lambda signum, frame: early.append(signum))

import run_state  # noqa: E402  (after the early handlers)

_install = run_state.StopRequest.install


def install(self):
    _install(self)
    if early and self.signum is None:
        self.signum = early[-1]
    return self


run_state.StopRequest.install = install
_after_update = run_state.RunState.after_update
_count = [0]


def after_update(self, *a, **k):
    _count[0] += 1
    if os.environ.get("STOP_AT_UPDATE") and _count[0] == int(os.environ["STOP_AT_UPDATE"]):
        os.kill(os.getpid(), signal.SIGUSR1)
    first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
    if (os.environ.get("PAUSE_AT_UPDATE") and _count[0] == int(os.environ["PAUSE_AT_UPDATE"])
            and first_run and run_state.du.is_main_process()):
        open(os.environ["PAUSE_FILE"], "w").close()
        deadline = time.monotonic() + float(os.environ.get("PAUSE_SECONDS", "120"))
        while self.stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.05)
    return _after_update(self, *a, **k)


run_state.RunState.after_update = after_update
if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
