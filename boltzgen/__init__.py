"""boltzgen: unbiased Boltzmann samples and free energies from diffusion-trained energy models.

Conventions (units, shapes, reduced energies) are described in ``docs/conventions.md``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(run_dir):
    """The trained energy model of a ``boltzgen train`` run directory (see :func:`boltzgen.train.load_model`)."""
    from .train import load_model as _load_model

    return _load_model(run_dir)
