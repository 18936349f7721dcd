"""Equation of state: energies on a grid of volumes and a Birch-Murnaghan fit (ase.eos).

    E(V) = E0 + 9 V0 B0 / 16 {[(V0/V)^(2/3) - 1]^3 B0' + [(V0/V)^(2/3) - 1]^2 [6 - 4 (V0/V)^(2/3)]}

The crystal is scaled isotropically (same fractional coordinates); with ``relax_atoms`` the
positions relax at each fixed volume, which matters for crystals with free internal coordinates.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import ase
import numpy as np

from mlip.errors import MlipError
from mlip.materials.deform import relax_ions, require_periodic, strained


class EosFit(NamedTuple):
    """A Birch-Murnaghan fit. volumes [K] (Å^3) and energies [K] (eV) are the data;
    v0 (Å^3), e0 (eV), b0 (eV/Å^3) and b0_prime (dimensionless) its parameters."""

    volumes: np.ndarray
    energies: np.ndarray
    v0: float
    e0: float
    b0: float
    b0_prime: float


def fit_birch_murnaghan(volumes, energies) -> EosFit:
    """Fit E(V) (Å^3, eV; at least 5 points) by a Birch-Murnaghan curve; MlipError if the data
    have no minimum inside the volume range or the fit fails."""
    from ase.eos import EquationOfState

    volumes, energies = np.asarray(volumes, float), np.asarray(energies, float)
    if len(volumes) < 5 or not np.all(np.isfinite(energies)):
        raise MlipError(f"a Birch-Murnaghan fit needs at least 5 finite energies, got {energies.tolist()}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's covariance warnings; failure is checked below
            eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
            eos.fit(warn=False)
    except (RuntimeError, ValueError) as exc:
        raise MlipError(f"the Birch-Murnaghan fit failed ({exc})") from None
    e0, b0, b0_prime, v0 = (float(x) for x in eos.eos_parameters)
    if not (volumes.min() < v0 < volumes.max()) or b0 <= 0:
        raise MlipError(f"E(V) has no minimum between {volumes.min():.2f} and {volumes.max():.2f} Å^3 "
                        f"(fit: V0 {v0:.2f} Å^3, B0 {b0:.3g} eV/Å^3); relax the structure first or widen --max-strain")
    return EosFit(volumes, energies, v0, e0, b0, b0_prime)


def volume_scan(atoms: ase.Atoms, *, max_strain: float = 0.06, points: int = 7, relax_atoms: bool = False,
                fmax: float = 0.05, steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Volumes [points] (Å^3, V from (1 - max_strain) V_in to (1 + max_strain) V_in) and
    energies [points] (eV) of ``atoms`` (calculator attached) scaled isotropically."""
    require_periodic(atoms, "an equation of state")
    volumes, energies = [], []
    for ratio in np.linspace(1 - max_strain, 1 + max_strain, points):
        scaled = strained(atoms, (ratio ** (1 / 3) - 1) * np.eye(3))
        if relax_atoms:
            relax_ions(scaled, fmax=fmax, steps=steps, what=f"the structure at {ratio:.3f} V")
        volumes.append(scaled.get_volume())
        energies.append(scaled.get_potential_energy())
    return np.array(volumes), np.array(energies)


def equation_of_state(atoms: ase.Atoms, **scan_options) -> EosFit:
    """Birch-Murnaghan fit of ``atoms`` (calculator attached) over a volume scan (`volume_scan`)."""
    return fit_birch_murnaghan(*volume_scan(atoms, **scan_options))


def plot_eos(fit: EosFit, path, *, title: str = "") -> None:
    """Write a PNG of the data and the fitted curve: E (eV) against V (Å^3), B0 in GPa."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ase.eos import birchmurnaghan

    from mlip.units import EV_PER_A3_TO_GPA

    grid = np.linspace(fit.volumes.min(), fit.volumes.max(), 200)
    figure, axes = plt.subplots(figsize=(5, 4), dpi=120)
    axes.plot(grid, birchmurnaghan(grid, fit.e0, fit.b0, fit.b0_prime, fit.v0), label="Birch-Murnaghan")
    axes.plot(fit.volumes, fit.energies, "o", label="mlip")
    axes.set(xlabel="volume (Å$^3$)", ylabel="energy (eV)",
             title=f"{title} V0={fit.v0:.2f} Å$^3$, B0={fit.b0 * EV_PER_A3_TO_GPA:.1f} GPa, B0'={fit.b0_prime:.2f}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
