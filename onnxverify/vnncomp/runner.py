"""Run VNN-COMP suites: on local worker processes or on a Ray cluster, resumably.

:func:`run_instances` plans each output folder (which rows are reused, which redone: see
:mod:`.records`), runs the rest on an engine (:mod:`.local`: long-lived worker processes on
this machine; :mod:`.ray_engine`: one Ray task per instance), and writes every finished
instance as it comes (:class:`~.sink.ResultSink`: the driver is the only writer).
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict

from .records import RESULT_FIELDS, plan_group, settings_row, version
from .results import VERDICTS
from .sink import Progress, ResultSink
from .task import default_memory_limit, verify_task

__all__ = ["ENGINES", "RESULT_FIELDS", "run_instances", "verify_task", "default_memory_limit"]

ENGINES = ("local", "ray")


def _echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_instances(groups, timeout_cap: float | None = None, workers: int | None = None, methods=None,
                  grace: float = 2.0, progress="auto", fn=None, mem_limit="auto", seed: int = 0, *,
                  engine: str = "local", address=None, cpus_per_instance: float = 1.0,
                  gpus_per_instance: float = 0.0, fresh: bool = False, redo=(), echo=_echo_stderr) -> dict:
    """Run suites of instances, resuming what earlier runs finished with the same settings.

    ``groups``: list of ``(instances, out_dir)``; each ``out_dir`` gets ``results.csv``
    (:data:`RESULT_FIELDS`: the verdict, its time and the settings that produced it),
    ``log.jsonl`` (one line per row: steps, attempts, where it ran) and ``results/`` (one
    result file per instance). A row is reused when its effective timeout (the instance's,
    capped by ``timeout_cap``), ``methods`` and onnxverify version match this run's and its
    verdict is not in ``redo``; ``fresh`` deletes earlier results first. ``echo`` gets the
    resume line of each folder. ``progress``: ``"auto"`` (a bar on a terminal, one line per
    instance otherwise), ``"bar"``, ``"lines"``, True (= auto) or False.

    ``engine="local"``: ``workers`` processes on this machine (default 1). ``engine="ray"``:
    one Ray task per instance with ``cpus_per_instance`` / ``gpus_per_instance`` (fractions
    allowed) on the cluster at ``address`` (None: Ray's default; ``"auto"``: the running
    cluster; ``"HOST:PORT"``); ``workers`` then caps the tasks in flight. ``fn`` (a task
    function like :func:`verify_task`; picklable by reference for local) replaces it in tests.

    Returns ``{out_dir: [row dicts]}`` in instance order (reused rows included).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    bad = [v for v in redo if v not in VERDICTS]
    if bad:
        raise ValueError(f"--redo takes verdicts ({', '.join(VERDICTS)}), got {', '.join(bad)}")
    fn = fn or verify_task
    n_local = max(1, int(workers or 1))
    if engine == "local" and mem_limit == "auto":
        mem_limit = default_memory_limit(n_local)
    ver = version()

    def effective(inst):
        return float(inst.timeout if timeout_cap is None else min(inst.timeout, timeout_cap))

    def settings_of(inst):
        return settings_row(effective(inst), timeout_cap, methods)

    tasks, rows_by_dir = [], {}
    for instances, out_dir in groups:
        plan = plan_group(instances, out_dir, settings_of, fresh=fresh, redo=redo)
        if plan.resumed and echo is not None:
            echo(plan.line(instances[0].benchmark if instances else out_dir))
        rows_by_dir[out_dir] = OrderedDict((inst.key, plan.rows.get(inst.key)) for inst in instances)
        for inst in plan.todo:
            tasks.append({"onnx": inst.onnx_path, "vnnlib": inst.vnnlib_path, "timeout": effective(inst),
                          "methods": methods, "seed": seed, "version": ver,
                          "max_memory": int(0.6 * mem_limit) if engine == "local" and mem_limit else None,
                          "result_path": os.path.join(out_dir, "results", inst.result_name()),
                          "_key": inst.key, "_dir": out_dir, "_bench": inst.benchmark,
                          "_settings": settings_of(inst)})
    mode = "auto" if progress is True else progress
    sink = ResultSink(rows_by_dir, Progress(len(tasks), mode) if mode else None)
    try:
        if not tasks:
            pass
        elif engine == "local":
            from .local import run_local

            run_local(tasks, sink, fn, workers=n_local, grace=grace, mem_limit=mem_limit)
        else:
            from .ray_engine import run_ray

            run_ray(tasks, sink, fn, address=address, cpus=cpus_per_instance, gpus=gpus_per_instance, grace=grace,
                    mem_limit=mem_limit, max_in_flight=workers)
    finally:
        sink.close()
    return {d: [r for r in rows.values() if r is not None] for d, rows in rows_by_dir.items()}
