"""The paper-scale harness (benchmarks/training_paper.py) end to end on a tiny schedule: train
(2 epochs on 512 MNIST images), resume-skip of a finished run, export + evaluation of the
exported ONNX file, the table as JSON, and the status of an unfinished run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MNIST.is_dir(), reason="../shared/data/mnist is absent")]

TINY = ["--runs", "dm-small:ibp:relu", "--epochs", "2", "--n-train", "512", "--eval-samples", "64",
        "--eval-pgd-steps", "2", "--n-test", "40", "--crown-n", "4", "--pgd-steps", "3", "--pgd-restarts", "1"]


def harness(root, *args):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "training.py"), "--paper", "--root", str(root), *TINY, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A root holding one run trained by the harness (2 epochs)."""
    root = tmp_path_factory.mktemp("paper") / "runs"
    harness(root, "--phase", "train")
    return root


def test_train_eval_table_and_resume_skip(trained, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(trained, root)
    run = root / "dm-small-ibp-relu-e2-n512"
    log = [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in log] == [1, 2]
    assert "already trained (2 epochs); skipping" in harness(root, "--phase", "train")

    harness(root, "--phase", "eval")
    assert (run / "dm-small-ibp-relu-e2-n512.onnx").is_file()
    card = json.loads((run / "dm-small-ibp-relu-e2-n512.card.json").read_text())
    assert card  # the model card is written next to the export

    table = tmp_path / "table.json"
    harness(root, "--phase", "table", "--json", str(table))
    (row,) = json.loads(table.read_text())
    assert row["epochs"] == 2 and row["activation"] == "relu"
    assert set(row["evaluation"]) == {"0.2", "0.3", "0.4"}
    for ev in row["evaluation"].values():
        assert ev["n"] == 40 and 0.0 <= ev["clean_err"] <= 1.0
        # an attack's error never exceeds what no verifier can prove, nor falls below clean error
        assert ev["clean_err"] <= ev["pgd_err"] <= ev["verified_err"]["ibp"]


def test_status_and_resume_of_an_unfinished_run(trained, tmp_path):
    """A run trained for 2 of 4 epochs (emulated: the 2-epoch run's folder copied to the
    4-epoch run's) reports 2/4, and the train phase continues it from its checkpoint."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copytree(trained / "dm-small-ibp-relu-e2-n512", root / "dm-small-ibp-relu-e4-n512")
    out = harness(root, "--phase", "status", "--epochs", "4")
    assert "dm-small-ibp-relu-e4-n512" in out and "2/4" in out
    out = harness(root, "--phase", "train", "--epochs", "4")
    assert "(resuming)" in out
    log = [json.loads(line) for line in (root / "dm-small-ibp-relu-e4-n512" / "train" / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in log] == [1, 2, 3, 4]
