"""TrainSettings: the recipe chosen by situation, every value overridable, a [training] table
read with errors naming the key."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from training.report import recipe_text
from training.settings import RECIPE_VALUES, TrainSettings


def test_without_imagenet_weights_the_scratch_recipe_is_chosen() -> None:
    s = TrainSettings.from_mapping({})
    assert s.recipe == "scratch" and not s.pretrained
    assert (s.freeze_body, s.max_lr, s.loss, s.mixup, s.augmentation, s.head, s.selection) == (
        False, 1e-3, "ce", False, "dihedral", "linear", "fixed")
    assert s == TrainSettings()  # the dataclass defaults are the scratch recipe's
    assert s.recipe_changes() == {}
    assert "chosen automatically: no ImageNet weights" in recipe_text(s)


def test_with_imagenet_weights_the_papers_recipe_is_chosen() -> None:
    s = TrainSettings.from_mapping({"imagenet_weights": "/models/resnet50-0676ba61.pth"})
    assert s.recipe == "paper" and s.pretrained
    assert (s.epochs, s.folds, s.batch_size, s.max_lr, s.loss) == (40, 5, 32, 4e-2, "f1")
    assert (s.mixup, s.mixup_alpha, s.oversample, s.freeze_body) == (True, 0.4, True, True)
    assert (s.augmentation, s.head, s.selection, s.selection_metric) == ("fastai", "fastai", "nested", "accuracy")
    assert (s.pct_start, s.div_factor, s.final_div_factor) == (0.25, 25.0, 4000.0)
    assert s.max_lr / (s.div_factor * s.final_div_factor) == pytest.approx(4e-2 / 1e5)
    assert (s.max_momentum, s.base_momentum, s.beta2, s.eps, s.weight_decay) == (0.95, 0.85, 0.99, 1e-5, 0.01)
    assert (s.rotate_degrees, s.zoom_max, s.lighting, s.affine_p, s.lighting_p) == (10.0, 1.1, 0.2, 0.75, 0.75)
    assert "chosen automatically: ImageNet weights were given" in recipe_text(s)


def test_every_recipe_value_can_be_overridden_and_is_recorded() -> None:
    s = TrainSettings.from_mapping({"epochs": 15, "max_lr": 2e-3, "mixup": True})
    assert (s.recipe, s.epochs, s.max_lr, s.mixup) == ("scratch", 15, 2e-3, True)
    assert s.recipe_changes() == {"epochs": 15, "max_lr": 2e-3, "mixup": True}
    assert "values changed from the recipe: epochs=15, max_lr=0.002, mixup=True" in recipe_text(s)
    paper = TrainSettings.from_mapping({"recipe": "paper", "imagenet_weights": "/w.pth", "freeze_body": False})
    assert paper.recipe_changes() == {"freeze_body": False}
    asked = TrainSettings.from_mapping({"recipe": "scratch", "imagenet_weights": "/w.pth"})
    assert asked.recipe == "scratch" and "asked for" in recipe_text(asked)


def test_a_frozen_random_body_is_refused_unless_forced() -> None:
    with pytest.raises(ValueError, match="^training.freeze_body: needs ImageNet weights.*training.allow_random_frozen_body"):
        TrainSettings.from_mapping({"recipe": "paper"})
    with pytest.raises(ValueError, match="freeze_body"):
        TrainSettings.from_mapping({"freeze_body": True})
    forced = TrainSettings.from_mapping({"recipe": "paper", "allow_random_frozen_body": True})
    assert forced.freeze_body and "RANDOM weights" in recipe_text(forced)


def test_the_recipes_name_only_fields_that_exist() -> None:
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    for values in RECIPE_VALUES.values():
        assert set(values) <= fields
    assert set(RECIPE_VALUES["paper"]) == set(RECIPE_VALUES["scratch"])


def test_from_toml_table() -> None:
    table = tomllib.loads("[training]\nepochs = 3\nmax_lr = 1\nselection = 'paper'\nimagenet_weights = '/w.pth'\n")["training"]
    s = TrainSettings.from_mapping(table)
    assert (s.epochs, s.max_lr, s.selection, s.pretrained, s.recipe) == (3, 1.0, "paper", True, "paper")
    assert isinstance(s.max_lr, float)


@pytest.mark.parametrize("values,kind,key", [
    ({"epoch": 3}, ValueError, "epoch"),
    ({"epochs": "3"}, TypeError, "epochs"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"loss": "dice"}, ValueError, "loss"),
    ({"selection": "best"}, ValueError, "selection"),
    ({"freeze_body": 1}, TypeError, "freeze_body"),
    ({"max_lr": -1.0}, ValueError, "max_lr"),
    ({"recipe": "fastai"}, ValueError, "recipe"),
    ({"augmentation": "elastic"}, ValueError, "augmentation"),
    ({"head": "mlp"}, ValueError, "head"),
    ({"batchnorm_statistics": "frozen"}, ValueError, "batchnorm_statistics"),
])
def test_errors_name_the_key(values: dict, kind: type, key: str) -> None:
    with pytest.raises(kind, match=f"^training.{key}: "):
        TrainSettings.from_mapping(values)


def test_run_alone_the_training_table_comes_from_the_nodes_config_and_flags_win(tmp_path, monkeypatch) -> None:
    """One way into the settings: ``python -m training.cli`` (torchrun) reads the [training]
    table of the file $EGFR_NODE_CONFIG names, as the node's commands do; the flags override
    it; there is no --config of training's own."""
    from training.cli import _settings, build_parser

    config = tmp_path / "egfr-node.toml"
    config.write_text("[training]\nepochs = 3\nfolds = 4\n")
    monkeypatch.setenv("EGFR_NODE_CONFIG", str(config))
    settings = _settings(build_parser().parse_args(["--cohort", "c.csv", "--out", "o", "--folds", "2"]))
    assert (settings.epochs, settings.folds) == (3, 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cohort", "c.csv", "--config", str(config)])
    config.write_text("[training]\nepochs = 'three'\n")
    with pytest.raises(Exception, match="training.epochs"):
        _settings(build_parser().parse_args(["--cohort", "c.csv"]))
