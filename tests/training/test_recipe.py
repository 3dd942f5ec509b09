"""The recipe: the zoo entry's defaults, the options on top, and every bad option refused by name."""

from __future__ import annotations

import math

import pytest

from cnnserve.training.errors import TrainingError
from cnnserve.training.recipe import DEFAULT_LEARNING_RATES, Recipe, default_recipe, resolve_recipe
from cnnserve.training.zoo import ZOO, get_entry


def test_every_zoo_entry_has_a_valid_default_recipe() -> None:
    for entry in ZOO.values():
        recipe = default_recipe(entry)
        assert recipe.epochs == entry.epochs and recipe.batch_size == entry.batch_size
        assert recipe.learning_rate == (entry.learning_rate or DEFAULT_LEARNING_RATES[entry.optimizer])
        assert recipe.augmentation == (entry.augmentation if entry.augment else "none")
        assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_options_override_the_defaults() -> None:
    entry = get_entry("mnist_cnn")
    recipe = resolve_recipe(
        entry,
        epochs=3,
        batch_size=16,
        learning_rate=0.01,
        schedule="plateau",
        patience=4,
        augment=False,
        validation_split=0.3,
    )
    assert (recipe.epochs, recipe.batch_size, recipe.learning_rate) == (3, 16, 0.01)
    assert (recipe.schedule, recipe.patience, recipe.validation_split) == ("plateau", 4, 0.3)
    assert recipe.augmentation == "none" and not recipe.augment
    assert resolve_recipe(get_entry("mnist_mlp"), augment=True).augmentation == "affine"
    assert resolve_recipe(entry, patience=0).patience is None  # 0 turns early stopping off


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"learning_rate": 0.0}, "--lr must be a positive number, not 0"),
        ({"learning_rate": -0.01}, "--lr must be a positive number, not -0.01"),
        ({"learning_rate": math.nan}, "--lr must be a positive number"),
        ({"validation_split": 0.0}, r"--validation-split must be in \(0, 0.5\], not 0"),
        ({"validation_split": 0.51}, r"--validation-split must be in \(0, 0.5\], not 0.51"),
        ({"validation_split": -0.1}, r"--validation-split must be in \(0, 0.5\]"),
        ({"schedule": "step"}, "unknown --schedule 'step'"),
        ({"patience": -1}, "--patience must be 0"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch size must be at least 1"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        resolve_recipe(get_entry("mnist_cnn"), **options)  # type: ignore[arg-type]
