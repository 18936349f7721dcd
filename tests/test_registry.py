"""Bundled models: found by name as well as by path, listed with their cards."""

import json

import ase.io
import pytest

from mlip.cli import bundled_model, main
from mlip.errors import MlipError
from mlip.potential import Potential
from mlip.registry import bundled_card, bundled_models, default_model, resolve_model


def test_exactly_one_default_and_every_file_loads():
    cards = bundled_models()
    assert sum(card.default for card in cards) == 1
    assert bundled_model() == default_model().path
    for card in cards:
        assert card.path.is_file() and card.test_errors["data"]
        potential = Potential.load(card.name)
        assert potential.config == Potential.load(card.path).config
        # The example structure is what relax and md run with this model when given none.
        example = set(ase.io.read(card.example).get_chemical_symbols())
        assert example <= set(potential.config.species_symbols), card.name


def test_unknown_names_list_the_bundled_ones(tmp_path):
    with pytest.raises(MlipError, match="bundled: mlearn-si"):
        resolve_model("no-such-model")
    with pytest.raises(MlipError, match="no-such-model"):
        Potential.load(tmp_path / "no-such-model")


def test_mlip_models_prints_the_cards(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in rows]
    assert "mlearn-si" in names
    row = rows[names.index("mlearn-si")]
    assert row["elements"] == ["Si"] and row["num_params"] > 0 and "test_errors" in row
    assert main(["models"]) == 0
    assert "mlearn-si" in capsys.readouterr().out


def test_commands_take_a_bundled_name(capsys):
    silicon = bundled_card("mlearn-si").example
    assert main(["predict", "mlearn-si", str(silicon)]) == 0
    assert "eV" in capsys.readouterr().out
