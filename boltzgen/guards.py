"""Guards around outputs and worker processes: one writer per output, writable locations checked
before any computing, workers that die with their parent.

- :func:`output_lock` takes an exclusive, advisory lock on an output (a file or a run
  directory). A second boltzgen process that wants to write the same output is refused at once
  with :class:`OutputLockedError`, instead of both running and mixing their results. The lock is
  an ``flock`` on a small lock file, so the kernel releases it when the holder dies, however it
  dies (no stale locks).
- :func:`check_writable` fails early, with a message that names the location, when an output
  cannot be written (read-only or missing directory, too little free space).
- :func:`die_with_parent` makes a worker process receive SIGTERM when the process that started it
  dies (Linux ``PR_SET_PDEATHSIG``), so killing a run never leaves workers writing behind it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import sys
import tempfile
from typing import Iterator, Optional

__all__ = [
    "OutputError",
    "OutputLockedError",
    "lock_path_for",
    "output_lock",
    "check_writable",
    "check_memory",
    "available_memory",
    "die_with_parent",
    "main_module_hidden",
    "map_in_processes",
]


class OutputError(OSError):
    """An output location that cannot be written (the message names it and the fix)."""


class OutputLockedError(OutputError):
    """Another process is writing the same output."""


def lock_path_for(path: str) -> str:
    """The lock file that guards ``path``: ``DIR/.boltzgen.lock`` for a run directory (an existing
    directory or a path without a file extension), ``.NAME.lock`` beside a file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path) or not os.path.splitext(path)[1]:
        return os.path.join(path, ".boltzgen.lock")
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock")


def _holder(lock_file: str) -> str:
    try:
        with open(lock_file) as handle:
            text = handle.read().strip()
    except OSError:
        return ""
    return f" (process {text})" if text else ""


@contextlib.contextmanager
def output_lock(path: str, what: str = "output") -> Iterator[str]:
    """Hold an exclusive lock on an output while the block runs.

    Parameters
    ----------
    path : str or path-like
        The output file or run directory (its directory is created if needed).
    what : str
        How the output is named in the error message ("run directory", "sample file", ...).

    Yields
    ------
    str
        The lock file's path.

    Raises
    ------
    OutputLockedError
        When another process holds the lock on the same output.
    OutputError
        When the lock file cannot be created (read-only location).
    """
    lock_file = lock_path_for(path)
    try:
        os.makedirs(os.path.dirname(lock_file), exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(
            exc.errno, f"cannot write the {what} {os.fspath(path)}: {exc.strerror}; choose a writable location"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLockedError(
                errno.EBUSY,
                f"the {what} {os.fspath(path)} is being written by another boltzgen "
                f"run{_holder(lock_file)}; wait for it to finish or choose another output",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(os.path.basename(a) for a in sys.argv[:2])}".encode())
        yield lock_file
    finally:
        os.close(fd)  # releases the lock; the small file stays (removing it would race a waiting writer)


def check_writable(path: str, need_bytes: Optional[int] = None, what: str = "output") -> None:
    """Fail early when an output cannot be written: before any computing starts.

    Parameters
    ----------
    path : str or path-like
        Output file or directory; the nearest existing ancestor directory is checked.
    need_bytes : int, optional
        Bytes the output will take; checked against the free space there.
    what : str
        How the output is named in the message.

    Raises
    ------
    OutputError
        Read-only location, an existing path that is a directory where a file is expected (or
        the other way round is left to the writer), or too little free space.
    """
    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    directory = probe if os.path.isdir(probe) else os.path.dirname(probe)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputError(errno.EACCES, f"cannot write the {what} {path}: it is read-only; choose another output")
    if not _can_create_in(directory):
        raise OutputError(
            errno.EACCES,
            f"cannot write the {what} {path}: the directory {directory} is not writable; choose another output",
        )
    if need_bytes:
        free = shutil.disk_usage(directory).free
        if free < need_bytes:
            raise OutputError(
                errno.ENOSPC,
                f"cannot write the {what} {path}: it needs about {need_bytes / 1e6:.1f} MB "
                f"and {directory} has {free / 1e6:.1f} MB free",
            )


def _can_create_in(directory: str) -> bool:
    """Whether a file can be created in ``directory``: tried, not inferred from the mode bits.

    ``os.access`` answers yes to root for any directory, also on read-only or pseudo file
    systems; creating (and removing) a hidden probe file is the only test that holds for every
    user and file system.
    """
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".boltzgen-probe-"):
            return True
    except OSError:
        return False


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None if unknown.

    Returns
    -------
    int or None
    """
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need_bytes: int, what: str, fix: str) -> None:
    """Refuse up front a job whose arrays will not fit in the available memory.

    Parameters
    ----------
    need_bytes : int
        An estimate of the job's peak memory (bytes).
    what : str
        The job, for the message (e.g. "4096 particles of 22 atoms").
    fix : str
        What to change, for the message (e.g. "a smaller -n").

    Raises
    ------
    ValueError
        When ``need_bytes`` exceeds the available memory.
    """
    free = available_memory()
    if free is not None and need_bytes > free:
        raise ValueError(
            f"{what} need about {need_bytes / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB are available; "
            f"use {fix}"
        )


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only).

    Call it first thing in a worker process. If the parent is already gone (it died between the
    fork and this call), the worker exits at once.

    Parameters
    ----------
    sig : int
        Signal to receive (default SIGTERM).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if parent == 1 or os.getppid() != parent:
        os._exit(1)


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start processes without re-running the user's ``__main__`` script in them.

    A child started with ``spawn`` normally imports the parent's main script again, so a script
    that uses boltzgen without an ``if __name__ == "__main__":`` guard would run again in every
    worker (and fail there). Workers whose code lives in an importable module (or is run by path)
    need nothing from ``__main__``, so it is replaced by an empty module while
    :meth:`multiprocessing.Process.start` records what the child should import: start the
    processes (submit the work to a new process pool) inside this context.

    Yields
    ------
    None
        While the context is open, ``sys.modules["__main__"]`` is an empty module.
    """
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def map_in_processes(fn, calls, processes: int) -> list:
    """``[fn(*args) for args in calls]`` in worker processes started with ``spawn`` that do not
    run the caller's script again.

    A :class:`~concurrent.futures.ProcessPoolExecutor` on ``spawn`` starts its workers as work is
    submitted, so every submit happens inside :func:`main_module_hidden`: a script that calls
    this needs no ``if __name__ == "__main__":`` guard.

    Parameters
    ----------
    fn : callable
        A function importable by the workers (defined at the top level of a module).
    calls : iterable of tuple
        The arguments of each call (picklable).
    processes : int
        Worker processes (at least 1).

    Returns
    -------
    list
        The results in the order of ``calls``; a call's exception is raised here.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=int(processes), mp_context=get_context("spawn")) as pool:
        with main_module_hidden():
            futures = [pool.submit(fn, *args) for args in calls]
        return [future.result() for future in futures]
