"""The Ray engine on a local Ray cluster that this module starts (2 CPUs): same verdicts as
the local engine, hard timeouts, resume rules, a killed driver (resume without duplicates or
losses), Ctrl-C, a killed worker (retry, then an error row). The tests that kill Ray
workers come last: new workers take seconds to start on a busy machine."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import test_vnncomp_tasks  # noqa: E402
from onnxverify.vnncomp import read_instances, read_result, replay_counterexample, run_instances  # noqa: E402
from test_vnncomp import bench, check_engine_resume, fake_suite, read_rows  # noqa: E402,F401
from test_vnncomp_tasks import fake_task, quick_task  # noqa: E402

TASKS = Path(test_vnncomp_tasks.__file__)


@pytest.fixture(scope="module")
def cluster():
    """A private Ray cluster for this module; the fake tasks travel by value, so the workers
    need not import the tests folder. Yields the address other drivers connect to."""
    if ray.is_initialized():
        pytest.skip("this process is already connected to Ray")
    ray.cloudpickle.register_pickle_by_value(test_vnncomp_tasks)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = tempfile.mkdtemp(prefix="ovray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             _temp_dir=tmp, configure_logging=False,
             _system_config={"kill_idle_workers_interval_ms": 0})  # keep warm workers across the tests' jobs
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(test_vnncomp_tasks)
        shutil.rmtree(tmp, ignore_errors=True)  # the session's logs and sockets


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def wait_gone(pids, seconds=10.0):
    t = time.monotonic()
    while time.monotonic() - t < seconds and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_same_verdicts_on_local_and_ray(bench, cluster):
    groups = lambda d: [(read_instances(bench / "instances.csv"), str(bench / d))]  # noqa: E731
    local = run_instances(groups("local"), timeout_cap=10, workers=2, progress=False)
    on_ray = run_instances(groups("ray"), timeout_cap=10, progress=False, engine="ray")
    verdicts = lambda res, d: {(r["onnx"], r["vnnlib"]): r["result"] for r in res[str(bench / d)]}  # noqa: E731
    assert verdicts(on_ray, "ray") == verdicts(local, "local") == {
        ("tiny.onnx", "sat.vnnlib"): "sat", ("tiny.onnx", "unsat.vnnlib"): "unsat", ("bad.onnx", "sat.vnnlib"): "error"}
    for inst in read_instances(bench / "instances.csv"):
        v, x, _ = read_result(bench / "ray" / "results" / inst.result_name())
        if v == "sat":  # the driver wrote the counterexample the worker found; it replays
            assert replay_counterexample(inst.onnx_path, inst.vnnlib_path, x)[0]
    rows = {r["onnx"]: r for r in read_rows(bench / "ray" / "results.csv")}
    assert str(bench / "bad.onnx") in rows["bad.onnx"]["reason"]  # the driver's path, not the node's cache
    log = [json.loads(x) for x in (bench / "ray" / "log.jsonl").read_text().splitlines()]
    assert {d["where"]["engine"] for d in log} == {"ray"}


def test_hard_timeouts_hold(tmp_path, cluster):
    csv_path = fake_suite(tmp_path, [("hang1.onnx", 1), ("hang2.onnx", 2), ("fine.onnx", 10)])
    t = time.monotonic()
    res = run_instances([(read_instances(csv_path), str(tmp_path / "out"))], grace=0.5, progress=False,
                        fn=fake_task, engine="ray")
    wall = time.monotonic() - t
    got = {r["onnx"]: r for r in res[str(tmp_path / "out")]}
    assert got["fine.onnx"]["result"] == "unknown"
    for name, limit in (("hang1.onnx", 1), ("hang2.onnx", 2)):
        assert got[name]["result"] == "timeout", got[name]
        assert limit <= float(got[name]["time"]) < limit + 0.5 + 3, got[name]  # killed at the limit + grace
    assert wall < 60  # the 60 s sleeps were cut short


def test_resume_rules_on_ray(tmp_path, cluster):
    check_engine_resume(tmp_path, engine="ray")


def _driver(out, csv_path, engine, address):
    """A driver in a process group of its own, running this checkout's code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TASKS.parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(TASKS), str(out), str(csv_path), engine, address or ""], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_killed_driver_resumes_without_duplicates_or_losses(tmp_path, cluster):
    """kill -9 of a driver mid-run: its job ends, so its tasks stop on the cluster (the
    hanging instance's process goes); a rerun keeps every finished row as it was and runs
    the rest: each instance exactly once."""
    names = [("pidhang0.onnx", 30)] + [(f"sleep8_{i:02d}.onnx", 30) for i in range(8)]
    csv_path = fake_suite(tmp_path, names)
    out = tmp_path / "out"
    p = _driver(out, csv_path, "ray", cluster)
    t = time.monotonic()
    while time.monotonic() - t < 120 and p.poll() is None:
        if (out / "results.csv").exists() and len(read_rows(out / "results.csv")) >= 3:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[0]
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    first = read_rows(out / "results.csv")
    assert 3 <= len(first) < len(names), "the driver was not killed mid-run"
    pids = [int(x) for x in (tmp_path / "pidhang.pids").read_text().split()]
    assert len(pids) == 1 and wait_gone(pids, 20) == []  # the dead driver's task did not run on
    lines = []
    res = run_instances([(read_instances(csv_path), str(out))], progress=False, fn=quick_task, engine="ray",
                        address=cluster, echo=lines.append)
    rows = read_rows(out / "results.csv")
    assert sorted(r["onnx"] for r in rows) == sorted(n for n, _ in names)  # every instance once
    assert [r for r in rows if r["onnx"] in {f["onnx"] for f in first}] == first  # finished rows kept as they were
    assert len(res[str(out)]) == len(names) and all(r["result"] == "unknown" for r in rows)
    assert lines == [f"{tmp_path.name}: resuming: {len(first)} row(s) reused, 0 redone, {len(names) - len(first)} new"]
    log = [json.loads(x)["onnx"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert sorted(log) == sorted(n for n, _ in names)
    assert len(list((out / "results").iterdir())) == len(names)


def test_ctrl_c_stops_the_tasks_on_the_cluster(tmp_path, cluster):
    """SIGINT to the driver (this process) while two instances run and one waits: the driver
    cancels them on the cluster, their verification processes go, no row is written."""
    import threading

    # timeouts far beyond the test: the run can only end through the interrupt, however slowly
    # the loaded machine starts the two tasks (the interrupt waits for both, up to 120 s)
    csv_path = fake_suite(tmp_path, [(f"pidhang{i}.onnx", 600) for i in range(3)])
    pid_file = tmp_path / "pidhang.pids"
    sent = []

    def interrupt():
        t = time.monotonic()
        while time.monotonic() - t < 120:
            if pid_file.exists() and len(pid_file.read_text().split()) >= 2:
                break
            time.sleep(0.05)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    # a process started in the background by a non-interactive shell inherits SIGINT ignored
    # (and then Python installs no KeyboardInterrupt handler): give it the terminal's default
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_instances([(read_instances(csv_path), str(tmp_path / "out"))], progress=False, fn=fake_task,
                          engine="ray")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - sent[0] < 30  # stopped soon after the interrupt, not at the instances' end
    pids = [int(x) for x in pid_file.read_text().split()]
    assert len(pids) == 2  # two instances ran (2 CPUs), one waited
    assert wait_gone(pids) == []
    assert read_rows(tmp_path / "out" / "results.csv") == []  # nothing finished, nothing written


def test_killed_worker_retries_then_error_row(tmp_path, cluster):
    names = [("killworker.onnx", 30)] + [(f"sleep3_{i}.onnx", 30) for i in range(5)]
    csv_path = fake_suite(tmp_path, names)
    res = run_instances([(read_instances(csv_path), str(tmp_path / "out"))], progress=False, fn=fake_task,
                        engine="ray")
    got = {r["onnx"]: r for r in res[str(tmp_path / "out")]}
    assert all(got[n]["result"] == "unknown" for n, _ in names[1:])  # the rest of the suite finished
    assert got["killworker.onnx"]["result"] == "error"
    reason = got["killworker.onnx"]["reason"]
    assert "Ray" in reason and "(on 2 attempts)" in reason, reason
    log = {json.loads(x)["onnx"]: json.loads(x) for x in (tmp_path / "out" / "log.jsonl").read_text().splitlines()}
    assert len(log["killworker.onnx"]["attempts"]) == 2 and len(log) == len(names)
    assert len(read_rows(tmp_path / "out" / "results.csv")) == len(names)
    pids = [int(p) for p in (tmp_path / "killworker.pids").read_text().split()]
    assert len(pids) == 2  # it ran twice
    assert wait_gone(pids) == []  # the orphaned verification processes took themselves down
