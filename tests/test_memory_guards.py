"""Jobs too big for memory are refused up front with a clear message (issue: hardening, case 6)."""

import pytest

from boltzgen.cli import main
from boltzgen.guards import available_memory, check_memory


def test_check_memory_names_the_job_and_the_fix():
    free = available_memory()
    assert free is None or free > 0
    check_memory(1, "one byte", "less")
    with pytest.raises(ValueError, match=r"10 particles need about .* GiB .* use a smaller -n"):
        check_memory(1 << 62, "10 particles", "a smaller -n")


@pytest.mark.parametrize("batch, message", [("0", "batch must be a whole number"), (str(10**12), "a smaller --batch")])
def test_bench_bridge_refuses_bad_batches(batch, message, capsys):
    assert main(["bench", "bridge", "--system", "aldp-vacuum", "--batch", batch, "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "bug" not in err


def test_sample_refuses_a_particle_count_that_cannot_fit(tmp_path, capsys, monkeypatch):
    data, run = str(tmp_path / "gmm.h5"), str(tmp_path / "run")
    assert main(["simulate", "gmm-two-modes", "-n", "64", "-o", data, "--no-progress"]) == 0
    config = tmp_path / "c.yaml"
    config.write_text("net: {kind: mlp, hidden: 8, n_layers: 1}\ntrain: {steps: 2, batch_size: 8}\n")
    assert main(["train", "--data", data, "-o", run, "--config", str(config), "--no-progress"]) == 0
    capsys.readouterr()
    import boltzgen.guards

    monkeypatch.setattr(boltzgen.guards, "available_memory", lambda: 1 << 30)  # a 1 GiB machine
    code = main(["sample", run, "-n", str(10**7), "-o", str(tmp_path / "s.h5"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "use a smaller -n" in err
    assert not (tmp_path / "s.h5").exists()
