"""DSM and DiffCLF: stationarity at the exact energies, explicit-loop references, one-pass
structure of the combined loss, level sampling."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import boltzgen.systems as systems
from boltzgen.diffusion import VPSchedule, sample_noise
from boltzgen.energy import EnergyModel
from boltzgen.losses import LEVEL_MODES, LOSSES, compute_loss, diffclf_loss, dsm_diffclf_loss, dsm_loss, sample_levels
from boltzgen.testing import CallCounter

F64 = torch.float64


class TinyNet(nn.Module):
    """Small MLP net(x, t) -> (B,) with a random (non-zero) last layer."""

    def __init__(self, event_shape, hidden=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = math.prod(event_shape)
        self.layers = nn.Sequential(nn.Linear(d + 1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, x, t):
        return self.layers(torch.cat([x.flatten(1), t[:, None]], dim=1)).squeeze(-1)


class ExactGMMModel(nn.Module):
    """E(x, t) = −log p_t(x) + a h(x, t) and F(t) = b t for the exact gmm-two-modes marginals.

    At a = b = 0 the logits −E + F = log p_t are exact (log p_t is normalised), so every loss is
    stationary there; h is a fixed smooth function that changes both scores and level ratios.
    """

    def __init__(self, a=0.0, b=0.0, t_min=1e-3):
        super().__init__()
        self.target = systems.load("gmm-two-modes", dim=2)
        self.schedule = VPSchedule()
        self.t_min, self.event_shape, self.mean_free = t_min, (2,), False
        self.a = nn.Parameter(torch.tensor(float(a), dtype=F64))
        self.b = nn.Parameter(torch.tensor(float(b), dtype=F64))

    @staticmethod
    def h(x, t):
        return 0.5 * t * (x**2).sum(-1) + torch.sin(x).sum(-1)

    def energy(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return -self.target.log_prob_t(x, t, self.schedule) + self.a * self.h(x, t)

    def energy_and_score(self, x, t, create_graph=False):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e = self.energy(x, t)
            (grad,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
        return e, -grad

    def log_normaliser(self, t):
        return self.b * t


STATIONARITY_CASES = {
    "dsm": dict(fn=dsm_loss),
    "diffclf-binary": dict(fn=diffclf_loss, k=2),
    "diffclf-4-stratified": dict(fn=diffclf_loss, k=4, levels="stratified"),
    "diffclf-3-grid": dict(fn=diffclf_loss, k=3, levels="grid", grid=16),
    "diffclf-binary-one-sample": dict(fn=diffclf_loss, k=2, clf_samples="one", n_wrong=16),  # more variance
}


def _gradient_statistics(model, case, n_batches=24, batch=256):
    """Mean and standard error of d loss / d(a, b) over independent batches."""
    case = dict(case)
    fn = case.pop("fn")
    g = torch.Generator().manual_seed(123)
    grads = []
    for _ in range(n_batches):
        x0 = model.target.sample(batch, generator=g)
        loss = fn(model, x0, g, **case)["total"]
        da, db = torch.autograd.grad(loss, [model.a, model.b], allow_unused=True)
        grads.append(torch.stack([da, torch.zeros_like(da) if db is None else db]))
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(n_batches)


@pytest.mark.parametrize("name", list(STATIONARITY_CASES))
def test_exact_energies_are_stationary_and_wrong_ones_are_not(name):
    """At the exact energies the expected gradient vanishes; at a = 1 (or b = 1) it does not
    (so the check can fail)."""
    case = dict(STATIONARITY_CASES[name])
    n_wrong = case.pop("n_wrong", 8)
    mean, se = _gradient_statistics(ExactGMMModel(), case)
    uses_b = case["fn"] is not dsm_loss
    assert mean[0].abs() < 4 * se[0], f"d/da at the optimum: {mean[0]:.3g} ± {se[0]:.2g}"
    if uses_b:
        assert mean[1].abs() < 4 * se[1], f"d/db at the optimum: {mean[1]:.3g} ± {se[1]:.2g}"
    mean, se = _gradient_statistics(ExactGMMModel(a=1.0), case, n_batches=n_wrong)
    assert mean[0].abs() > 6 * se[0], f"d/da of a wrong model not detected: {mean[0]:.3g} ± {se[0]:.2g}"
    if uses_b:
        mean, se = _gradient_statistics(ExactGMMModel(b=1.0), case, n_batches=n_wrong)
        assert mean[1].abs() > 6 * se[1], f"d/db of a wrong model not detected: {mean[1]:.3g} ± {se[1]:.2g}"


def _random_model(event_shape, **options):
    model = EnergyModel(TinyNet(event_shape), event_shape, n_levels=8, **options).to(F64)
    with torch.no_grad():
        model.normaliser.values.copy_(torch.randn(8, generator=torch.Generator().manual_seed(4), dtype=F64))
    return model


def _reference(model, x0, t, noise):
    """DSM and DiffCLF written out with explicit loops over samples and levels."""
    sched = model.schedule
    b_size, k = t.shape
    dsm_terms, clf_terms, binary_terms, correct = [], [], [], 0
    for b in range(b_size):
        ys = [sched.alpha(t[b, j]) * x0[b] + sched.sigma(t[b, j]) * noise[b, j] for j in range(k)]
        for j in range(k):
            y = ys[j][None].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model.energy(y, t[b, j].reshape(1)).sum(), y)
            dsm_terms.append(((sched.sigma(t[b, j]) * grad[0] - noise[b, j]) ** 2).sum() / model.dim)
        logit = [
            [
                (-model.energy(ys[j][None], t[b, i].reshape(1))[0] + model.log_normaliser(t[b, i])).detach()
                for j in range(k)
            ]
            for i in range(k)
        ]  # logit[i][j]
        clf = 0.0
        for j in range(k):
            clf = clf - logit[j][j] + torch.logsumexp(torch.stack([logit[i][j] for i in range(k)]), 0)
            correct += int(max(range(k), key=lambda i: logit[i][j].item()) == j)
        clf_terms.append(clf)
        if k == 2:
            binary_terms.append(F.softplus(logit[1][0] - logit[0][0]) + F.softplus(logit[0][1] - logit[1][1]))
    out = dict(dsm=torch.stack(dsm_terms).mean(), clf=torch.stack(clf_terms).mean(), accuracy=correct / (b_size * k))
    if k == 2:
        out["binary"] = torch.stack(binary_terms).mean()
    return out


@pytest.mark.parametrize("event_shape,k", [((2,), 2), ((2,), 4), ((3, 3), 3)], ids=["binary", "multi", "mean-free"])
def test_losses_match_explicit_loop_reference(event_shape, k):
    model = _random_model(event_shape)
    g = torch.Generator().manual_seed(5)
    b_size = 6
    x0 = torch.randn((b_size,) + event_shape, generator=g, dtype=F64)
    t = sample_levels(b_size, k, model.t_min, g, dtype=F64)
    noise = sample_noise((b_size, k) + event_shape, g, model.mean_free, dtype=F64)
    ref = _reference(model, x0, t, noise)
    clf = diffclf_loss(model, x0, t=t, noise=noise)
    both = dsm_diffclf_loss(model, x0, t=t, noise=noise, lambda_clf=0.7)
    dsm = dsm_loss(model, x0, t=t, noise=noise)
    torch.testing.assert_close(clf["clf"].detach(), ref["clf"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both["clf"].detach(), ref["clf"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dsm["dsm"].detach(), ref["dsm"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both["dsm"].detach(), ref["dsm"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(both["total"], both["dsm"] + 0.7 * both["clf"])
    assert clf["clf_accuracy"].item() == pytest.approx(ref["accuracy"])
    if k == 2:
        torch.testing.assert_close(clf["clf"].detach(), ref["binary"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_one_classified_sample_per_x0_is_the_weighted_term_of_the_drawn_sample(k):
    """clf_samples="one": k times the classification term of one uniformly drawn sample j per x_0
    (so its expectation over j is the full sum), from k − 1 extra energies per x_0."""
    model = _random_model((2,))
    g = torch.Generator().manual_seed(5)
    b_size = 7
    x0 = torch.randn(b_size, 2, generator=g, dtype=F64)
    t = sample_levels(b_size, k, model.t_min, g, dtype=F64)
    noise = sample_noise((b_size, k, 2), g, False, dtype=F64)
    sched = model.schedule
    terms = torch.empty(b_size, k, dtype=F64)  # the classification term of sample j of x_0 b, explicit loops
    for b in range(b_size):
        for j in range(k):
            y = sched.alpha(t[b, j]) * x0[b] + sched.sigma(t[b, j]) * noise[b, j]
            logits = torch.stack(
                [-model.energy(y[None], t[b, i].reshape(1))[0] + model.log_normaliser(t[b, i]) for i in range(k)]
            ).detach()
            terms[b, j] = torch.logsumexp(logits, 0) - logits[j]
    torch.testing.assert_close(terms.sum(1).mean(), diffclf_loss(model, x0, t=t, noise=noise, k=k)["clf"].detach())
    for seed in range(3):
        j = torch.randint(0, k, (b_size,), generator=torch.Generator().manual_seed(seed))
        expected = k * terms[torch.arange(b_size), j].mean()
        for fn in (diffclf_loss, dsm_diffclf_loss):
            model.net = CallCounter(model.net)
            out = fn(model, x0, torch.Generator().manual_seed(seed), t=t, noise=noise, k=k, clf_samples="one")
            torch.testing.assert_close(out["clf"].detach(), expected, rtol=1e-10, atol=1e-12)
            extra = b_size * (k - 1) if fn is dsm_diffclf_loss else b_size * k
            assert model.net.calls[-1] == (extra, False)
            model.net = model.net.inner
    with pytest.raises(ValueError, match="clf_samples"):
        diffclf_loss(model, x0, t=t, noise=noise, k=k, clf_samples="some")


def test_seeded_generator_reproduces_explicit_levels_and_noise():
    model = _random_model((2,))
    x0 = torch.randn(5, 2, dtype=F64)
    for levels in LEVEL_MODES:
        g = torch.Generator().manual_seed(9)
        t = sample_levels(5, 3, model.t_min, g, levels=levels, grid=10, dtype=F64)
        noise = torch.randn(5, 3, 2, generator=g, dtype=F64)
        explicit = diffclf_loss(model, x0, t=t, noise=noise, k=3)["total"]
        seeded = diffclf_loss(model, x0, torch.Generator().manual_seed(9), k=3, levels=levels, grid=10)["total"]
        assert torch.equal(explicit, seeded)


def test_combined_loss_makes_one_graph_pass_for_the_diagonal():
    model = _random_model((4, 3))
    model.net = CallCounter(model.net)
    x0 = torch.randn(8, 4, 3, dtype=F64)
    out = dsm_diffclf_loss(model, x0, torch.Generator().manual_seed(0), k=3)
    # one pass with x requiring grad (energies + scores of the 24 diagonal samples), one energy-only
    # pass over the 8 * 3 * 2 off-diagonal pairs
    assert model.net.calls == [(24, True), (48, False)]
    assert out["n_dsm"] == 24 and out["n_energy"] == 72
    out["total"].backward()
    assert model.net.inner.layers[0].weight.grad.abs().sum() > 0
    assert model.normaliser.values.grad.abs().sum() > 0
    model.net.calls.clear()
    base = compute_loss(model, x0, torch.Generator().manual_seed(0), loss="dsm", k=3)
    assert model.net.calls == [(24, True)] and base["n_dsm"] == out["n_dsm"]
    model.net.calls.clear()
    clf = compute_loss(model, x0, torch.Generator().manual_seed(0), loss="diffclf", k=3)
    assert model.net.calls == [(72, False)] and clf["n_dsm"] == 0
    # the DSM-only baseline sees exactly the same noisy samples as the DSM part of the combination
    torch.testing.assert_close(base["dsm"], out["dsm"])


def test_dsm_is_averaged_over_mean_free_degrees_of_freedom():
    """Zero network and Gaussian mean-free data N(0, s² P): E[loss | t] = α_t² s² / c_t² exactly."""
    n_atoms, s, b_size, t = 4, 0.6, 4000, 0.05
    net = TinyNet((n_atoms, 3))
    nn.init.zeros_(net.layers[-1].weight)
    nn.init.zeros_(net.layers[-1].bias)
    model = EnergyModel(net, (n_atoms, 3), sigma_data=s).to(F64)
    g = torch.Generator().manual_seed(6)
    x0 = s * sample_noise((b_size, n_atoms, 3), g, mean_free=True, dtype=F64)
    loss = dsm_loss(model, x0, g, t=torch.full((b_size, 1), t, dtype=F64))["dsm"].item()
    q = (model.schedule.alpha(t) ** 2 * s**2 / model.c2(t)).item()
    se = q * math.sqrt(2 / (3 * (n_atoms - 1) * b_size))
    assert abs(loss - q) < 5 * se, (loss, q, se)


def test_level_sampling_modes():
    g = torch.Generator().manual_seed(7)
    t_min, n = 0.01, 20000
    for levels in ("uniform", "stratified"):
        t = sample_levels(n, 3, t_min, g, levels=levels, dtype=F64)
        assert t.shape == (n, 3) and (t[:, 1:] >= t[:, :-1]).all() and t.min() >= t_min and t.max() <= 1
        pooled = t.reshape(-1)  # every level is marginally U[t_min, 1] when pooled over positions
        assert abs(pooled.mean().item() - (1 + t_min) / 2) < 5 * (1 - t_min) / math.sqrt(12 * 3 * n)
    strata = sample_levels(n, 4, 0.0, g, levels="stratified", dtype=F64)
    assert ((strata * 4).floor() == torch.arange(4, dtype=F64)).all()
    grid = torch.tensor([0.01, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=F64)
    t = sample_levels(1000, 3, t_min, g, levels="grid", grid=grid)
    idx = torch.searchsorted(grid, t)
    assert torch.equal(grid[idx], t) and ((idx[:, 1:] - idx[:, :-1]) == 1).all()
    assert set(idx[:, 0].tolist()) == set(range(5))
    t = sample_levels(1000, 3, t_min, g, levels="grid-stratified", grid=grid)
    idx = torch.searchsorted(grid, t)
    assert torch.equal(grid[idx], t)
    assert (
        set(idx[:, 0].tolist()) == {0, 1} and set(idx[:, 1].tolist()) == {2, 3} and set(idx[:, 2].tolist()) == {4, 5, 6}
    )
    with pytest.raises(ValueError):
        sample_levels(2, 8, t_min, g, levels="grid", grid=grid)


def test_log_snr_level_modes():
    g = torch.Generator().manual_seed(3)
    sched, t_min, n = VPSchedule(), 1e-3, 20000

    def lam(t):
        return (2 * sched.log_alpha(t) - torch.log(sched.sigma2(t))).to(F64)

    hi, lo = lam(torch.tensor(t_min, dtype=F64)), lam(torch.tensor(1.0, dtype=F64))
    for levels in ("log-snr", "log-snr-stratified"):
        t = sample_levels(n, 3, t_min, g, levels=levels, dtype=F64, schedule=sched)
        assert t.shape == (n, 3) and (t[:, 1:] >= t[:, :-1]).all() and t.min() >= t_min and t.max() <= 1
        u = (hi - lam(t)) / (hi - lo)  # uniform on [0, 1] when pooled
        assert abs(u.mean().item() - 0.5) < 5 / math.sqrt(12 * 3 * n)
        if levels == "log-snr-stratified":
            assert ((u * 3).floor().clamp(max=2) == torch.arange(3, dtype=F64)).all()
    t = sample_levels(500, 2, t_min, g, levels="log-snr-grid", grid=9, dtype=F64, schedule=sched)
    grid = torch.unique(t)
    assert grid.numel() == 9 and grid[0].item() == pytest.approx(t_min) and grid[-1].item() == pytest.approx(1.0)
    gaps = lam(grid[:-1]) - lam(grid[1:])
    torch.testing.assert_close(gaps, torch.full_like(gaps, ((hi - lo) / 8).item()), rtol=1e-6, atol=1e-8)
    idx = torch.searchsorted(grid, t)
    assert ((idx[:, 1] - idx[:, 0]) == 1).all()
    t = sample_levels(500, 3, t_min, g, levels="log-snr-grid-stratified", grid=9, dtype=F64, schedule=sched)
    idx = torch.searchsorted(grid, t)
    assert set(idx[:, 0].tolist()) == {0, 1, 2} and set(idx[:, 2].tolist()) == {6, 7, 8}


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_training_step(loss):
    model = EnergyModel(TinyNet((3, 3)), (3, 3))
    opt = torch.optim.Adam(model.parameter_groups(1e-3, log_normaliser_lr=1e-2))
    out = compute_loss(model, torch.randn(16, 3, 3), torch.Generator().manual_seed(0), loss=loss, k=2)
    assert out["total"].dtype == torch.float32 and torch.isfinite(out["total"])
    opt.zero_grad()
    out["total"].backward()
    opt.step()
    with pytest.raises(ValueError):
        compute_loss(model, torch.randn(4, 3, 3), loss="nope")


class TimeOnlyNet(nn.Module):
    """g(x, t) = sin(3t) + 2t²: an energy offset that depends on t alone."""

    def forward(self, x, t):
        return torch.sin(3.0 * t) + 2.0 * t**2


def test_calibrated_log_normaliser_is_the_exact_one_of_a_gaussian_model():
    """E(x, t) = ‖x‖²/2c_t² + off(t) has F(t) = −log Z_t = −(d/2) log 2πc_t² + off(t) exactly; with
    data from the model's own t → 0 density, the calibration recovers f_φ(t) = off(t) − off(1)
    on the grid (anchored at t = 1) by free-energy perturbation between neighbouring levels."""
    from boltzgen.losses import calibrate_log_normaliser

    d = 4
    model = EnergyModel(TimeOnlyNet(), (d,), n_levels=16, sigma_data=1.0).to(F64)
    x0 = torch.randn(4000, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    change = calibrate_log_normaliser(model, x0, torch.Generator().manual_seed(1))
    grid = model.normaliser.grid.to(F64)
    off = torch.stack([model.energy(torch.zeros(1, d, dtype=F64), float(t))[0] for t in grid])
    expected = off - off[-1]
    assert float(expected.abs().max()) > 0.5  # a real offset to recover
    assert change == pytest.approx(float(expected.abs().max()), rel=0.05)
    torch.testing.assert_close(model.normaliser.values.detach(), expected, atol=0.03, rtol=0)
    # a kind without a grid is left alone
    other = EnergyModel(TimeOnlyNet(), (d,), log_normaliser="mlp").to(F64)
    assert calibrate_log_normaliser(other, x0) is None


def test_calibration_evaluates_the_network_in_chunks():
    """The calibration's energies of a large batch come from network passes of at most
    CALIBRATION_CHUNK configurations (a whole batch of a peptide at once took GBs per training
    process); the exact-answer test above checks the values."""
    from boltzgen.losses import CALIBRATION_CHUNK, calibrate_log_normaliser

    d = 4
    x0 = torch.randn(5 * CALIBRATION_CHUNK + 3, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    model = EnergyModel(TimeOnlyNet(), (d,), n_levels=8, sigma_data=1.0).to(F64)
    sizes = []
    model.net.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    calibrate_log_normaliser(model, x0, torch.Generator().manual_seed(1))
    assert sizes and max(sizes) <= CALIBRATION_CHUNK and sum(sizes) % x0.shape[0] == 0


def test_path_loss_vanishes_for_exact_marginals_and_sees_an_inconsistent_model():
    """The variance of SMC's one-step log-weight on noised data: for the GMM's exact marginals only
    the kernel's discretisation is left (falling with finer levels); a t-dependent perturbation
    that is not a diffusion shows at any level spacing; the loss has a gradient."""
    from boltzgen.losses import path_loss
    from boltzgen.sampling import ExactMarginalModel
    from boltzgen.sampling.sde import time_grid

    target = systems.load("gmm-two-modes", dim=2)
    x0 = target.sample(512, torch.Generator().manual_seed(0)).double()
    exact = ExactMarginalModel(target, VPSchedule())

    def bump(y, t):
        return 2.0 * torch.sin(3.0 * y[:, 0]) * torch.as_tensor(t, dtype=y.dtype)

    wrong = ExactMarginalModel(target, VPSchedule(), perturbation=bump)
    coarse, fine = time_grid(100, 1e-3), time_grid(400, 1e-3)
    e100 = float(path_loss(exact, x0, coarse, torch.Generator().manual_seed(1), n_pairs=16).detach())
    e400 = float(path_loss(exact, x0, fine, torch.Generator().manual_seed(1), n_pairs=16).detach())
    w100 = float(path_loss(wrong, x0, coarse, torch.Generator().manual_seed(1), n_pairs=16).detach())
    assert e100 < 5e-3 and e400 < e100 / 3
    assert w100 > 100 * e100
    # with a learned model it is differentiable in the parameters
    from boltzgen.nn import build_network

    model = EnergyModel(build_network("mlp", (2,), hidden=16, n_layers=2), (2,), t_min=1e-3).double()
    loss = path_loss(model, x0[:64], coarse, torch.Generator().manual_seed(2), n_pairs=4)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.net.parameters())


class MixtureWeightModel(nn.Module):
    """The exact diffused gmm-two-modes marginals with the second mode's weight a parameter:
    E(x, t) = −log Σ_k w_k N(x; α μ_k, diag(α² s_k² + σ²)), w = (1 − sigmoid(c), sigmoid(c)), F = 0."""

    def __init__(self, weight: float):
        super().__init__()
        self.target = systems.load("gmm-two-modes", dim=2)
        self.schedule = VPSchedule()
        self.t_min, self.event_shape, self.mean_free = 1e-3, (2,), False
        self.c = nn.Parameter(torch.tensor(math.log(weight / (1 - weight)), dtype=F64))

    def energy(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        a, s2 = self.schedule.alpha(t)[:, None], self.schedule.sigma2(t)[:, None]
        means, stds = self.target.means.to(x), self.target.stds.to(x)
        var = a[:, :, None] ** 2 * stds[None] ** 2 + s2[:, :, None]  # (B, K, D): diagonal components
        sq = (x[:, None, :] - a[:, :, None] * means[None]) ** 2
        log_n = (-0.5 * sq / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)
        log_w = torch.stack([F.logsigmoid(-self.c), F.logsigmoid(self.c)])
        return -torch.logsumexp(log_n + log_w, dim=1)

    energy_and_score = ExactGMMModel.energy_and_score

    def log_normaliser(self, t):
        return torch.zeros_like(torch.as_tensor(t, dtype=F64))


@pytest.mark.parametrize("fn", [dsm_loss, diffclf_loss], ids=["dsm", "diffclf"])
def test_sample_weights_undo_oversampling_of_a_mode(fn):
    """Data drawn with the rare mode oversampled to 80 %: with the weights π/q the objective is
    stationary at the target's mode weight (1/3); without them its gradient pulls the mode weight
    towards the draws' (so the check can fail)."""
    model = MixtureWeightModel(1.0 / 3.0)
    target = model.target
    g = torch.Generator().manual_seed(7)
    grads = {True: [], False: []}
    for _ in range(16):
        comp = (torch.rand(256, generator=g) < 0.8).long()  # draws: 20 % / 80 %
        x0 = target.means[comp] + target.stds[comp] * torch.randn(256, 2, generator=g, dtype=F64)
        w = torch.where(comp == 1, (1 / 3) / 0.8, (2 / 3) / 0.2).to(F64)
        for weighted in (True, False):
            gg = torch.Generator().manual_seed(len(grads[weighted]))
            loss = fn(model, x0, gg, sample_weight=w if weighted else None)["total"]
            grads[weighted].append(torch.autograd.grad(loss, model.c)[0])
    for weighted, values in grads.items():
        v = torch.stack(values)
        mean, se = v.mean(), v.std() / math.sqrt(v.numel())
        if weighted:
            assert mean.abs() < 4 * se, f"weighted d/dc at the target's weights: {mean:.3g} ± {se:.2g}"
        else:  # E falls in mode 2 when c grows: the unweighted loss wants c larger (gradient < 0)
            assert mean < -6 * se, f"unweighted d/dc: {mean:.3g} ± {se:.2g}"


def test_weighted_losses_equal_the_losses_of_the_batch_with_frames_repeated():
    """Integer weights w_b: every part (DSM, DiffCLF, pin) equals the unweighted loss of the batch
    in which sample b appears w_b times, with the same levels and noise."""
    model = _random_model((3, 3))
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(5, 3, 3, generator=g, dtype=F64)
    t = sample_levels(5, 3, model.t_min, g, dtype=F64)
    noise = sample_noise((5, 3, 3, 3), g, model.mean_free, dtype=F64)
    u = torch.randn(5, generator=g, dtype=F64)
    w = torch.tensor([2.0, 0.0, 1.0, 3.0, 1.0], dtype=F64)
    rep = torch.repeat_interleave(torch.arange(5), w.long())
    pin = dict(lambda_pin=0.5, t_pin=0.01)
    weighted = dsm_diffclf_loss(model, x0, t=t, noise=noise, energy=u, sample_weight=w, **pin)
    repeated = dsm_diffclf_loss(model, x0[rep], t=t[rep], noise=noise[rep], energy=u[rep], **pin)
    for key in ("dsm", "clf", "pin", "total"):
        torch.testing.assert_close(weighted[key], repeated[key], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="sample_weight"):
        dsm_loss(model, x0, t=t, noise=noise, sample_weight=-w)
