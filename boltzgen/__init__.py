"""boltzgen: unbiased Boltzmann samples and free energies from diffusion-trained energy models.

Conventions (units, shapes, reduced energies) are described in ``docs/design.md``.
"""

from .version import __version__

__all__ = ["__version__", "load_model"]


def load_model(run_dir):
    """The trained energy model of a ``boltzgen train`` run directory.

    Same as :func:`boltzgen.model.load_model`, imported lazily so that ``import boltzgen``
    stays light (no torch import).

    Parameters
    ----------
    run_dir : str
        A directory written by ``boltzgen train``.

    Returns
    -------
    boltzgen.model.TrainedModel
        EMA weights in eval mode; ``energy(x, t)`` and ``score(x, t)`` take x in data units
        (nm for molecules).
    """
    from .model import load_model as load

    return load(run_dir)
