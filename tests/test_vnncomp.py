"""The VNN-COMP runner (workers, kills, resume), the `run` CLI, the scripts, and soundness
on a sample of the shared benchmark folder."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import BENCH, benchmark_instances, needs_bench
from onnxverify.cli import main
from onnxverify.vnncomp import (RESULT_FIELDS, read_instances, read_result, replay_counterexample, run_instances,
                                summarize, summary_table, write_result)
from test_verify import BOX, HEADER, tiny_net
from test_vnncomp_tasks import fake_task

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "vnncomp"


@pytest.fixture
def bench(tmp_path):
    """A tiny benchmark: sat, unsat, and a corrupt model."""
    tiny_net(tmp_path / "tiny.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    (tmp_path / "sat.vnnlib").write_text(HEADER + BOX + "(assert (>= Y_0 1.9))\n")
    (tmp_path / "unsat.vnnlib").write_text(HEADER + BOX + "(assert (>= Y_0 2.5))\n")
    (tmp_path / "instances.csv").write_text("tiny.onnx,sat.vnnlib,20\ntiny.onnx,unsat.vnnlib,20\nbad.onnx,sat.vnnlib,20\n")
    return tmp_path


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_read_instances_relative_paths_and_errors(bench, tmp_path):
    insts = read_instances(bench / "instances.csv")
    assert [i.onnx for i in insts] == ["tiny.onnx", "tiny.onnx", "bad.onnx"]
    assert insts[0].onnx_path == str(bench / "tiny.onnx") and insts[0].timeout == 20.0
    assert len({i.result_name() for i in insts}) == 3
    (tmp_path / "broken.csv").write_text("a.onnx,b.vnnlib\n")
    with pytest.raises(Exception, match="expected onnx,vnnlib,timeout"):
        read_instances(tmp_path / "broken.csv")


def test_runner_verdicts_error_row_and_resume(bench):
    out = bench / "out"
    res = run_instances([(read_instances(bench / "instances.csv"), str(out))], workers=2, progress=False)
    rows = read_rows(out / "results.csv")
    assert list(rows[0].keys()) == RESULT_FIELDS
    got = {(r["onnx"], r["vnnlib"]): r["result"] for r in rows}
    assert got == {("tiny.onnx", "sat.vnnlib"): "sat", ("tiny.onnx", "unsat.vnnlib"): "unsat",
                   ("bad.onnx", "sat.vnnlib"): "error"}
    assert len(res[str(out)]) == 3
    files = sorted((out / "results").iterdir())
    assert len(files) == 3
    verdicts = {read_result(f)[0] for f in files}
    assert verdicts == {"sat", "unsat", "error"}
    sat_file = next(f for f in files if read_result(f)[0] == "sat")
    ok, _ = replay_counterexample(bench / "tiny.onnx", bench / "sat.vnnlib", read_result(sat_file)[1])
    assert ok
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    # resume: a new instance runs, finished ones are not redone
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    with open(bench / "instances.csv", "a") as f:
        f.write("tiny.onnx,unsat.vnnlib,5\ntiny.onnx,sat.vnnlib,20\n")  # the duplicate is dropped
    (bench / "unsat2.vnnlib").write_text(HEADER + BOX + "(assert (>= Y_1 1.5))\n")
    with open(bench / "instances.csv", "a") as f:
        f.write("tiny.onnx,unsat2.vnnlib,20\n")
    res = run_instances([(read_instances(bench / "instances.csv"), str(out))], workers=1, progress=False)
    rows = read_rows(out / "results.csv")
    assert len(rows) == 4 and rows[-1]["vnnlib"] == "unsat2.vnnlib" and rows[-1]["result"] == "unsat"
    assert all(mtimes[f.name] == f.stat().st_mtime_ns for f in files)
    assert len(res[str(out)]) == 4


def test_runner_kills_hung_and_crashed_workers(tmp_path):
    for name in ("hang.onnx", "crash.onnx", "raise.onnx", "fine.onnx", "fine2.onnx"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "p.vnnlib").write_text("")
    (tmp_path / "instances.csv").write_text(
        "hang.onnx,p.vnnlib,1\ncrash.onnx,p.vnnlib,10\nraise.onnx,p.vnnlib,10\nfine.onnx,p.vnnlib,10\nfine2.onnx,p.vnnlib,10\n")
    t = time.monotonic()
    res = run_instances([(read_instances(tmp_path / "instances.csv"), str(tmp_path / "out"))], workers=2,
                        grace=0.5, progress=False, fn=fake_task)
    assert time.monotonic() - t < 30
    got = {r["onnx"]: r for r in res[str(tmp_path / "out")]}
    assert got["hang.onnx"]["result"] == "timeout" and float(got["hang.onnx"]["time"]) < 10
    assert got["crash.onnx"]["result"] == "error" and got["raise.onnx"]["result"] == "error"
    assert got["fine.onnx"]["result"] == "unknown" and got["fine2.onnx"]["result"] == "unknown"
    names = {f.name.split("_", 1)[1].split("__")[0]: read_result(f)[0] for f in (tmp_path / "out" / "results").iterdir()}
    assert names["hang"] == "timeout" and names["crash"] == "error"


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics")
def test_memory_blow_up_is_an_error_row(tmp_path):
    for name in ("oom.onnx", "fine.onnx"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "instances.csv").write_text("oom.onnx,p.vnnlib,20\nfine.onnx,p.vnnlib,20\n")
    res = run_instances([(read_instances(tmp_path / "instances.csv"), str(tmp_path / "out"))], workers=1,
                        progress=False, fn=fake_task, mem_limit=4 * 2**30)
    got = {r["onnx"]: r["result"] for r in res[str(tmp_path / "out")]}
    assert got == {"oom.onnx": "error", "fine.onnx": "unknown"}
    assert "MemoryError" in (tmp_path / "out" / "log.jsonl").read_text()


def test_timeout_cap_applies(bench):
    import json

    insts = read_instances(bench / "instances.csv")  # timeouts 20 s
    run_instances([(insts[:1], str(bench / "o"))], timeout_cap=3, progress=False, fn=fake_task)
    msgs = [json.loads(line)["message"] for line in (bench / "o" / "log.jsonl").read_text().splitlines()]
    assert msgs == ["timeout=3.0"]


def test_summary_table_counts():
    rows = [{"result": "sat", "time": "1"}, {"result": "unsat", "time": "2"}, {"result": "error", "time": "0.5"}]
    s = summarize(rows)
    assert (s["sat"], s["unsat"], s["unknown"], s["error"], s["total"], s["time"]) == (1, 1, 0, 1, 3, 3.5)
    table = summary_table({"a": rows, "b": rows[:1]})
    assert "benchmark" in table and table.splitlines()[-1].split()[0] == "all"


def test_cli_run(bench):
    r = CliRunner().invoke(main, ["run", str(bench / "instances.csv"), "--out", str(bench / "cli_out"),
                                  "--workers", "2", "--timeout-cap", "10", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "sat" in r.output.splitlines()[0] and "error" in r.output.splitlines()[0]
    assert len(read_rows(bench / "cli_out" / "results.csv")) == 3


@pytest.mark.parametrize("args", [["run", "nope.csv"], ["run", "{csv}", "--workers", "0"],
                                  ["run", "{csv}", "--timeout-cap", "-1"], ["run", "{csv}", "--methods", ","]])
def test_cli_run_one_line_errors(bench, args):
    args = [a.replace("{csv}", str(bench / "instances.csv")) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("onnxverify") is None,
                    reason="needs bash and the onnxverify command")
def test_competition_scripts(bench):
    onnx_, sat = str(bench / "tiny.onnx"), str(bench / "sat.vnnlib")
    p = subprocess.run(["bash", str(SCRIPTS / "prepare_instance.sh"), "v1", "tiny", onnx_, sat],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["bash", str(SCRIPTS / "prepare_instance.sh"), "v2", "tiny", onnx_, sat],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    p = subprocess.run(["bash", str(SCRIPTS / "prepare_instance.sh"), "v1", "tiny", str(bench / "bad.onnx"), sat],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    res = bench / "res.txt"
    p = subprocess.run(["bash", str(SCRIPTS / "run_instance.sh"), "v1", "tiny", onnx_, sat, str(res), "10"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    verdict, x, _ = read_result(res)
    assert verdict == "sat" and replay_counterexample(onnx_, sat, x)[0]
    p = subprocess.run(["bash", str(SCRIPTS / "run_instance.sh"), "v1", "tiny", str(bench / "bad.onnx"), sat, str(res),
                        "10"], capture_output=True, text=True, timeout=60)
    assert read_result(res)[0] == "error"


# ----------------------------------------------------------------------------- soundness on real benchmarks
def _soundness_sample(per_benchmark=2):
    """Per benchmark: one instance expected sat (if any) and one expected unsat."""
    by = {}
    for r in benchmark_instances():
        by.setdefault(r["benchmark"], []).append(r)
    chosen = []
    for name, rows in sorted(by.items()):
        for want in ("sat", "unsat")[:per_benchmark]:
            pick = [r for r in rows if r["expected"] == want]
            if pick:
                chosen.append(pick[len(pick) // 2])
    return chosen


@needs_bench
def test_soundness_on_benchmark_sample(tmp_path):
    from onnxverify.vnncomp import Instance

    sample = _soundness_sample()
    groups = {}
    for i, r in enumerate(sample):
        inst = Instance(r["onnx"], r["vnnlib"], float(r["timeout"]), str(BENCH / r["benchmark"]), r["benchmark"], i)
        groups.setdefault(r["benchmark"], []).append((inst, r))
    res = run_instances([([i for i, _ in v], str(tmp_path / b)) for b, v in groups.items()], timeout_cap=4,
                        workers=2, progress=False)
    n_sat = 0
    for b, v in groups.items():
        ours = {(row["onnx"], row["vnnlib"]): row["result"] for row in res[str(tmp_path / b)]}
        for inst, r in v:
            verdict = ours[inst.key]
            assert verdict != "error", (b, inst.key)
            assert not (verdict == "unsat" and r["expected"] == "sat"), (b, inst.key)
            if verdict == "sat":
                n_sat += 1
                v_, x, _ = read_result(tmp_path / b / "results" / inst.result_name())
                ok, _ = replay_counterexample(inst.onnx_path, inst.vnnlib_path, x)
                assert v_ == "sat" and ok, (b, inst.key)
    assert n_sat >= 5  # most expected-sat picks are found within 4 s


@needs_bench
def test_benchmark_script_on_a_small_subset(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "vnncomp.py"), "rl_benchmarks", "--sample", "3",
                        "--cap", "5", "--workers", "1", "--out", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "UNSOUND" in p.stdout and "rl_benchmarks" in p.stdout
    assert (tmp_path / "summary.json").exists() and (tmp_path / "summary.csv").exists()
