"""Distillation: seed generation and teacher labelling, with cheap toy teachers (no torch)."""

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip.cli import main
from mlip.data.frame import make_frame
from mlip.data.shards import ShardedDataset
from mlip.distill import label as labelling
from mlip.distill import prototypes as protos
from mlip.distill.chemistry import MPTRJ_ELEMENTS, OXIDATION_STATES, element_weights
from mlip.distill.generate import (MIN_VOLUME, SeedPlan, element_coverage, generate_seeds, spread,
                                   substitute, substitutes)
from mlip.distill.label import Filters, Recipe, label, rejection
from mlip.errors import MlipError

TINY = Recipe(relax_steps=4, relax_keep_every=2, perturbations=2, md_steps=4, md_keep_every=2)


def _seeds(n=4):
    plan = SeedPlan(elemental_per_element=0, compounds=n, random=0, real=0, min_per_element=0)
    return generate_seeds(plan)


def test_the_89_elements_and_their_oxidation_states():
    assert len(MPTRJ_ELEMENTS) == 89 and set(OXIDATION_STATES) == set(MPTRJ_ELEMENTS)
    weights = element_weights([[8, 3], [8], [26, 8]])
    assert weights.shape == (89,) and np.isclose(weights.sum(), 1)
    o, li, he = (MPTRJ_ELEMENTS.index(s) for s in ("O", "Li", "He"))
    assert weights[o] > weights[li] > weights[he] > 0  # counts, then the floor


@pytest.mark.parametrize("prototype", protos.BINARY, ids=lambda p: p.name)
def test_binary_prototypes_are_charge_balanced(prototype):
    pairs = protos.binary_choices(prototype)
    assert len(pairs) > 20
    for cation, anion in pairs[:: max(1, len(pairs) // 15)]:
        q_x = protos.ANION_STATES[anion]
        q_a = -q_x * prototype.n_anion // prototype.n_cation
        assert q_a in OXIDATION_STATES[cation]
        atoms = protos.build_binary(prototype, cation, anion)
        counts = {s: atoms.get_chemical_symbols().count(s) for s in (cation, anion)}
        assert counts[cation] * q_a + counts[anion] * q_x == 0


def test_ternary_prototypes_are_charge_balanced():
    for name, n_a, n_b, n_x, builder in protos.TERNARY:
        triples = protos.ternary_choices(n_a, n_b, n_x)
        a, b, x = triples[len(triples) // 2]
        atoms = protos.build_ternary(builder, (a, b, x))
        symbols = atoms.get_chemical_symbols()
        ratio = symbols.count(x) / symbols.count(a)
        assert ratio == n_x / n_a, name


def test_spread_cells_are_never_denser_than_the_floor():
    tight = bulk("HF", "rocksalt", a=1.76)  # covalent radii: an absurd 0.7 Å^3/atom
    assert tight.get_volume() / len(tight) < 1
    loose = spread(tight)
    assert loose.get_volume() / len(loose) >= MIN_VOLUME - 1e-9
    roomy = bulk("Cu", "fcc", a=3.6)
    np.testing.assert_allclose(spread(roomy).cell.array, roomy.cell.array)  # never shrunk


def test_seeds_have_ids_origins_and_cover_every_element():
    plan = SeedPlan(elemental_per_element=1, compounds=30, random=0, real=0, min_per_element=0)
    seeds = generate_seeds(plan)
    ids = [s.info["seed_id"] for s in seeds]
    assert len(set(ids)) == len(ids) == 89 + 30
    assert {s.info["origin"].split(":")[0] for s in seeds} == {"prototype"}
    assert min(element_coverage(seeds).values()) >= 1
    again = generate_seeds(plan)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(seeds, again))


def test_random_crystals_top_up_rare_elements():
    pytest.importorskip("pyxtal")
    plan = SeedPlan(elemental_per_element=0, compounds=0, random=3, real=0, min_per_element=1,
                    max_atoms=8)
    seeds = generate_seeds(plan)
    assert min(element_coverage(seeds).values()) >= 1
    assert all(len(s) <= 8 and s.info["origin"].startswith("pyxtal:sg=") for s in seeds)


def test_substitutes_keep_the_charge_family():
    assert set(substitutes("O")) == {"S", "Se", "Te"}
    assert "Ba" in substitutes("Sr") and "Cs" not in substitutes("Li")  # radii within 30 %
    assert not substitutes("He") and not substitutes("Po") and all("Xe" not in substitutes(s) for s in MPTRJ_ELEMENTS)
    for symbol in MPTRJ_ELEMENTS:
        for other in substitutes(symbol):
            assert other != symbol and other in MPTRJ_ELEMENTS


def _srtio3():
    return ase.Atoms("SrTiO3", scaled_positions=[[0.5] * 3, [0] * 3, [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
                     cell=np.eye(3) * 3.9, pbc=True)


def test_substitution_swaps_every_atom_of_an_element_and_scales_the_cell():
    srtio3 = _srtio3()
    swapped = substitute(srtio3 * (2, 1, 1), {"Sr": "Ba", "O": "S"})
    assert swapped.get_chemical_formula() == "Ba2S6Ti2"
    assert swapped.get_volume() > 2 * srtio3.get_volume()  # Ba and S are larger
    np.testing.assert_allclose(swapped.get_scaled_positions(), (srtio3 * (2, 1, 1)).get_scaled_positions())


def test_substitution_seeds_come_from_real_frames_of_any_size(tmp_path):
    real = tmp_path / "real.extxyz"
    diamond = tmp_path / "diamond.extxyz"
    ase.io.write(real, [_srtio3() * (2, 2, 2), bulk("NaCl", "rocksalt", a=5.6)])
    ase.io.write(diamond, bulk("C", "diamond", a=3.57))
    plan = SeedPlan(elemental_per_element=0, compounds=0, random=0, real=0, min_per_element=0,
                    substitutions=12, substitution_max_atoms=40, seed=3)
    seeds = generate_seeds(plan, [real])
    assert len(seeds) == 12
    for seed in seeds:
        kind, source, swaps = seed.info["origin"].split(":")
        assert kind == "substitution" and source.startswith("real.extxyz#")
        for swap in swaps.split(","):
            old, new = swap.split(">")
            assert new in substitutes(old) and old not in seed.get_chemical_symbols()
    assert {len(s) for s in seeds} <= {40, 2} and 40 in {len(s) for s in seeds}
    none = SeedPlan(elemental_per_element=0, compounds=0, random=0, real=0, min_per_element=0,
                    substitutions=1, substitution_max_atoms=8)
    with pytest.raises(MlipError, match="substitutions needs periodic real frames of at most 8 atoms"):
        generate_seeds(none)
    with pytest.raises(MlipError, match="an element that has a substitute"):  # would draw for ever
        generate_seeds(none, [diamond])


def test_generate_exclude_adds_only_new_substitutions(tmp_path):
    real = tmp_path / "real.extxyz"
    ase.io.write(real, [_srtio3() * (2, 1, 1), bulk("NaCl", "rocksalt", a=5.6)])
    only = ["--elemental", "0", "--compounds", "0", "--random", "0", "--real", "0", "--min-per-element", "0"]
    first, second = tmp_path / "first.extxyz", tmp_path / "second.extxyz.xz"  # written compressed
    assert main(["generate", str(real), "-o", str(first), "--substitutions", "6", "--seed", "1", *only]) == 0
    assert main(["generate", str(real), "-o", str(second), "--substitutions", "6", "--seed", "2", *only,
                 "--exclude", str(first)]) == 0
    before = [a.info["origin"] for a in ase.io.read(first, ":")]
    after = [a.info["origin"] for a in ase.io.read(second, ":")]
    assert len(after) == len(set(after)) == 6 and not set(after) & set(before)
    assert second.read_bytes().startswith(b"\xfd7zXZ")  # xz's magic: a quarter of the text's size
    # Two small frames have a few hundred distinct substitutions at most: asking for more ends
    # with an error instead of drawing for ever.
    assert main(["generate", str(real), "-o", str(tmp_path / "x.extxyz"), "--substitutions", "1000",
                 *only, "--exclude", str(first)]) == 2
    assert main(["generate", str(real), "-o", str(tmp_path / "x.extxyz"), "--substitutions", "1",
                 *only, "--exclude", str(tmp_path / "missing.extxyz")]) == 2


def _frame(**labels):
    atoms = bulk("Cu", "fcc", a=3.6)
    values = dict(energy=-3.5, forces=np.zeros((1, 3)), stress=np.zeros(6))
    values.update(labels)
    return make_frame(atoms.numbers, atoms.positions, atoms.cell.array, True, **values)


@pytest.mark.parametrize("labels, reason", [
    ({}, None),
    ({"energy": np.nan}, "non-finite label"),
    ({"forces": np.array([[40.0, 0, 0]])}, "force above 30 eV/Å"),
    ({"stress": np.array([2.0, 0, 0, 0, 0, 0])}, "stress above 200 GPa"),  # 320 GPa
    ({"energy": 10.0}, "energy outside [-20, 5] eV/atom"),
])
def test_filters_name_their_reason(labels, reason):
    assert rejection(_frame(**labels), Filters()) == reason


def test_atoms_that_flew_off_are_filtered():
    """A blown-up MD run (seen in SevenNet-0 labels: an atom 1e10 Å away) is dropped; an atom a
    few cells away (diffusion in an unwrapped MD run) is kept."""
    def at(x):
        return make_frame([29, 29], [[0, 0, 0], [x, 1.7, 1.7]], np.eye(3) * 3.6, True, energy=-7.0,
                          forces=np.zeros((2, 3)), stress=np.zeros(6))

    assert rejection(at(1.7 + 5 * 3.6), Filters()) is None
    assert rejection(at(1.56e10), Filters()) == "an atom over 100 cells away (flew off)"


def test_close_atoms_are_filtered():
    frame = make_frame([29, 29], [[0, 0, 0], [0.5, 0, 0]], np.eye(3) * 10, True, energy=-7.0,
                       forces=np.zeros((2, 3)), stress=np.zeros(6))
    assert rejection(frame, Filters()).startswith("atoms closer than")


def test_labelling_keeps_provenance_and_drops_by_reason(tmp_path):
    seeds = _seeds(3)
    report = label(seeds, tmp_path / "labels", teacher="lj", recipe=TINY, progress=False)
    data = ShardedDataset(tmp_path / "labels")
    assert report.seeds_done == 3 and len(data) == report.frames > 0
    methods = {data[i].info["method"].split(":")[0] for i in range(len(data))}
    assert methods <= {"relax", "perturb", "md"} and "relax" in methods
    frame = data[0]
    assert frame.info["teacher"].startswith("ASE Lennard-Jones") and frame.info["seed_id"] in {
        s.info["seed_id"] for s in seeds}
    assert frame.forces is not None and frame.stress is not None
    assert data.meta["energy"] == "mptrj-uncorrected"
    assert data.meta["teacher"]["spec"] == "lj"
    # Labels equal the teacher's own numbers (float32 storage: ~1e-6 relative).
    atoms = frame.to_atoms()
    atoms.calc = labelling.get_teacher("lj").build()
    np.testing.assert_allclose(atoms.get_forces(), frame.forces, atol=1e-4)
    # A filter nothing passes: every frame dropped, counted under its reason.
    strict = label(seeds, tmp_path / "strict", teacher="lj", recipe=TINY,
                   filters=Filters(max_force=-1.0), progress=False)
    assert strict.frames == 0 and sum(strict.dropped.values()) == report.frames
    assert set(strict.dropped) == {"force above -1 eV/Å"}


def test_split_by_seed_keeps_each_seeds_frames_on_one_side(tmp_path):
    """valid_group: every frame of a seed (and of a source listed twice) lands on one side of
    the split; frames without the key are split one by one; no group leaves validation empty."""
    from mlip.train.data import Concat, split

    label(_seeds(6), tmp_path / "labels", teacher="lj", recipe=TINY, progress=False)
    data = ShardedDataset(tmp_path / "labels")
    loose = [make_frame([29, 29], [[0, 0, 0], [1.8, 1.8, 0]], np.eye(3) * 3.6, True, energy=-7.0)
             for _ in range(4)]
    both = Concat([data, data, loose])
    train, valid = split(both, 0.3, seed=0, group="seed_id")
    assert len(train) + len(valid) == len(both) and len(valid) >= round(0.3 * len(both))

    def seeds_of(subset):
        return {both[int(i)].info.get("seed_id", f"frame {i}") for i in subset.indices}

    assert seeds_of(train) and seeds_of(valid) and not seeds_of(train) & seeds_of(valid)
    # Frame by frame (the default) is unchanged: a permutation's first frames validate.
    order = np.random.default_rng(0).permutation(len(both))
    _, plain = split(both, 0.3, seed=0)
    np.testing.assert_array_equal(plain.indices, np.sort(order[:round(0.3 * len(both))]))
    with pytest.raises(MlipError, match="by 'teacher': 1 group"):  # one teacher, one group
        split(data, 0.3, seed=0, group="teacher")


def test_refilter_drops_failing_frames_and_keeps_the_rest_unchanged(tmp_path):
    from mlip.distill.label import refilter

    out = tmp_path / "labels"
    label(_seeds(3), out, teacher="lj", recipe=TINY, seeds_per_shard=1, progress=False)
    before = ShardedDataset(out)
    frames = [before[i] for i in range(len(before))]
    largest = [float(np.linalg.norm(f.forces, axis=1).max()) for f in frames]
    bound = float(np.median(largest))
    dropped = refilter(out, Filters(max_force=bound))
    after = ShardedDataset(out)
    kept = [f for f, force in zip(frames, largest) if force <= bound]
    assert sum(dropped.values()) == len(frames) - len(kept) > 0 and len(after) == len(kept)
    for i, frame in enumerate(kept):  # bit for bit, provenance included
        np.testing.assert_array_equal(after[i].positions, frame.positions)
        np.testing.assert_array_equal(after[i].forces, frame.forces)
        assert after[i].info == frame.info
    assert after.meta["dropped"][f"force above {bound:g} eV/Å"] == sum(dropped.values())
    assert sum(after.meta["by_method"].values()) == len(kept)
    assert after.meta["seeds_done"] == before.meta["seeds_done"]
    assert not out.with_name("labels.old").exists() and not out.with_name("labels.new").exists()


def test_labelling_resumes_and_refuses_to_mix(tmp_path):
    seeds = _seeds(4)
    out = tmp_path / "labels"
    first = label(seeds[:2], out, teacher="lj", recipe=TINY, seeds_per_shard=1, progress=False)
    with pytest.raises(MlipError, match="--resume"):
        label(seeds, out, teacher="lj", recipe=TINY, progress=False)
    with pytest.raises(MlipError, match="another teacher"):
        label(seeds, out, teacher="emt", recipe=TINY, resume=True, progress=False)
    with pytest.raises(MlipError, match="another recipe"):
        label(seeds, out, teacher="lj", recipe=Recipe(), resume=True, progress=False)
    done = label(seeds, out, teacher="lj", recipe=TINY, resume=True, progress=False)
    assert done.seeds_done == 4 and done.frames > first.frames
    whole = label(seeds, tmp_path / "whole", teacher="lj", recipe=TINY, progress=False)
    assert whole.frames == done.frames  # per-seed random streams: resuming changes nothing
    again = label(seeds, out, teacher="lj", recipe=TINY, resume=True, progress=False)
    assert again.frames == done.frames  # nothing left to do


def test_an_interrupted_run_keeps_every_finished_seed(tmp_path, monkeypatch):
    seeds = _seeds(4)
    real = labelling.label_seed
    calls = []

    def interrupted(seed, *args):
        calls.append(seed.info["seed_id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(seed, *args)

    monkeypatch.setattr(labelling, "label_seed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label(seeds, tmp_path / "labels", teacher="lj", recipe=TINY, seeds_per_shard=10,
              progress=False)
    data = ShardedDataset(tmp_path / "labels")
    assert data.meta["seeds_done"] == calls[:2]
    monkeypatch.setattr(labelling, "label_seed", real)
    done = label(seeds, tmp_path / "labels", teacher="lj", recipe=TINY, resume=True, progress=False)
    assert done.seeds_done == 4


def test_a_teacher_error_drops_the_seed_not_the_run(tmp_path):
    seeds = _seeds(2)
    seeds[0].info["seed_id"], seeds[1].info["seed_id"] = "ok", "bad"
    seeds[1].numbers[:] = 200  # no such element: the teacher fails on it
    report = label(seeds, tmp_path / "labels", teacher="lj", recipe=TINY, progress=False)
    assert report.seeds_done == 2 and any(r.startswith("teacher error") for r in report.dropped)


def test_several_workers_give_the_same_frames(tmp_path):
    seeds = _seeds(2)
    one = label(seeds, tmp_path / "one", teacher="lj", recipe=TINY, progress=False)
    two = label(seeds, tmp_path / "two", teacher="lj", recipe=TINY, workers=2, progress=False)
    assert one.frames == two.frames

    def energies(path):
        data = ShardedDataset(path)
        return sorted((f.info["seed_id"], f.info["method"], round(f.energy, 5))
                      for f in (data[i] for i in range(len(data))))

    assert energies(tmp_path / "one") == energies(tmp_path / "two")


def test_generate_and_label_from_the_command_line(tmp_path, capsys):
    seeds = tmp_path / "seeds.extxyz"
    assert main(["generate", "-o", str(seeds), "--elemental", "0", "--compounds", "2",
                 "--random", "0", "--real", "0", "--min-per-element", "0"]) == 0
    assert "2 seeds" in capsys.readouterr().out
    out = tmp_path / "labels"
    args = ["label", str(seeds), "-o", str(out), "--teacher", "lj", "--relax-steps", "3",
            "--perturbations", "1", "--rattle", "0.01", "0.02", "--strain", "0.01", "--md-steps", "2",
            "--md-temperature", "300", "400", "-q"]
    assert main(args) == 0
    assert "from 2/2 seeds" in capsys.readouterr().out
    data = ShardedDataset(out)
    assert data.meta["recipe"]["rattle"] == [0.01, 0.02] and data.meta["recipe"]["md_temperature"] == [300, 400]
    methods = [data[i].info["method"] for i in range(len(data))]
    for method in methods:
        if method.startswith("perturb"):
            rattle, strain = (float(part.split("=")[1]) for part in method.split(":")[1].split(","))
            assert 0.01 <= rattle <= 0.02 and strain <= 0.01
        if method.startswith("md"):
            assert 300 <= float(method.split("T=")[1].split("K")[0]) <= 400
    assert main(args[:-3] + ["500", "400", "-q"]) == 2 and "md-temperature" in capsys.readouterr().err
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    assert main(["label", str(tmp_path / "missing.xyz"), "-o", str(out)]) == 2
    assert main(["label", str(seeds), "-o", str(tmp_path / "x"), "--teacher", "nope"]) == 2
    assert "unknown teacher" in capsys.readouterr().err


def test_sigterm_stops_mlip_label_keeping_finished_seeds(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import ase.io

    ase.io.write(tmp_path / "seeds.extxyz", _seeds(40))
    out = tmp_path / "labels"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlip.cli", "label", str(tmp_path / "seeds.extxyz"), "-o", str(out),
         "--teacher", "lj", "--seeds-per-shard", "1", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "index.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in err
    done = ShardedDataset(out).meta["seeds_done"]
    assert 1 <= len(done) < 40
