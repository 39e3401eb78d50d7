"""ruff (lint and format) passes on the repository, with the configuration in pyproject.toml."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args):
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module", autouse=True)
def ruff_installed():
    # ruff is in the test extra (setup.cfg), so CI has it; say how to get it rather than erroring.
    if _ruff("--version").returncode != 0:
        pytest.fail('ruff is not installed: pip install ".[test]"')


def test_ruff_check():
    result = _ruff("check", "--no-fix", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr
