"""Diffusion paths: noise schedules, forward marginals, transition kernels and mean-free noise."""

from .noise import event_dim, gaussian_log_prob, project_mean_free, q_sample, sample_noise, sq_norm
from .schedules import Schedule, VESchedule, VPSchedule, schedule_from_config

__all__ = [
    "Schedule",
    "VPSchedule",
    "VESchedule",
    "schedule_from_config",
    "project_mean_free",
    "event_dim",
    "sample_noise",
    "sq_norm",
    "gaussian_log_prob",
    "q_sample",
]
