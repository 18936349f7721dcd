"""Bundled models: a registry of potential files shipped in ``mlip/assets``, each with its card.

``mlip/assets/models.json`` lists every bundled model: its name, file, whether it is the
default of the commands that take ``--model``, an example structure of its elements (what
``mlip relax`` and ``mlip md`` run when given none), and its model card (training data, teacher,
test errors and the command that measured them). `resolve_model` turns what a user typed
(a bundled name or a path) into a file.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path
from typing import Any

from mlip.errors import MlipError

_REGISTRY = "models.json"


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """One bundled model.

    Attributes:
        name: what users type (``--model NAME``, ``Potential.load(NAME)``).
        path: the potential file.
        default: whether commands use it when no model is given.
        example: a bundled structure (extxyz) of elements the model knows, which commands run
            when no structure is given.
        description, training_data: prose.
        teacher: the teacher it was distilled from, or None.
        test_errors: measured errors ({"data": ..., "energy_mae_mev_per_atom": ...}).
        command: how the model was trained and measured.
    """

    name: str
    path: Path
    default: bool
    example: Path
    description: str
    training_data: str
    teacher: str | None
    test_errors: dict[str, Any]
    command: str


def _assets() -> Path:
    return Path(str(resources.files("mlip") / "assets"))


def bundled_models() -> list[ModelCard]:
    """Every bundled model, in registry order."""
    entries = json.loads((_assets() / _REGISTRY).read_text())["models"]
    fields = {f.name for f in dataclasses.fields(ModelCard)} - {"path", "example"}
    return [ModelCard(path=_assets() / entry["file"], example=_assets() / entry["example"],
                      **{k: entry[k] for k in fields})
            for entry in entries]


def default_model() -> ModelCard:
    """The bundled model used when a command is given none."""
    return next(card for card in bundled_models() if card.default)


def bundled_card(name: str) -> ModelCard:
    """The card of the bundled model called ``name``; MlipError naming the choices if none is."""
    cards = bundled_models()
    for card in cards:
        if card.name == name:
            return card
    names = ", ".join(card.name for card in cards)
    raise MlipError(f"{name}: no such potential file or bundled model (bundled: {names})")


def resolve_model(name_or_path) -> Path:
    """The potential file for a bundled model's name or a path; MlipError naming the choices
    when it is neither."""
    path = Path(name_or_path)
    return path if path.exists() else bundled_card(str(name_or_path)).path
