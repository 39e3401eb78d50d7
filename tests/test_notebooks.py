"""The notebooks under notebooks/: committed without outputs, and each runs top to bottom.

Each notebook is executed with nbclient in a fresh ``python3`` kernel at its small sizes
(``BOLTZGEN_NOTEBOOK_FAST=1``) with one thread, in a temporary working directory. The kernel is
pinned to the interpreter running the tests (a kernelspec written to a temporary JUPYTER_PATH),
so a user-level ``python3`` kernelspec of another environment cannot hijack the run; a last cell
checks that.
"""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = (
    sorted(name for name in os.listdir(NOTEBOOK_DIR) if name.endswith(".ipynb")) if os.path.isdir(NOTEBOOK_DIR) else []
)
#: Seconds any one cell may take in fast mode before the run counts as failed.
CELL_TIMEOUT = 300


def _tracked_notebooks() -> list:
    """Notebooks known to git (all notebooks on disk when this is not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    return sorted(os.path.basename(p) for p in out) or NOTEBOOKS


def test_there_are_notebooks():
    assert {
        "01_reweighting.ipynb",
        "02_diffclf_vs_dsm.ipynb",
        "03_aldp_boltzmann_generator.ipynb",
        "04_weighted_trajectories_mdtraj.ipynb",
    } <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", _tracked_notebooks())
def test_notebook_is_committed_without_outputs(name):
    with open(os.path.join(NOTEBOOK_DIR, name)) as handle:
        nb = json.load(handle)
    assert nb["nbformat"] == 4
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code, f"{name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"{name}: code cell {i} has outputs; strip them before committing"
        assert cell.get("execution_count") is None, f"{name}: code cell {i} has an execution count"
    assert "FAST" in "".join(code[0]["source"]) and "BOLTZGEN_NOTEBOOK_FAST" in "".join(code[0]["source"]), (
        f"{name}: the first code cell must set FAST from BOLTZGEN_NOTEBOOK_FAST"
    )
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3"


@pytest.fixture
def pinned_python3_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernelspec that runs this interpreter, first on JUPYTER_PATH; fast, one thread."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("BOLTZGEN_NOTEBOOK_FAST", "1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiets a debugpy warning of frozen modules
    work = tmp_path / "work"
    work.mkdir()
    return str(work)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, pinned_python3_kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    check = (
        "import os, sys, torch\n"
        "print('KERNEL', sys.prefix, torch.get_num_threads(), os.environ.get('BOLTZGEN_NOTEBOOK_FAST'), FAST)"
    )
    nb.cells.append(nbformat.v4.new_code_cell(check))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        resources={"metadata": {"path": pinned_python3_kernel}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    out = "".join(o.get("text", "") for o in nb.cells[-1]["outputs"] if o.get("output_type") == "stream")
    prefix, threads, env, fast = out.split("KERNEL", 1)[1].split()
    assert os.path.realpath(prefix) == os.path.realpath(sys.prefix), "the kernel ran another Python environment"
    assert (threads, env, fast) == ("1", "1", "True")
    # The working directory of the kernel is left clean: notebooks write into temporary directories.
    assert os.listdir(pinned_python3_kernel) == []
    print(f"{name}: {elapsed:.1f} s")
