"""A long-lived worker process for the fuzz tests (tests/test_fuzz_*.py).

Each fuzz case runs one ``onnxverify`` command line in a spawned child process that has
imported the CLI once (so a case costs milliseconds, not an interpreter start), under an
address-space limit (a huge declared shape fails with MemoryError instead of swapping) and a
wall-clock limit per case enforced by the parent: a case that overruns is a hang, the worker
is killed and a fresh one started; a worker that dies (segfault, os._exit) is a crash.

The child runs the command with click's ``CliRunner`` in its main thread (the CLI's SIGALRM
deadline works there) and reports the exit code, stdout, stderr and whether an exception
escaped the command (what a user would see as a traceback).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Address-space limit of the worker (importing torch alone maps ~3.6 GB).
MEMORY_LIMIT = 8 * 2**30


@dataclass
class Outcome:
    """What one command line did. ``status``: ``ran`` (see ``code``), ``hang`` or ``crash``."""

    status: str
    code: int | None = None
    stdout: str = ""
    stderr: str = ""
    escaped: str = ""  # repr + traceback of an exception that escaped the command, else ""
    seconds: float = 0.0

    @property
    def error_lines(self) -> list:
        return [line for line in (self.stdout + "\n" + self.stderr).splitlines() if line.startswith("error:")]

    def describe(self) -> str:
        return (f"status {self.status}, exit {self.code}, {self.seconds:.2f} s\n--- stdout\n{self.stdout[-2000:]}"
                f"\n--- stderr\n{self.stderr[-2000:]}" + (f"\n--- escaped\n{self.escaped[-3000:]}" if self.escaped else ""))


def _serve(conn, cwd, memory_limit):
    """Child: run command lines received on ``conn`` until it closes."""
    try:
        import resource

        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    except (ImportError, ValueError, OSError):
        pass
    import sys

    sys.path.insert(0, ROOT)  # this checkout's onnxverify, whatever the cwd
    os.chdir(cwd)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from click.testing import CliRunner

    import onnxverify
    from onnxverify.cli import main

    conn.send(("ready", onnxverify.__file__))
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        t0 = time.monotonic()
        try:
            res = CliRunner().invoke(main, list(args), catch_exceptions=True)
            escaped = ""
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                escaped = repr(res.exception) + "\n" + "".join(traceback.format_exception(*res.exc_info))
            msg = (res.exit_code, res.stdout, res.stderr, escaped)
        except BaseException as e:  # the runner itself failed
            msg = (None, "", "", repr(e) + "\n" + traceback.format_exc())
        conn.send(msg + (time.monotonic() - t0,))


class Worker:
    """Parent side: ``run(args, limit)`` -> :class:`Outcome`; restarts the child after a hang
    or a crash. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, cwd, memory_limit=MEMORY_LIMIT, start_timeout=120.0):
        self.cwd, self.memory_limit, self.start_timeout = str(cwd), memory_limit, start_timeout
        self.proc = self.conn = None
        self.cases = self.restarts = 0

    def _start(self):
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.cwd, self.memory_limit), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        try:
            msg = parent.recv() if parent.poll(self.start_timeout) else None
        except EOFError:
            msg = None
        if not msg or msg[0] != "ready":
            self._kill()
            raise RuntimeError("the fuzz worker did not start")
        self.package = msg[1]  # where the worker's onnxverify comes from

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(10)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None
        self.restarts += 1
        STATS["restarts"] += 1

    def run(self, args, limit: float = 30.0) -> Outcome:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.cases += 1
        STATS["cases"] += 1
        t0 = time.monotonic()
        try:
            return self._run(args, limit, t0)
        finally:
            STATS["seconds"] += time.monotonic() - t0

    def _run(self, args, limit, t0):
        self.conn.send([str(a) for a in args])
        try:
            if not self.conn.poll(limit):
                self._kill()
                return Outcome("hang", seconds=time.monotonic() - t0)
            code, out, err, escaped, seconds = self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.exitcode if self.proc is not None else None
            self._kill()
            return Outcome("crash", code, seconds=time.monotonic() - t0)
        return Outcome("ran", code, out, err, escaped, seconds)

    def close(self):
        if self.proc is not None:
            if self.conn is not None:
                self.conn.close()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
            self.proc = self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Paths (under onnxverify/) that this fuzz suite's owner does not fix: an internal error
#: raised there is a finding for their owner, recorded with a minimal reproducer as a strict
#: xfail in tests/test_fuzz_regressions.py, and tolerated here only if listed in KNOWN.
FOREIGN = ("onnxverify/onnx/", "onnxverify/ops/", "onnxverify/bounds/", "onnxverify/ir.py")

#: Known internal errors in FOREIGN code: (exception type, file, function) of the innermost
#: onnxverify frame -> what is wrong; each has a strict-xfail reproducer in
#: tests/test_fuzz_regressions.py. All are malformed models that should give a ModelError.
KNOWN: dict = {
}


#: Known internal errors that the CLI reports without a traceback (``verify`` contains them
#: in an ``error`` verdict): a substring of the error line -> what is wrong.
KNOWN_MESSAGES: dict = {}

STATS = {"cases": 0, "restarts": 0, "seconds": 0.0}  # over every Worker of the session
FINDINGS: list = []  # (signature, args, description) of every tolerated known bug met


class Case:
    """A fuzz case with a short repr (hypothesis prints the repr of failing examples)."""

    def __init__(self, desc, **data):
        self.desc = desc
        self.__dict__.update(data)

    def __repr__(self):
        return f"Case({self.desc!r})"


def origin(tb_text: str):
    """``(exception type, file, function)`` of the innermost onnxverify frame of a traceback
    (CLI frames skipped), e.g. ``("ValueError", "onnxverify/onnx/importer.py", "_check_finite")``."""
    import re

    frames = [f for f in re.findall(r'File "([^"]*onnxverify/[^"]+)", line \d+, in (\S+)', tb_text)
              if "/cli/" not in f[0]]
    where, fn = (frames[-1][0][frames[-1][0].rindex("onnxverify/"):], frames[-1][1]) if frames else ("?", "?")
    last = [line for line in tb_text.strip().splitlines() if line and not line.startswith(" ")]
    exc = last[-1].split(":")[0].rsplit(".", 1)[-1] if last else "?"
    return exc, where, fn


def judge(worker: "Worker", args, out: Outcome, ok=None, limit: float = 60.0, what: str = "",
          answer_codes=(0,)) -> str:
    """The fuzz contract: one ``error:`` line, exit 2, no traceback, in time — or an exit code
    in ``answer_codes`` (default 0) and ``ok(out)`` (the answer is correct). Returns ``"ok"``, ``"error"`` or ``"known"`` (a
    listed bug in code owned elsewhere); raises AssertionError with the whole outcome."""
    head = f"{what}\nargs: {' '.join(map(str, args))}\n"
    assert out.status == "ran", head + out.describe()
    assert not out.escaped, head + out.describe()
    assert "Traceback" not in out.stdout + out.stderr, head + out.describe()
    if out.code in answer_codes and ok is not None:
        try:
            ok(out)
        except AssertionError as e:
            raise AssertionError(head + f"wrong answer: {e}\n" + out.describe()) from None
        return "ok"
    if out.code == 3 and len(out.error_lines) == 1 and "internal error" in out.error_lines[0]:
        for text in KNOWN_MESSAGES:
            if text in out.error_lines[0]:
                FINDINGS.append((text, list(map(str, args)), what))
                return "known"
        dbg = worker.run(["--debug"] + [str(a) for a in args], limit)
        sig = origin(dbg.escaped)
        if sig in KNOWN:
            FINDINGS.append((sig, list(map(str, args)), what))
            return "known"
        owner = "owned elsewhere: add a strict xfail reproducer + KNOWN entry" if sig[1].startswith(FOREIGN) else \
            "fix it"
        raise AssertionError(head + f"internal error at {sig} ({owner})\n" + out.describe()
                             + "\n--- traceback (--debug)\n" + dbg.escaped[-4000:])
    assert out.code == 2, head + out.describe()
    assert len(out.error_lines) == 1, head + out.describe()
    return "error"
