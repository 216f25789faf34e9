"""TrainSettings: the paper's values by default, a [training] table read with errors naming the key."""

from __future__ import annotations

import tomllib

import pytest

from training.settings import TrainSettings


def test_defaults_are_the_papers_and_methods_values() -> None:
    s = TrainSettings()
    assert (s.epochs, s.folds, s.batch_size, s.max_lr, s.loss) == (40, 5, 32, 4e-2, "f1")
    assert (s.mixup, s.mixup_alpha, s.oversample, s.freeze_body) == (True, 0.4, True, True)
    assert (s.pct_start, s.div_factor, s.final_div_factor) == (0.25, 25.0, 4000.0)
    assert s.max_lr / (s.div_factor * s.final_div_factor) == pytest.approx(4e-2 / 1e5)
    assert (s.max_momentum, s.base_momentum, s.beta2, s.eps, s.weight_decay) == (0.95, 0.85, 0.99, 1e-5, 0.01)
    assert (s.rotate_degrees, s.zoom_max, s.lighting, s.affine_p, s.lighting_p) == (10.0, 1.1, 0.2, 0.75, 0.75)
    assert s.selection == "nested" and not s.pretrained


def test_from_toml_table() -> None:
    table = tomllib.loads("[training]\nepochs = 3\nmax_lr = 1\nselection = 'paper'\nimagenet_weights = '/w.pth'\n")["training"]
    s = TrainSettings.from_mapping(table)
    assert (s.epochs, s.max_lr, s.selection, s.pretrained) == (3, 1.0, "paper", True)
    assert isinstance(s.max_lr, float)


@pytest.mark.parametrize("values,kind,key", [
    ({"epoch": 3}, ValueError, "epoch"),
    ({"epochs": "3"}, TypeError, "epochs"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"loss": "dice"}, ValueError, "loss"),
    ({"selection": "best"}, ValueError, "selection"),
    ({"freeze_body": 1}, TypeError, "freeze_body"),
    ({"max_lr": -1.0}, ValueError, "max_lr"),
])
def test_errors_name_the_key(values: dict, kind: type, key: str) -> None:
    with pytest.raises(kind, match=f'"?{key}"?'):
        TrainSettings.from_mapping(values)
