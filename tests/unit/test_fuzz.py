"""A short coverage-guided fuzzing run of the protocol layer and the lease store (tests/support/fuzz.py; the
long runs are in `make stress`). Any input giving code 100, a traceback, a changed store or a hang is
a finding: libFuzzer stops, and the input is shown here and saved as crash-* under the test's tmp_path.
No root needed: the store target works in tmp_path and the protocol target never reaches a kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import SUPPORT

pytest.importorskip("atheris")

FUZZ = SUPPORT / "fuzz.py"
SECONDS = 20  # per target: both together, start-up included, stay under a minute
SEED = 1  # the suite explores the same inputs on every run (a finding reproduces); `make stress` varies it


@pytest.mark.parametrize("target", ["protocol", "store"])
def test_fuzz(tmp_path, target):
    corpus = tmp_path / "corpus"
    env = dict(os.environ, PYCNI_FUZZ_WORK=str(tmp_path))
    proc = subprocess.run([sys.executable, str(FUZZ), target, f"-max_total_time={SECONDS}", f"-seed={SEED}", "-timeout=30",
                           "-print_final_stats=1", str(corpus)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=SECONDS + 120, check=False)
    findings = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(p.name for p in tmp_path.glob("timeout-*"))
    tail = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith(("#", "INFO: Instrumenting")))
    assert proc.returncode == 0 and not findings, f"{findings}\n{tail[-4000:]}"
    runs = [line for line in proc.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split()[-1]) > 100, tail[-2000:]  # it really ran
