"""boltzgen.diagnostics.sample_quality: the target energy of a model's own reverse-diffusion
samples, against exact models of an analytic target and through `boltzgen train`."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import train_small_aldp_run

from boltzgen.diagnostics import sample_quality
from boltzgen.sampling import ExactMarginalModel
from boltzgen.systems.gmm import two_modes


def test_exact_model_ends_on_the_target_and_a_flattened_one_does_not():
    target = two_modes(2)
    reference = target.sample(4000, torch.Generator().manual_seed(0))
    good = sample_quality(ExactMarginalModel(target), target, reference, n=2000, n_steps=50, seed=1)
    assert good["sample_check_n"] == 2000
    assert abs(good["sample_energy_excess_kT"]) < 0.15  # median of u: MC error ~0.05
    assert "sample_term_excess_kT" not in good  # no force field
    # half the stiffness taken out of the model's energy at every t: samples too broad
    flat = ExactMarginalModel(target, perturbation=lambda y, t: -0.25 * y.pow(2).sum(-1))
    bad = sample_quality(flat, target, reference, n=2000, n_steps=50, seed=1)
    assert bad["sample_energy_excess_kT"] > 0.5 and bad["sample_energy_excess_p90_kT"] > 0.5
    with pytest.raises(ValueError, match="at least 2"):
        sample_quality(ExactMarginalModel(target), target, reference, n=1)


def test_train_reports_the_sample_check_per_term_class(tmp_path):
    run, _ = train_small_aldp_run(
        tmp_path,
        "net: {kind: egnn, hidden: 8, n_layers: 1}\nmodel: {prior: forcefield, t_min: 1.0e-4}\n"
        "loss: {kind: dsm, k: 1}\ntrain: {steps: 2, batch_size: 8, val_every: 2, checkpoint_every: 2, "
        "val_fraction: 0.25, sample_check: 8}\n",
    )
    check = json.loads((run / "metrics.json").read_text())["sample_check"]
    assert check["sample_check_n"] == 8
    assert set(check["sample_term_excess_kT"]) == {"bond_h", "bond", "angle", "torsion", "coulomb", "lj"}
    assert np.isfinite(check["sample_energy_excess_kT"])
    assert 0.0 <= check["sample_d_centre_fraction"] <= 1.0 and 0.0 <= check["sample_cis_bond_fraction"] <= 1.0


def test_marginal_spread_gives_the_models_state_free_energy_error():
    """Exact GMM marginals: no spread and no state error; an energy raised by c on one mode only
    makes that mode's free energy c too high, and the spread within each mode stays zero."""
    from boltzgen.diagnostics import marginal_spread
    from boltzgen.diffusion import VPSchedule

    target = two_modes(2)
    x0, comp = target.sample(400, torch.Generator().manual_seed(2), return_components=True)
    times = torch.tensor([0.01, 0.03], dtype=torch.float64)
    schedule = VPSchedule()
    ys, log_ps = [], []
    g = torch.Generator().manual_seed(3)
    for t in times.tolist():
        a, v = (float(z) for z in schedule.transition(0.0, t))
        y = a * x0 + math.sqrt(v) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        ys.append(y)
        log_ps.append(target.log_prob_t(y, t, schedule))
    y, log_p = torch.stack(ys), torch.stack(log_ps)
    labels, names = comp.numpy(), ["first", "second"]
    exact = marginal_spread(ExactMarginalModel(target, schedule), y, log_p, times, labels, names)
    c = 1.7
    axis = (target.means[1] - target.means[0]) / (target.means[1] - target.means[0]).norm()
    middle = 0.5 * (target.means[0] + target.means[1])
    raised = ExactMarginalModel(target, schedule, perturbation=lambda z, t: c * ((z - middle) @ axis > 0).double())
    off = marginal_spread(raised, y, log_p, times, labels, names)
    for t in ("0.01", "0.03"):
        assert exact[f"marginal_std_kT_t{t}"] < 1e-8
        assert abs(exact[f"marginal_dF_error_kT_t{t}_second"]) < 1e-8
        assert off[f"marginal_dF_error_kT_t{t}_second"] == pytest.approx(c, abs=0.02)
        assert off[f"marginal_std_kT_t{t}_first"] < 0.02 and off[f"marginal_std_kT_t{t}_second"] < 0.02
        assert f"marginal_dF_error_kT_t{t}_first" not in off  # the reference: more copies
