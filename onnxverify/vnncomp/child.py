"""Run one task function in a killable child process (used inside Ray tasks).

A running Python function cannot be stopped reliably from another thread, but a process can
be killed. :func:`run_in_child` forks a child from a fork server that has already imported
the verifier (so starting a child costs milliseconds, not the seconds of importing numpy,
onnx and onnxruntime), the child makes itself the leader of a new process group
(``os.setsid``), and the parent kills that whole group with SIGKILL at the hard deadline.
The child also watches its parent: when the process that forked it goes away (a Ray worker
killed, a node going down), it kills its own group, so no verification outlives its task.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time

__all__ = ["run_in_child", "MAIN_VAR"]

MAIN_VAR = "ONNXVERIFY_FORKSERVER_MAIN"

_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        from multiprocessing import spawn

        # Each child would re-run the parent's main script (for a Ray worker: importing Ray,
        # seconds) unless the server already has it as __main__; the stdlib's "__main__"
        # preload misses it (its key is main_path, the data's init_main_from_path), so
        # .preload imports it from this variable.
        main_path = spawn.get_preparation_data("onnxverify").get("init_main_from_path")
        if main_path:
            os.environ[MAIN_VAR] = main_path
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["onnxverify.vnncomp.preload"])
        _CTX = ctx
    return _CTX


def _watch_parent(ppid: int, period: float = 0.25) -> None:
    def watch():
        while True:
            time.sleep(period)
            if os.getppid() != ppid:
                try:
                    os.killpg(0, signal.SIGKILL)
                finally:
                    os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _child_main(conn, fn_bytes: bytes, task: dict, mem_limit) -> None:
    ppid = os.getppid()
    try:
        os.setsid()
    except OSError:
        pass
    _watch_parent(ppid)
    if mem_limit:
        from .task import set_memory_limit

        set_memory_limit(mem_limit)
    try:
        fn = pickle.loads(fn_bytes)
        out = fn(task)
    except BaseException as e:
        out = {"result": "error", "time": 0.0, "message": f"{type(e).__name__}: {e}"}
    conn.send(out)
    conn.close()


def _kill_group(proc) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    proc.join(timeout=5)


def _reap(proc, grace: float = 10.0) -> None:
    proc.join(timeout=grace)
    if proc.is_alive():  # it sent its result but does not exit: no lingering processes
        _kill_group(proc)


def run_in_child(fn_bytes: bytes, task: dict, limit: float, mem_limit=None) -> dict:
    """Run ``pickle.loads(fn_bytes)(task)`` in a child process; kill its process group after
    ``limit`` seconds. Returns the function's outcome dict, or ``{"result": "timeout"}`` when
    killed at the limit, or ``{"fault": cause}`` when the child died on its own (a crash, a
    signal from outside: the caller decides whether to retry). ``time`` is always set."""
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child_conn, fn_bytes, task, mem_limit), daemon=True)
    proc.start()  # the first start also boots the fork server (imports the verifier)
    child_conn.close()
    t0 = time.monotonic()
    eof = False  # the child closed its end without a result: only its exit is left to see
    try:
        while True:
            left = t0 + limit - time.monotonic()
            waiting = [proc.sentinel] if eof else [parent_conn, proc.sentinel]
            ready = mp.connection.wait(waiting, timeout=max(0.0, left))
            if parent_conn in ready:
                try:
                    out = parent_conn.recv()
                except (EOFError, OSError):
                    out, eof = None, True
                if out is not None:  # the child exits by itself: reap it off the task's clock
                    threading.Thread(target=_reap, args=(proc,), daemon=True).start()
                    out.setdefault("time", time.monotonic() - t0)
                    return out
            if proc.sentinel in ready and (eof or not parent_conn.poll()):
                proc.join(timeout=5)
                code = proc.exitcode
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                return {"fault": f"verification process died ({how})", "time": time.monotonic() - t0}
            if time.monotonic() - t0 >= limit:
                _kill_group(proc)
                return {"result": "timeout", "time": time.monotonic() - t0, "message": "killed at the time limit"}
    except BaseException:  # interrupted (task cancelled): take the child down with us
        _kill_group(proc)
        raise
    finally:
        parent_conn.close()
