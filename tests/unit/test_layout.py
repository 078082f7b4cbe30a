"""The tests' layout (tests/conftest.py): tests/unit needs no root, every test under tests/netns is a root
test because of where it lives - no file says so itself - and test modules have unique names (pytest
imports them by basename: no __init__.py files)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

from conftest import NETNS_TESTS, REPO, TESTS

UNIT_TESTS = TESTS / "unit"


def collected(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]  # 5: nothing selected
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_root_is_decided_by_the_directory():
    assert collected("-m", "root", str(UNIT_TESTS)) == []
    assert collected("-m", "not root", str(NETNS_TESTS)) == []
    assert collected("-m", "root", str(NETNS_TESTS))


def test_no_test_file_marks_root_itself():
    own = re.compile(r"pytest\.mark\.root|skipif\(\s*not IS_ROOT|os\.geteuid\(\)")
    found = [f"{path.relative_to(REPO)}:{n}" for path in sorted(TESTS.rglob("*.py")) if path.name != "conftest.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if own.search(line)]
    assert found == []


def test_every_test_module_is_in_unit_or_netns():
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []
    assert sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("test_*.py")
                  if p.parent not in (UNIT_TESTS, NETNS_TESTS)) == []


def test_test_module_names_are_unique():
    names = Counter(p.name for root in (TESTS, REPO / "integration") for p in root.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
