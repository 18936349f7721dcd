"""`mlip export`: the jax.export artifact equals the Python potential, and loads with jax alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

import mlip.exported
from mlip.cli import main
from mlip.data.frame import frame_from_atoms
from mlip.data.neighbors import neighbor_list
from mlip.potential import Potential

LOADER = Path(mlip.exported.__file__)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny float64 Si/O potential, its file and its exported artifact."""
    folder = tmp_path_factory.mktemp("export")
    potential = Potential.create("small", species=["Si", "O"], r_cut=3.5, seed=2, dtype="float64", channels=8,
                                 mixing_hidden=16, readout_hidden=8)
    potential.save(folder / "tiny.mlip")
    assert main(["export", str(folder / "tiny.mlip"), "-o", str(folder / "tiny.mlipx")]) == 0
    return potential, folder / "tiny.mlipx"


def structures():
    """A triclinic periodic Si/O crystal and a molecule-like open cluster (no stress)."""
    crystal = bulk("Si", "diamond", a=5.43, cubic=True)
    crystal.set_cell(crystal.cell.array @ np.array([[1.0, 0, 0], [0.1, 0.97, 0], [-0.06, 0.09, 1.02]]), scale_atoms=True)
    crystal.numbers[[1, 5]] = 8
    crystal.rattle(0.05, seed=0)
    cluster = crystal.copy()
    cluster.pbc = False
    cluster.center(vacuum=3.0)
    return [crystal, cluster]


def test_artifact_metadata(tiny):
    potential, path = tiny
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("metadata.json"))
    assert meta["species_symbols"] == ["Si", "O"] and meta["r_cut"] == 3.5 and meta["dtype"] == "float64"
    assert meta["receptive_field"] == 2 * 3.5 and meta["kernel"] == "reference"
    assert set(meta["platforms"]) == {"cpu", "cuda"}


def test_loader_needs_only_jax_and_equals_the_potential(tmp_path, tiny):
    """A fresh interpreter loads the loader file by path (no mlip, no flax imported) and computes
    energy, per-atom energies, forces and stress equal to Potential.predict (float64)."""
    potential, path = tiny
    cases = structures()
    graphs = {}
    for k, atoms in enumerate(cases):
        edges = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, potential.config.r_cut)
        graphs.update({f"{k}_numbers": atoms.numbers, f"{k}_positions": atoms.positions, f"{k}_cell": atoms.cell.array,
                       f"{k}_pbc": atoms.pbc, f"{k}_senders": edges.senders, f"{k}_receivers": edges.receivers,
                       f"{k}_shifts": edges.shifts})
    np.savez(tmp_path / "graphs.npz", **graphs)
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        spec = importlib.util.spec_from_file_location("exported", {str(LOADER)!r})
        exported = importlib.util.module_from_spec(spec); spec.loader.exec_module(exported)
        potential = exported.load({str(path)!r})
        g = np.load({str(tmp_path / "graphs.npz")!r})
        out = {{}}
        for k in range({len(cases)}):
            p = potential.predict(*(g[f"{{k}}_{{name}}"] for name in
                                    ("numbers", "positions", "cell", "pbc", "senders", "receivers", "shifts")))
            out.update({{f"{{k}}_energy": p.energy, f"{{k}}_energies": p.energies, f"{{k}}_forces": p.forces}})
            if p.stress is not None:
                out[f"{{k}}_stress"] = p.stress
        np.savez({str(tmp_path / "out.npz")!r}, **out)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("mlip", "flax", "e3nn_jax", "kernels"))
        assert not leaked, leaked
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for k, reference in enumerate(potential.predict([frame_from_atoms(a) for a in cases])):
        assert float(out[f"{k}_energy"]) == pytest.approx(reference.energy, rel=1e-10)
        np.testing.assert_allclose(out[f"{k}_energies"], reference.energies, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out[f"{k}_forces"], reference.forces, rtol=0, atol=1e-10)
        if reference.stress is None:
            assert f"{k}_stress" not in out
        else:
            np.testing.assert_allclose(out[f"{k}_stress"], reference.stress, rtol=0, atol=1e-10)
    assert "0_stress" in out and "1_stress" not in out


def test_export_refuses_other_suffix(tmp_path, tiny, capsys):
    potential, path = tiny
    assert main(["export", str(path.with_suffix(".mlip")), "-o", str(tmp_path / "model.bin")]) == 2
    assert "NAME.mlipx" in capsys.readouterr().err


def test_loader_refuses_other_files(tmp_path, tiny):
    potential, path = tiny
    with pytest.raises(ValueError, match="not an exported mlip potential"):
        mlip.exported.load(path.with_suffix(".mlip"))
