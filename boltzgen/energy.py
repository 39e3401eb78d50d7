"""Time-dependent energy model E_θ(x, t) with an EDM-style Gaussian prior term and a learned
log-normaliser F(t).

The model (``docs/design.md``, section 3) is

    E_θ(x, t) = ‖x̃‖² / (2 c_t²) + λ(t) g_θ(x̃ / c_t, t) [+ E_prior(x̃, t)],      c_t² = α_t² σ_data² + σ_t²,

with x̃ = x − x̄ (the mean over atoms subtracted) for mean-free molecular configurations and
x̃ = x otherwise, g_θ a network ``net(x, t) -> (B,)`` and λ(t) an output scale (1, or
σ_data / σ_t with ``output_scale="edm"``, which gives the network's contribution to the score the
magnitude of EDM's preconditioned denoiser; with a force-field prior, σ_t is floored smoothly
at the prior's fade width, √(σ_t² + w²), since the stiff part of the energy is then the prior's).
With g_θ = 0 the energy is exactly that of
N(0, c_t² I), the diffusion marginal of Gaussian data N(0, σ_data² I); a zero-initialised last
layer therefore starts training from that marginal.

The score is s_θ(x, t) = −∇ₓE_θ(x, t) (autograd), projected onto the zero-centre-of-mass
subspace for mean-free models (it already lies there, as E depends on x̃ only).

The classification logits of DiffCLF are ℓ(x, t) = −E_θ(x, t) + F(t), where

    F(t) = −(d/2) log(2π c_t²) + f_φ(t),

d = 3(N − 1) for mean-free models and the number of coordinates otherwise, and f_φ is a learned
residual (one scalar per level of a uniform time grid on [t_min, 1] with linear interpolation,
or a small MLP of t, or nothing), initialised at zero. With g_θ = 0 and f_φ = 0, ℓ(x, t) is the
exact normalised log-density log N(x; 0, c_t² I); in general −E_θ + F is the model's estimate of
log p_t (DiffCLF determines F only up to one constant shared by all t). f_φ's parameters form
their own group (:meth:`EnergyModel.parameter_groups`) so a trainer can give them their own
learning rate.

E_prior, when the model has one, is the force field's terms diffused to time t and faded in as
the noise drops below the stiffest bond's width (:class:`boltzgen.nn.prior.ForceFieldPrior`); the
network then learns the rest. A prior built from OpenMM replaces the Gaussian term as it fades in:
that term is weighted by 1 − f(t), so at t → 0 the energy is E_prior + λ g_θ and the network has
no ‖x̃‖² of many kT to cancel.

Energies are reduced (dimensionless); x has the units of the data (nm for molecules).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .diffusion.noise import event_dim, project_mean_free, sq_norm
from .diffusion.schedules import Schedule, schedule_from_config

__all__ = ["EnergyModel", "LogNormaliser"]

LOG_NORMALISER_KINDS = ("grid", "mlp", "none")
OUTPUT_SCALES = ("none", "edm")


class LogNormaliser(nn.Module):
    """Learned residual f_φ(t) of the log-normaliser, zero at initialisation.

    Parameters
    ----------
    kind : {"grid", "mlp", "none"}
        ``"grid"``: one scalar per level of a grid from t_min to 1, geometric in t (about uniform
        in log-SNR, where the levels of training and sampling lie; uniform in t for t_min = 0),
        linearly interpolated (constant beyond the ends). A geometric grid lets F follow
        −log Z_t where it changes fastest, at small t: with a force-field prior it moves by
        hundreds of kT between t_min and the first level of a uniform grid. ``"mlp"``: a two-hidden-layer SiLU MLP
        of the rescaled time 2 (t − t_min)/(1 − t_min) − 1, last layer zero. ``"none"``: f = 0,
        no parameters.
    t_min : float
        Start of the time range.
    n_levels : int
        Grid size (``"grid"``), at least 2.
    hidden : int
        Width of the MLP (``"mlp"``).
    """

    def __init__(self, kind: str = "grid", t_min: float = 1e-3, n_levels: int = 64, hidden: int = 64):
        super().__init__()
        if kind not in LOG_NORMALISER_KINDS:
            raise ValueError(f"log_normaliser must be one of {LOG_NORMALISER_KINDS}, got {kind!r}")
        if not 0.0 <= t_min < 1.0:
            raise ValueError(f"need 0 <= t_min < 1, got {t_min}")
        self.kind, self.t_min, self.n_levels, self.hidden = kind, float(t_min), int(n_levels), int(hidden)
        if kind == "grid":
            if self.n_levels < 2:
                raise ValueError(f"a grid log-normaliser needs n_levels >= 2, got {n_levels}")
            if self.t_min > 0:
                grid = torch.logspace(math.log10(self.t_min), 0.0, self.n_levels, dtype=torch.float64).float()
            else:
                grid = torch.linspace(0.0, 1.0, self.n_levels)
            self.register_buffer("grid", grid)  # a model.pt keeps its own (old ones: uniform in t)
            self.values = nn.Parameter(torch.zeros(self.n_levels))
        elif kind == "mlp":
            self.mlp = nn.Sequential(
                nn.Linear(1, self.hidden),
                nn.SiLU(),
                nn.Linear(self.hidden, self.hidden),
                nn.SiLU(),
                nn.Linear(self.hidden, 1),
            )
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """f_φ(t) for a tensor of times.

        Parameters
        ----------
        t : torch.Tensor, any shape
            Diffusion times in [t_min, 1] (dimensionless).

        Returns
        -------
        torch.Tensor, shape and dtype of ``t``
            The residual f_φ(t) of the log-normaliser (dimensionless, a log-density offset).
        """
        if self.kind == "none":
            return torch.zeros_like(t)
        if self.kind == "grid":
            grid = self.grid.to(t)
            i = (torch.searchsorted(grid, t.detach().contiguous(), right=True) - 1).clamp(0, self.n_levels - 2)
            w = ((t - grid[i]) / (grid[i + 1] - grid[i])).clamp(0.0, 1.0)
            values = self.values.to(t.dtype)
            return (1.0 - w) * values[i] + w * values[i + 1]
        tau = 2.0 * (t - self.t_min) / (1.0 - self.t_min) - 1.0
        return self.mlp(tau.reshape(-1, 1).to(self.mlp[0].weight.dtype)).reshape(t.shape).to(t.dtype)

    def extra_repr(self) -> str:
        """Summary of the settings shown by ``repr(module)``.

        Returns
        -------
        str
        """
        return f"kind={self.kind!r}, t_min={self.t_min}, n_levels={self.n_levels}, hidden={self.hidden}"


class EnergyModel(nn.Module):
    """Energy model E_θ(x, t) = ‖x̃‖²/(2 c_t²) + λ(t) g_θ(x̃/c_t, t) with log-normaliser F(t).

    Parameters
    ----------
    net : torch.nn.Module
        g_θ: ``net(x, t) -> (B,)`` with x of shape (B, *event_shape), t of shape (B,); its last
        layer should be zero-initialised (then the model starts as the Gaussian marginal).
    event_shape : sequence of int
        Shape of one configuration: (N, 3) for molecules, (D,) for toy targets.
    schedule : Schedule or dict, optional
        Forward diffusion (default :class:`~boltzgen.diffusion.VPSchedule`).
    mean_free : bool, optional
        Treat configurations as translation invariant (energy of x − x̄, mean-free score,
        d = 3(N − 1)). Default: True for an (N, 3) event shape, else False.
    sigma_data : float
        Per-coordinate standard deviation of the (centred) data, in units of x.
    t_min : float
        Smallest diffusion time the model is trained on and meant for.
    log_normaliser : {"grid", "mlp", "none"}
        Form of the learned residual f_φ(t) of F(t) (see :class:`LogNormaliser`).
    n_levels : int
        Grid size of the ``"grid"`` log-normaliser (default 64).
    normaliser_hidden : int
        Width of the ``"mlp"`` log-normaliser.
    output_scale : {"none", "edm"}
        λ(t) = 1 (``"none"``, the plain parameterisation) or σ_data/σ_t (``"edm"``).
    net_config : dict, optional
        JSON-serialisable description of ``net``, stored in :meth:`config` for the caller's
        network factory.
    prior : dict, optional
        :meth:`boltzgen.nn.prior.ForceFieldPrior.config` of a force-field prior added to the energy.

    Attributes
    ----------
    net, normaliser : modules (g_θ and f_φ)
    schedule, event_shape, mean_free, sigma_data, t_min, dim (degrees of freedom d)
    """

    def __init__(
        self,
        net: nn.Module,
        event_shape: Sequence[int],
        schedule: Union[Schedule, dict, None] = None,
        *,
        mean_free: Optional[bool] = None,
        sigma_data: float = 1.0,
        t_min: float = 1e-3,
        log_normaliser: str = "grid",
        n_levels: int = 64,
        normaliser_hidden: int = 64,
        output_scale: str = "none",
        net_config: Optional[dict] = None,
        prior: Optional[dict] = None,
    ):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        if mean_free is None:
            mean_free = len(self.event_shape) == 2 and self.event_shape[1] == 3
        self.mean_free = bool(mean_free)
        self.dim = event_dim(self.event_shape, self.mean_free)
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        if output_scale not in OUTPUT_SCALES:
            raise ValueError(f"output_scale must be one of {OUTPUT_SCALES}, got {output_scale!r}")
        self.sigma_data = float(sigma_data)
        self.t_min = float(t_min)
        self.output_scale = output_scale
        self.schedule = schedule_from_config(schedule)
        self.net = net
        self.normaliser = LogNormaliser(log_normaliser, self.t_min, n_levels, normaliser_hidden)
        self.net_config = None if net_config is None else dict(net_config)
        from .nn.prior import prior_from_config

        self.prior = prior_from_config(prior)

    # ------------------------------------------------------------------ helpers
    @property
    def _n_event(self) -> int:
        return len(self.event_shape)

    def _per_sample(self, values: torch.Tensor) -> torch.Tensor:
        return values.reshape((-1,) + (1,) * self._n_event)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self._n_event + 1 or tuple(x.shape[1:]) != self.event_shape:
            expected = "(B, " + ", ".join(str(s) for s in self.event_shape) + ")"
            raise ValueError(f"expected configurations of shape {expected}, got {tuple(x.shape)}")
        return x

    def _times(self, t, x: torch.Tensor) -> torch.Tensor:
        """Times as a (B,) tensor of the dtype and device of x."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.numel() == 1:
            return t.reshape(1).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a float or a tensor of shape ({x.shape[0]},), got {tuple(t.shape)}")
        return t

    def c2(self, t) -> torch.Tensor:
        """c_t² = α_t² σ_data² + σ_t², the variance of the Gaussian prior term.

        Parameters
        ----------
        t : float or torch.Tensor, any shape
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape of ``t``
            c_t², per coordinate, in units of x².
        """
        return self.schedule.alpha(t) ** 2 * self.sigma_data**2 + self.schedule.sigma2(t)

    def _lambda(self, t: torch.Tensor) -> torch.Tensor:
        if self.output_scale == "edm":
            sigma = self.schedule.sigma(t)
            if self.prior is not None:
                # With the force field's stiff terms in the prior, the network's part of the energy
                # stays of order kT as sigma -> 0: its scale stops growing below the prior's width.
                return self.sigma_data / torch.sqrt(sigma**2 + self.prior.fade_width**2)
            return self.sigma_data / sigma.clamp_min(1e-8)
        return torch.ones_like(t)

    # ------------------------------------------------------------------ energies
    def energy(self, x: torch.Tensor, t) -> torch.Tensor:
        """Energy E_θ(x, t).

        Parameters
        ----------
        x : tensor, shape (B, *event_shape)
        t : float or tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        tensor, shape (B,), dtype of x (reduced, dimensionless)
        """
        x = self._check(x)
        t = self._times(t, x)
        xc = project_mean_free(x) if self.mean_free else x
        c2 = self.c2(t)
        out = self.net(xc / self._per_sample(c2.sqrt()), t)
        if out.numel() != x.shape[0]:
            raise ValueError(
                f"the network must return one energy per configuration ({x.shape[0]},), got shape {tuple(out.shape)}"
            )
        gaussian = 0.5 * sq_norm(xc, self._n_event) / c2
        energy = self._lambda(t) * out.reshape(x.shape[0])
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        snr_energy = getattr(self.net, "snr_energy", None)
        if snr_energy is not None:  # terms whose scale the noise level sets (the chirality wall)
            energy = energy + snr_energy(xc, (alpha / sigma.clamp_min(1e-12)) ** 2).to(energy.dtype)
        if self.prior is not None:
            energy = energy + self.prior(xc, alpha, sigma)
            if self.prior.replaces_gaussian:
                gaussian = (1.0 - self.prior.fade(alpha.to(x.dtype), sigma.to(x.dtype))) * gaussian
        return gaussian + energy

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Energy E_θ(x, t); same as :meth:`energy`.

        Parameters
        ----------
        x : torch.Tensor, shape (B, *event_shape)
            Configurations, in units of the data (nm for molecules, or standardised units).
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape (B,), dtype of ``x``
            Reduced (dimensionless) energies.
        """
        return self.energy(x, t)

    def energy_and_score(self, x: torch.Tensor, t, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Energy and score s = −∇ₓE from one forward pass of the network.

        Parameters
        ----------
        x : tensor, shape (B, *event_shape)
        t : float or tensor of shape (B,)
        create_graph : bool
            Keep the graph of the score (for losses of the score, e.g. DSM). Then the energy is
            returned attached to its graph too; otherwise both are detached.

        Returns
        -------
        energy : tensor, shape (B,)
        score : tensor, shape (B, *event_shape), units 1/x; mean-free for mean-free models
        """
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            e = self.energy(x, t)
            (grad,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
        score = -grad
        if self.mean_free:
            score = project_mean_free(score)
        if not create_graph:
            e, score = e.detach(), score.detach()
        return e, score

    def score(self, x: torch.Tensor, t, create_graph: bool = False) -> torch.Tensor:
        """Score s_θ(x, t) = −∇ₓE_θ(x, t), the second output of :meth:`energy_and_score`.

        Parameters
        ----------
        x : torch.Tensor, shape (B, *event_shape)
            Configurations, in units of the data.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).
        create_graph : bool
            Keep the graph of the score (then it is not detached).

        Returns
        -------
        torch.Tensor, shape (B, *event_shape)
            The score, units 1/x; mean-free for mean-free models.
        """
        return self.energy_and_score(x, t, create_graph)[1]

    def denoise(self, x: torch.Tensor, t) -> torch.Tensor:
        """Tweedie estimate of E[x_0 | x_t = x] = (x + σ_t² s_θ(x, t)) / α_t.

        Parameters
        ----------
        x : torch.Tensor, shape (B, *event_shape)
            Noisy configurations x_t, in units of the data.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape of ``x``
            Denoised configurations, in units of x (detached from the graph).
        """
        tt = self._times(t, x)
        return self.schedule.denoise(x, self.score(x, tt), self._per_sample(tt))

    def log_normaliser(self, t) -> torch.Tensor:
        """F(t) = −(d/2) log(2π c_t²) + f_φ(t), the logit offset of level t in DiffCLF.

        Parameters
        ----------
        t : float or tensor (any shape)

        Returns
        -------
        tensor of the shape of t (0-dim for a float), dtype of t (of the parameters for a float)
        """
        if not isinstance(t, torch.Tensor):
            ref = next(iter(self.parameters()), None)
            t = torch.as_tensor(
                t,
                dtype=torch.get_default_dtype() if ref is None else ref.dtype,
                device=None if ref is None else ref.device,
            )
        return -0.5 * self.dim * torch.log(2.0 * math.pi * self.c2(t)) + self.normaliser(t)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """The model's log-density estimate −E_θ(x, t) + F(t) (the DiffCLF logit).

        Parameters
        ----------
        x : torch.Tensor, shape (B, *event_shape)
            Configurations, in units of the data.
        t : float or torch.Tensor of shape (B,)
            Diffusion time(s).

        Returns
        -------
        torch.Tensor, shape (B,)
            log p_t(x) estimate (dimensionless; a density in units of x^(−d)).
        """
        x = self._check(x)
        t = self._times(t, x)
        return -self.energy(x, t) + self.log_normaliser(t)

    # ------------------------------------------------------------------ parameters and config
    def network_parameters(self):
        """Parameters of g_θ.

        Returns
        -------
        iterator of torch.nn.Parameter
        """
        return self.net.parameters()

    def log_normaliser_parameters(self):
        """Parameters of the log-normaliser residual f_φ (possibly none).

        Returns
        -------
        iterator of torch.nn.Parameter
            Empty for ``log_normaliser="none"``.
        """
        return self.normaliser.parameters()

    def parameter_groups(self, lr: float, log_normaliser_lr: Optional[float] = None, **options) -> list[dict]:
        """Optimizer parameter groups: the network, and the few scalars (the log-normaliser and a
        prior's learned gates) with their own learning rate.

        Parameters
        ----------
        lr : float
            Learning rate of the network.
        log_normaliser_lr : float, optional
            Learning rate of f_φ and of the prior's gates (default ``lr``).
        **options
            Extra options of the network group (e.g. ``weight_decay``); the log-normaliser
            group gets ``weight_decay=0``.

        Returns
        -------
        list of dict
            One group for the network, plus one for f_φ and the gates if there are any; pass to a
            ``torch.optim`` optimizer.
        """
        groups = [dict(params=list(self.network_parameters()), lr=lr, **options)]
        norm_params = list(self.log_normaliser_parameters())
        if self.prior is not None:
            norm_params += list(self.prior.parameters())
        if norm_params:
            groups.append(
                dict(params=norm_params, lr=lr if log_normaliser_lr is None else log_normaliser_lr, weight_decay=0.0)
            )
        return groups

    def config(self) -> dict:
        """JSON-serialisable arguments that rebuild this model with :meth:`from_config`.

        Returns
        -------
        dict
            Constructor keyword arguments (``event_shape``, ``schedule`` as a dict, ``mean_free``,
            ``sigma_data``, ``t_min``, log-normaliser settings, ``output_scale``, ``net_config``,
            ``prior``: the force-field prior's terms or None).
        """
        return {
            "event_shape": list(self.event_shape),
            "schedule": self.schedule.config(),
            "mean_free": self.mean_free,
            "sigma_data": self.sigma_data,
            "t_min": self.t_min,
            "log_normaliser": self.normaliser.kind,
            "n_levels": self.normaliser.n_levels,
            "normaliser_hidden": self.normaliser.hidden,
            "output_scale": self.output_scale,
            "net_config": self.net_config,
            "prior": None if self.prior is None else self.prior.config(),
        }

    @classmethod
    def from_config(cls, config: dict, net: Union[nn.Module, Callable[[dict], nn.Module]]) -> "EnergyModel":
        """Rebuild a model (with fresh parameters) from :meth:`config`.

        Parameters
        ----------
        config : dict
            As returned by :meth:`config`.
        net : torch.nn.Module or callable
            The network g_θ, or a factory called with ``config["net_config"]``.

        Returns
        -------
        EnergyModel
        """
        config = dict(config)
        if not isinstance(net, nn.Module):
            net = net(config.get("net_config"))
        event_shape = config.pop("event_shape")
        return cls(net, event_shape, **config)

    def extra_repr(self) -> str:
        """Summary of the settings shown by ``repr(module)``.

        Returns
        -------
        str
        """
        return (
            f"event_shape={self.event_shape}, mean_free={self.mean_free}, sigma_data={self.sigma_data}, "
            f"t_min={self.t_min}, output_scale={self.output_scale!r}, schedule={self.schedule!r}"
        )
