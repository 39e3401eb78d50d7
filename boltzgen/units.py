"""Physical constants and unit helpers shared by the whole package.

Lengths are in nm, energies in kJ/mol and temperatures in K at the OpenMM boundary; inside
algorithms every energy is reduced, u = U / kT (dimensionless), and forces are in kT/nm.
"""

from __future__ import annotations

import openmm.unit as _unit

#: Molar gas constant in kJ/(mol K), the value OpenMM itself uses.
MOLAR_GAS_CONSTANT = _unit.MOLAR_GAS_CONSTANT_R.value_in_unit(_unit.kilojoule_per_mole / _unit.kelvin)

#: Temperature (K) at which kT = 1 kJ/mol: the OpenMM form of reduced-unit systems (LJ clusters,
#: analytic targets) maps one energy unit to 1 kJ/mol at this temperature.
REDUCED_UNIT_TEMPERATURE = 1.0 / MOLAR_GAS_CONSTANT


def kT_of(temperature: float) -> float:
    """Thermal energy kT = R T in kJ/mol.

    Parameters
    ----------
    temperature : float
        Temperature in K (positive).

    Returns
    -------
    float
        kT in kJ/mol (R = :data:`MOLAR_GAS_CONSTANT`, OpenMM's value).

    Raises
    ------
    ValueError
        For a non-positive temperature.
    """
    temperature = float(temperature)
    if not temperature > 0.0:
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    return MOLAR_GAS_CONSTANT * temperature
