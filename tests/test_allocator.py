"""boltzgen.allocator: the tuned C allocator recycles a model pass's large temporaries instead of
faulting fresh pages in at every pass (counted by the kernel's minor page faults)."""

import os
import subprocess
import sys
import textwrap

import pytest

from boltzgen.allocator import untuned_environ

PASSES = textwrap.dedent(
    """
    import resource, torch
    from boltzgen.allocator import tune_malloc
    torch.set_num_threads(1)
    tuned = tune_malloc()
    def one_pass(k):  # a pass's temporaries: eight tensors of 4 MiB and a bit more every pass, then all freed
        tensors = [torch.empty(1024 * 1024 + 65536 * k).fill_(1.0) for _ in range(8)]
        return sum(float(t[0]) for t in tensors)
    one_pass(0)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for k in range(1, 11):
        one_pass(k)
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    """
)


def page_faults(**env) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", PASSES], env={**untuned_environ(), **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_allocator_recycles_large_temporaries_instead_of_faulting_them_in():
    tuned, faults = page_faults()
    untouched, default_faults = page_faults(BOLTZGEN_MALLOC="default")
    assert tuned and not untouched
    pages_per_pass = 8 * 4 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE")
    # glibc's own mmap threshold adapts upwards only to what was freed: each larger tensor is
    # mapped afresh and given back, so every pass faults its pages in
    assert default_faults > 8 * pages_per_pass
    assert faults < 3 * pages_per_pass  # tuned: the heap grows by the difference and is reused


def test_tune_malloc_leaves_the_users_own_settings_alone():
    tuned, _ = page_faults(MALLOC_TRIM_THRESHOLD_="131072")
    assert not tuned
