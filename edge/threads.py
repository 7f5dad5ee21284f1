"""Linux scheduling policy for the edge: let the engine finish its time slice.

On a small box the engine keeps every core busy while the stream's I/O
threads (pvAccess receive and send, the Python callback, the publisher) wake
for every frame. Under the normal policy each wake-up preempts an engine
thread at once; hundreds of preemptions a second cost the engine more than
the I/O itself (cache refills, a one-thread session's batch stalled
mid-layer). ``SCHED_BATCH`` keeps fair shares of the CPU but lets a woken
thread wait for the end of the running thread's slice (a few ms), so I/O is
done in runs of several frames. Measured with ``ptychoflow bench edge`` on
2 cores: 7-9 % more frames per second end to end, for a few ms of
latency. No privilege is needed to choose it; other systems keep their
default.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

POLICIES = ("batch", "normal")


def set_policy(policy: str) -> bool:
    """Apply ``policy`` to the calling thread (threads it starts later inherit it).

    Returns True when applied; False, with a log line, where the system has no
    such policy. Set it before starting threads and child processes.
    """
    if policy not in POLICIES:
        raise ValueError(f"scheduling policy {policy!r} unknown; use one of {POLICIES}")
    wanted = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
    try:
        os.sched_setscheduler(0, wanted, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or a locked-down container
        log.info("scheduling policy %s not applied: %s", policy, exc)
        return False
    return True


def level_realtime_threads(policy: str, pid: int | None = None) -> int:
    """Bring the real-time threads of process ``pid`` (None: this one) under ``policy``.

    Returns how many threads changed.

    EPICS libCom starts its threads (pvxs's network loops among them) with
    real-time priorities, ``SCHED_FIFO``, whenever the process may use them:
    as root or with an ``rtprio`` limit. Such a thread preempts the engine
    at once each time a frame comes in or goes out, so ``batch`` would not
    batch the stream's I/O at all. Call it once those threads exist (the
    edge does after starting its server and client; the benchmark does it for
    its source and client too). ``normal`` changes nothing: a system that
    grants real-time priorities keeps them.
    """
    if policy != "batch":
        return 0
    rt = {getattr(os, "SCHED_FIFO", -1), getattr(os, "SCHED_RR", -1)}
    changed = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid or 'self'}/task")]
    except OSError:  # not Linux
        return 0
    for tid in tids:
        try:
            if os.sched_getscheduler(tid) in rt:
                os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
                changed += 1
        except (AttributeError, OSError):  # the thread ended meanwhile
            continue
    return changed


def name_os_thread(name: str = "") -> None:
    """Show the calling thread as ``name`` (default: its Python name) in ``top -H`` and perf.

    Python leaves its threads named after the process, so an operator looking
    for the busy thread of a running edge sees a column of ``python``. Linux
    keeps the first 15 bytes; elsewhere nothing happens.
    """
    import ctypes
    import threading

    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, (name or threading.current_thread().name).encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


def current_policy() -> str:
    """The calling thread's policy: batch, normal, or another name."""
    try:
        p = os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return "unknown"
    return {getattr(os, "SCHED_BATCH", -1): "batch", os.SCHED_OTHER: "normal"}.get(p, str(p))
