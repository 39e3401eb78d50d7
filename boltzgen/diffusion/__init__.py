"""Diffusion paths: noise schedules, forward marginals and transition kernels."""

from .schedules import VPSchedule

__all__ = ["VPSchedule"]
