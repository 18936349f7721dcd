"""Units and conversions. Inside the code: Å, eV, eV/Å, eV/Å^3 with ASE's stress sign
(positive = tensile). Other units appear only at the edges (readers, CLI, benchmarks)."""

#: 1 eV/Å^3 in GPa.
EV_PER_A3_TO_GPA = 160.21766208
#: 1 kBar in eV/Å^3 (1 kBar = 0.1 GPa).
KBAR_TO_EV_PER_A3 = 0.1 / EV_PER_A3_TO_GPA


def vasp_kbar_to_ase_stress(stress_kbar):
    """VASP stress (kBar, compressive positive) -> ASE stress (eV/Å^3, tensile positive).

    stress_ase = -0.1 * stress_kbar / 160.2177. Works on any array shape (3x3 or Voigt).
    """
    return -KBAR_TO_EV_PER_A3 * stress_kbar
