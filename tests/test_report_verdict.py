"""The head of the ``boltzgen analyze`` report: the answer, then a verdict in plain words.

:func:`boltzgen.report.report_verdict` is tested on hand-made summaries (each check alone, all
together, the clean case); one analyze run checks that ``index.html`` leads with the answer and
the verdict before any figure and labels its tables in words; a headless browser, when one is on
PATH, renders the page.
"""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import mdtraj
import numpy as np
import pytest

from boltzgen.io import save_samples
from boltzgen.report import ENERGY_W2_MAX_KT, ESS_MIN, TRUSTED, analyze, report_verdict

PDB = os.path.join(os.path.dirname(__file__), os.pardir, "systems", "aldp.pdb")
TWO = ["phi<0", "phi>0"]


def _clean(**changes) -> dict:
    """A summary that passes every check (two states, a reference close in energy), changed."""
    summary = {
        "n": 1000,
        "ess": 400.0,
        "ess_fraction": 0.4,
        "states": {"name": "phi(ALA2)", "names": list(TWO)},
        "state_counts": [700, 300],
        "state_free_energies_kT": [0.0, 0.85],
        "state_free_energies_err_kT": [0.0, 0.12],
        "delta_f_kT": 0.85,
        "delta_f_err_kT": 0.12,
        "bootstrap_block_size": 1,
        "reference": "/data/md.h5",
        "energy_w2": 0.6,
        "mean_reduced_energy": -20.0,
        "reference_mean_reduced_energy": -20.4,
    }
    summary.update(changes)
    return summary


# ---------------------------------------------------------------------------- the pure function
def test_clean_summary_can_be_trusted():
    assert report_verdict(_clean()) == [TRUSTED]
    assert TRUSTED == "These numbers can be trusted."


def test_toy_summary_without_states_or_reference_can_be_trusted():
    assert report_verdict({"n": 80, "ess": 60.0, "ess_fraction": 0.75}) == [TRUSTED]


def test_low_ess_alone():
    verdict = report_verdict(_clean(ess=4.2))
    assert len(verdict) == 1
    assert "the weights rest on 4.2 effective samples" in verdict[0].lower()
    assert report_verdict(_clean(ess=ESS_MIN)) == [TRUSTED]  # "under 10" is strict


@pytest.mark.parametrize(
    "changes",
    [
        {"delta_f_err_kT": None, "state_free_energies_err_kT": [0.0, None]},  # inf in metrics.json is null
        {"delta_f_err_kT": float("inf"), "state_free_energies_err_kT": [0.0, float("inf")]},
        {"bootstrap_block_size": 600},  # 1000 frames: one block
        {"bootstrap_runs": 1},
        {"bootstrap_runs": 2, "bootstrap_lineages": 1},  # two runs, but all the weight on one lineage
    ],
    ids=["missing", "infinite", "one-block", "one-run", "one-lineage"],
)
def test_error_bar_from_fewer_than_two_blocks_or_runs_alone(changes):
    verdict = report_verdict(_clean(**changes))
    assert len(verdict) == 1, verdict
    assert "error bar" in verdict[0]
    assert verdict[0] != TRUSTED


def test_error_bar_of_two_blocks_or_runs_is_fine():
    assert report_verdict(_clean(bootstrap_block_size=500)) == [TRUSTED]
    assert report_verdict(_clean(bootstrap_runs=2)) == [TRUSTED]
    # one run's lineages are the clusters of its bootstrap: one run with many lineages is fine
    assert report_verdict(_clean(bootstrap_runs=1, bootstrap_lineages=30)) == [TRUSTED]


def test_error_bar_check_of_several_states_names_the_free_energy():
    names = ["a", "b", "c"]
    summary = _clean(
        states={"names": names},
        state_counts=[10, 20, 30],
        state_free_energies_kT=[0.0, 1.0, 2.0],
        state_free_energies_err_kT=[0.0, 0.1, None],
    )
    for key in ("delta_f_kT", "delta_f_err_kT"):
        del summary[key]
    verdict = report_verdict(summary)
    assert len(verdict) == 1 and "F(c) - F(a)" in verdict[0] and "F(b)" not in verdict[0]


def test_state_without_samples_alone():
    verdict = report_verdict(
        _clean(
            state_counts=[1000, 0],
            state_free_energies_kT=[0.0, None],
            state_free_energies_err_kT=[0.0, None],
            delta_f_kT=None,
            delta_f_err_kT=None,
        )
    )
    assert verdict == ["State phi>0 is empty: no sample falls in it."]


def test_state_without_weight_alone():
    verdict = report_verdict(
        _clean(state_free_energies_kT=[0.0, None], state_free_energies_err_kT=[0.0, None], delta_f_kT=None)
    )
    assert len(verdict) == 1 and verdict[0].startswith("State phi>0 is empty") and "300 samples" in verdict[0]
    # state 0 without weight: every free energy is undefined (the report's metrics have None)
    verdict = report_verdict(_clean(state_free_energies_kT=None, state_free_energies_err_kT=None, delta_f_kT=None))
    assert len(verdict) == 1 and verdict[0].startswith("State phi<0 is empty")


def test_each_empty_state_gets_a_sentence():
    names = ["a", "b", "c", "d"]
    summary = {
        "n": 100,
        "ess": 50.0,
        "states": {"names": names},
        "state_counts": [60, 0, 40, 0],
        "state_free_energies_kT": [0.0, None, 0.4, None],
        "state_free_energies_err_kT": [0.0, None, 0.2, None],
        "bootstrap_block_size": 1,
    }
    assert report_verdict(summary) == [
        "State b is empty: no sample falls in it.",
        "State d is empty: no sample falls in it.",
    ]


def test_far_from_the_reference_alone():
    verdict = report_verdict(_clean(energy_w2=ENERGY_W2_MAX_KT + 1.0))
    assert len(verdict) == 1 and "far from the reference" in verdict[0] and "Wasserstein-2" in verdict[0]
    assert report_verdict(_clean(energy_w2=ENERGY_W2_MAX_KT)) == [TRUSTED]
    # a floor close to the distance says why: too few independent draws to tell
    few = report_verdict(_clean(energy_w2=3.0, energy_w2_floor=2.5, energy_w2_floor_n=12.0))
    assert len(few) == 1 and "12 (ESS)" in few[0] and "2.5 kT" in few[0]
    assert (
        "independent draws" not in report_verdict(_clean(energy_w2=3.0, energy_w2_floor=0.2, energy_w2_floor_n=900))[0]
    )
    # the lineages' floor, when there is one, is the one that explains
    lin = _clean(
        energy_w2=3.0, energy_w2_floor=0.2, energy_w2_floor_n=900, energy_w2_floor_lineages=2.8, lineage_ess=6.6
    )
    assert "7 (lineages)" in report_verdict(lin)[0] and "2.8 kT" in report_verdict(lin)[0]
    # without W2 the mean energies are compared
    summary = _clean(mean_reduced_energy=-10.0)
    del summary["energy_w2"]
    verdict = report_verdict(summary)
    assert len(verdict) == 1 and "mean reduced energies differ by 10.4 kT" in verdict[0]


def test_no_reference_skips_the_reference_check():
    summary = _clean()
    for key in ("reference", "energy_w2", "reference_mean_reduced_energy"):
        del summary[key]
    assert report_verdict(summary) == [TRUSTED]


def test_all_checks_fail_together_in_order():
    verdict = report_verdict(
        _clean(
            ess=3.0,
            bootstrap_block_size=900,
            state_counts=[1000, 0],
            state_free_energies_kT=[0.0, None],
            state_free_energies_err_kT=[0.0, None],
            delta_f_kT=None,
            delta_f_err_kT=None,
            energy_w2=7.5,
        )
    )
    # ΔF is undefined (empty state), so its error bar is not judged on its own
    assert [v.split(" ")[1] for v in verdict] == ["weights", "phi>0", "samples"]
    verdict = report_verdict(_clean(ess=3.0, delta_f_err_kT=None, state_counts=[1000, 0], energy_w2=7.5))
    assert len(verdict) == 4 and TRUSTED not in verdict
    assert "effective samples" in verdict[0] and "error bar" in verdict[1]
    assert "phi>0 is empty" in verdict[2] and "far from the reference" in verdict[3]


# ---------------------------------------------------------------------------- the page
class _Page(HTMLParser):
    """Visible text, the position of the first <img> or <figure>, the img sources."""

    def __init__(self):
        super().__init__()
        self.text, self.first_figure, self.images = [], None, []

    def handle_starttag(self, tag, attrs):
        if tag in ("img", "figure") and self.first_figure is None:
            self.first_figure = len(self.text)
        if tag == "img":
            self.images.append(dict(attrs).get("src"))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """analyze of 40 weighted aldp frames (10 with φ > 0) against a 50-frame reference."""
    tmp = tmp_path_factory.mktemp("report")
    aldp = mdtraj.load(PDB)
    rng = np.random.default_rng(5)

    def frames(n, mirrored):
        x = aldp.xyz[0].astype(np.float64)[None] + 0.01 * rng.standard_normal((n, aldp.n_atoms, 3))
        x[n - mirrored :] *= -1.0
        return x

    samples, reference = str(tmp / "samples.h5"), str(tmp / "reference.h5")
    save_samples(
        samples,
        frames(40, 10),
        topology=aldp.topology,
        log_weights=0.3 * rng.standard_normal(40),
        reduced_energy=rng.normal(-20.0, 3.0, 40),
        metadata={"system": "aldp-vacuum"},
    )
    save_samples(reference, frames(50, 10), topology=aldp.topology, reduced_energy=rng.normal(-20.0, 3.0, 50))
    out = tmp / "out"
    smc = {"ess": [1.0, 0.6, 0.8], "n_ancestors": 17, "lineage_ess": 6.5, "lineage_ess_states": {"phi>0": 2.25}}
    metrics = analyze(samples, str(out), reference, smc_metrics=smc)
    return metrics, out


def test_page_leads_with_the_answer_and_the_verdict(report):
    metrics, out = report
    raw = (out / "index.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(raw)
    assert page.first_figure is not None and page.images
    head = " ".join(page.text[: page.first_figure])
    # the answer: ΔF with its error in kT, the ESS (number and fraction), the ancestors
    match = re.search(r"ΔF = F\(phi>0\) − F\(phi<0\) = (-?\d+\.\d\d) ± (\d+\.\d\d) kT", head)
    assert match, head[:400]
    assert float(match.group(1)) == pytest.approx(metrics["delta_f_kT"], abs=0.006)
    assert float(match.group(2)) == pytest.approx(metrics["delta_f_err_kT"], abs=0.006)
    assert f"Effective sample size: {metrics['ess']:.1f} of 40 samples ({100 * metrics['ess_fraction']:.1f} %)" in head
    assert "Distinct ancestors (SMC): 17" in head and metrics["n_ancestors"] == 17
    assert "Effective lineages: 6.5 (phi>0 2.2)" in head and metrics["lineage_ess"] == 6.5
    # the verdict: the sentences of report_verdict, after the answer and before any figure
    verdict = report_verdict(metrics)
    assert head.index("Answer") < head.index("Verdict")
    for sentence in verdict:
        assert sentence in head
    assert raw.index('id="verdict"') < raw.index("<img")


def test_page_labels_metrics_in_words_and_keeps_names_for_metrics_json(report):
    metrics, out = report
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    text = "\n".join(page.text)
    for label in (
        "Effective sample size",
        "Free-energy difference (kT)",
        "Energy Wasserstein-2 distance to the reference (kT)",
    ):
        assert label in text, label
    for name in ("ess_fraction", "delta_f_kT", "energy_w2", "n_zero_weight", "phi_positive_n", "torsion_w2"):
        assert name not in text, name  # only in metrics.json (and the rows' data-metric attributes)
    assert "energy_w2" in metrics and "ess_fraction" in metrics


def _browser():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_browser() is None, reason="no chromium or chromium-browser on PATH")
def test_page_renders_in_a_headless_browser(report, tmp_path):
    _, out = report
    url = (out / "index.html").resolve().as_uri()
    common = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="verdict"' in dom.stdout and 'id="answer"' in dom.stdout
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', dom.stdout)
    assert sources
    for src in sources:
        data = (out / src).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000, src
    shot = tmp_path / "page.png"
    run = subprocess.run(
        common + [f"--screenshot={shot}", "--window-size=1200,2000", url], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000


def test_report_shows_the_training_runs_model_diagnostics(tmp_path):
    """A run directory's held-out diagnostics (E - u spread, model dF error) appear in words."""
    import json

    aldp = mdtraj.load(PDB)
    rng = np.random.default_rng(6)
    x = aldp.xyz[0].astype(np.float64)[None] + 0.01 * rng.standard_normal((20, aldp.n_atoms, 3))
    samples = str(tmp_path / "s.h5")
    save_samples(samples, x, topology=aldp.topology, log_weights=np.zeros(20), metadata={"system": "aldp-vacuum"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_log.csv").write_text("step,phase,total,val_total\n10,dsm,1.0,1.1\n20,dsm,0.9,1.0\n")
    validation = {"val_energy_gap_std_kT": 0.97, "val_energy_gap_std_within_kT": 0.99, "val_dF_error_kT": 0.79}
    (run / "metrics.json").write_text(json.dumps({"validation": validation}))
    metrics = analyze(samples, str(tmp_path / "out"), run_dir=str(run))
    assert metrics["model_energy_gap_std_kT"] == 0.97 and metrics["model_state_dF_error_kT"] == 0.79
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Model energy at t_min minus the force field" in page


def test_sampler_warnings_reach_the_verdict():
    summary = {"ess": 500.0, "n": 1000, "sampler_warnings": ["the adaptive annealing reached its cap of 128 levels"]}
    verdict = report_verdict(summary)
    assert verdict == ["The sampler reported: the adaptive annealing reached its cap of 128 levels."]
