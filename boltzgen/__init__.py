"""boltzgen: unbiased Boltzmann samples and free energies from diffusion-trained energy models.

Conventions (units, shapes, reduced energies) are described in ``docs/conventions.md``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(run_dir):
    """The trained energy model of a ``boltzgen train`` run directory.

    Same as :func:`boltzgen.train.load_model`, imported lazily so that ``import boltzgen``
    stays light.

    Parameters
    ----------
    run_dir : str
        A directory written by ``boltzgen train``.

    Returns
    -------
    boltzgen.train.TrainedModel
        EMA weights in eval mode; ``energy(x, t)`` and ``score(x, t)`` take x in data units
        (nm for molecules).
    """
    from .train import load_model as _load_model

    return _load_model(run_dir)
