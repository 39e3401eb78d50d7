"""Settings of the C memory allocator (glibc's malloc) for long CPU runs.

PyTorch on the CPU allocates and frees its intermediate tensors at every pass of a network. For
a pair network such as the EGNN they are large: a (B, N, N, H) float32 tensor of 128 alanine
dipeptides is 16 MB. glibc serves an allocation above its *mmap threshold* with fresh pages from
the kernel and gives them back on free; below it, memory comes from the heap, whose top is given
back to the kernel whenever more than the *trim threshold* lies free there. The thresholds adapt
upwards as large blocks are freed, but both the first and the trimmed pages have to be faulted in
and zeroed again on the next pass. In a sampler that alternates model passes with OpenMM force
evaluations this churn never settles, and the kernel's page faults take a large share of the CPU
time (``benchmarks/allocator.py`` measures it on a trained model).

:func:`tune_malloc` fixes the mmap threshold at glibc's largest value (32 MiB on 64-bit
systems) and the trim threshold at 1 GiB, so tensors up to 32 MiB are recycled inside the process.
The cost is memory: the heap keeps its peak size until the process ends. The samplers' CPU chunks
(:func:`boltzgen.sampling.sde.cpu_eval_chunk`) keep their pair tensors below that threshold.

``boltzgen`` (the command) applies it at start, and its worker processes inherit it through the
environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, read by glibc when a process
starts). The Python API's long runs (SMC sampling, training) apply it too. Values the user set in
the environment win; ``BOLTZGEN_MALLOC=default`` leaves the allocator alone. On other C libraries
or systems it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "tune_malloc", "untuned_environ"]

#: glibc's largest allowed mmap threshold on 64-bit systems (4 · 1024 · 1024 · sizeof(long)).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the top of the heap kept by the process instead of being given back.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_BYTES, "MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD_BYTES}
_applied = False


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process and the processes it starts.

    Idempotent. Does nothing when ``BOLTZGEN_MALLOC=default`` is set, when the user set either
    ``MALLOC_*_THRESHOLD_`` variable, or off Linux/glibc.

    Returns
    -------
    bool
        True when this call or an earlier one set the thresholds (``mallopt``); False when the
        allocator was left alone.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("BOLTZGEN_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _ENV):
        return False  # the user's own settings, read by glibc at start, stay
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        return False
    for name, value in _ENV.items():  # for the worker processes this one starts
        os.environ[name] = str(value)
    _applied = True
    return True


def untuned_environ() -> dict:
    """This process's environment without the allocator settings (``MALLOC_*`` and
    ``BOLTZGEN_MALLOC``), for a child process that should start with glibc's own thresholds or
    choose its own (benchmarks and tests that compare the two).

    Returns
    -------
    dict
        A copy of ``os.environ`` without those variables.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "BOLTZGEN_MALLOC"}
