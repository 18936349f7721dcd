"""Elastic constants by finite strain-stress fits, and their Voigt-Reuss-Hill averages.

For each Voigt component j (xx yy zz yz xz xy) the crystal is strained by ±0.5% and ±1%
(engineering shear: ε_yz = ε_zy = s/2 for Voigt strain s), the stress is computed (ASE sign,
tensile positive, so σ = C ε), and C_ij is the slope of σ_i against s by least squares. The
fit's slope is unaffected by any residual stress of the reference. With ``relax_atoms`` the
positions relax in each strained cell (relaxed-ion constants, what experiment and DFT report
for crystals with internal degrees of freedom such as diamond's C44).
"""

from __future__ import annotations

from typing import NamedTuple

import ase
import numpy as np

from mlip.errors import MlipError
from mlip.materials.deform import relax_ions, require_periodic, strained

#: Default Voigt strains (dimensionless).
STRAINS = (-0.01, -0.005, 0.005, 0.01)
#: Voigt index -> the symmetric tensor entries it strains.
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


class Moduli(NamedTuple):
    """Polycrystalline averages from a 6x6 stiffness, all in the stiffness's units except the
    dimensionless Poisson ratio: bulk and shear moduli (Voigt, Reuss, Hill), Young's modulus and
    Poisson ratio (from the Hill averages)."""

    bulk_voigt: float
    bulk_reuss: float
    bulk_hill: float
    shear_voigt: float
    shear_reuss: float
    shear_hill: float
    young: float
    poisson: float


def voigt_strain(index: int, magnitude: float) -> np.ndarray:
    """[3, 3] symmetric strain tensor with Voigt component ``index`` equal to ``magnitude``."""
    a, b = VOIGT_PAIRS[index]
    strain = np.zeros((3, 3))
    value = magnitude if a == b else magnitude / 2
    strain[a, b] = strain[b, a] = value
    return strain


def voigt_stress(stress: np.ndarray) -> np.ndarray:
    """[6] Voigt stress (xx yy zz yz xz xy) of a [3, 3] or [6] ASE stress (eV/Å^3)."""
    stress = np.asarray(stress)
    return stress if stress.shape == (6,) else np.array([stress[a, b] for a, b in VOIGT_PAIRS])


def stiffness(atoms: ase.Atoms, *, strains=STRAINS, relax_atoms: bool = False, fmax: float = 0.05,
              steps: int = 200) -> np.ndarray:
    """[6, 6] symmetrised stiffness C (eV/Å^3) of ``atoms`` (calculator attached, 3D periodic)."""
    require_periodic(atoms, "elastic constants")
    strains = np.asarray(strains, float)
    if len(strains) < 2 or np.any(strains == 0):
        raise MlipError(f"elastic constants need at least two non-zero strains, got {strains.tolist()}")
    stiffness = np.zeros((6, 6))
    for j in range(6):
        stresses = []
        for s in strains:
            deformed = strained(atoms, voigt_strain(j, s))
            if relax_atoms:
                relax_ions(deformed, fmax=fmax, steps=steps, what=f"the structure at Voigt strain {j + 1} = {s:+g}")
            stresses.append(voigt_stress(deformed.get_stress()))
        stiffness[:, j] = np.polyfit(strains, np.array(stresses), 1)[0]
    # The fit's asymmetry is noise (finite strains, relaxation tolerance): keep the symmetric part.
    return 0.5 * (stiffness + stiffness.T)


def moduli(c: np.ndarray) -> Moduli:
    """Voigt-Reuss-Hill bulk and shear moduli, Young's modulus and Poisson ratio of a [6, 6]
    stiffness ``c``; MlipError when it is not positive definite (mechanically unstable)."""
    if np.linalg.eigvalsh(c).min() <= 0:
        raise MlipError("the stiffness matrix is not positive definite: the structure is mechanically unstable "
                        "(or not relaxed: drop --no-relax)")
    s = np.linalg.inv(c)
    diag, off, shear = np.trace(c[:3, :3]), c[0, 1] + c[1, 2] + c[0, 2], np.trace(c[3:, 3:])
    bulk_voigt, shear_voigt = (diag + 2 * off) / 9, (diag - off + 3 * shear) / 15
    s_diag, s_off, s_shear = np.trace(s[:3, :3]), s[0, 1] + s[1, 2] + s[0, 2], np.trace(s[3:, 3:])
    bulk_reuss, shear_reuss = 1 / (s_diag + 2 * s_off), 15 / (4 * s_diag - 4 * s_off + 3 * s_shear)
    bulk, shear_mod = (bulk_voigt + bulk_reuss) / 2, (shear_voigt + shear_reuss) / 2
    young = 9 * bulk * shear_mod / (3 * bulk + shear_mod)
    poisson = (3 * bulk - 2 * shear_mod) / (2 * (3 * bulk + shear_mod))
    return Moduli(*(float(x) for x in (bulk_voigt, bulk_reuss, bulk, shear_voigt, shear_reuss, shear_mod,
                                        young, poisson)))


def plot_stiffness(c_gpa: np.ndarray, path, *, title: str = "") -> None:
    """Write a PNG heat map of a [6, 6] stiffness in GPa with the values printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4.3), dpi=120)
    limit = np.abs(c_gpa).max()
    image = axes.imshow(c_gpa, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for i in range(6):
        for j in range(6):
            dark = abs(c_gpa[i, j]) > 0.6 * limit
            axes.text(j, i, round(float(c_gpa[i, j])), ha="center", va="center", fontsize=8,
                      color="white" if dark else "black")
    labels = [f"{k}" for k in range(1, 7)]
    axes.set(xticks=range(6), yticks=range(6), xticklabels=labels, yticklabels=labels,
             title=f"{title} C$_{{ij}}$ (GPa)")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
