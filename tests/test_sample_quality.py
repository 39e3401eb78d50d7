"""boltzgen.diagnostics.sample_quality: the target energy of a model's own reverse-diffusion
samples, against exact models of an analytic target and through `boltzgen train`."""

import json

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
