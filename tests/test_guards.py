"""Output locks, early writability checks, workers that die with their parent, strict JSON."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from boltzgen.guards import OutputError, OutputLockedError, check_writable, lock_path_for, output_lock
from boltzgen.io import atomic_path, dumps_json, write_json, write_text

HOLD = textwrap.dedent("""
    import sys, time
    from boltzgen.guards import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_writer_is_refused_and_lock_dies_with_holder(tmp_path):
    out = tmp_path / "samples.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            OutputLockedError, match=r"samples.h5 is being written by another boltzgen run \(process \d+"
        ):
            with output_lock(out, "sample file"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out, "sample file") as lock:  # the kernel released the dead holder's lock
        assert lock == lock_path_for(out) == str(tmp_path / ".samples.h5.lock")


def test_run_directory_lock_lives_inside(tmp_path):
    run = tmp_path / "run"
    assert lock_path_for(run) == str(run / ".boltzgen.lock")
    with output_lock(run, "run directory"):
        with pytest.raises(OutputLockedError, match="run directory"):
            with output_lock(run, "run directory"):
                pass


def _unwritable_directory(tmp_path):
    """A directory this process cannot create files in, also as root (sysfs refuses everyone)."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return ro
    if os.path.isdir("/sys") and not os.path.exists("/sys/boltzgen-probe"):
        return "/sys"
    pytest.skip("no location that root cannot write")


def test_read_only_location_is_named(tmp_path):
    ro = _unwritable_directory(tmp_path)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable(os.path.join(ro, "x.h5"))
        with pytest.raises(OutputError, match="not writable"):
            check_writable(os.path.join(ro, "new-dir", "x.h5"))
    finally:
        if str(ro) != "/sys":
            os.chmod(ro, 0o700)


def test_free_space_and_missing_parents(tmp_path):
    check_writable(tmp_path / "a" / "b" / "x.h5")  # created later by the writer: fine
    with pytest.raises(OutputError, match="MB free"):
        check_writable(tmp_path / "x.h5", need_bytes=10**18)


def test_worker_dies_with_its_parent(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import multiprocessing as mp, time
        def work():
            from boltzgen.guards import die_with_parent
            die_with_parent()
            open({str(pidfile)!r}, "w").write(str(__import__("os").getpid()))
            time.sleep(60)
        if __name__ == "__main__":
            p = mp.get_context("spawn").Process(target=work)
            p.start()
            time.sleep(60)
    """)
    script = tmp_path / "parent.py"
    script.write_text(parent)
    proc = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    child = int(pidfile.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker outlived its parent")


def test_metrics_are_strict_json(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"error": float("inf"), "values": np.array([1.0, np.nan]), "n": np.int64(3)})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}")) == {
        "error": None,
        "values": [1.0, None],
        "n": 3,
    }
    assert json.loads(dumps_json([np.float32(2.5)])) == [2.5]


def test_text_is_written_whole_or_not_at_all(tmp_path):
    path = tmp_path / "new" / "table.md"
    write_text(path, "| a |\n")
    assert path.read_text() == "| a |\n"
    write_text(path, "| b |\n")
    assert path.read_text() == "| b |\n"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write("| half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "| b |\n"  # the old file stays
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.md"]  # no temporary left
