"""boltzgen: unbiased Boltzmann samples and free energies from diffusion-trained energy models.

Conventions (units, shapes, reduced energies) are described in ``docs/conventions.md``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
