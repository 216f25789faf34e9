"""Recipe parts: soft-F1 loss, mixup, batch augmentation, frozen body, oversampling, one-cycle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import augment_batch, mixup_batch
from pipeline.model.aggregate import aggregate_slices
from training.engine import (
    FoldResult,
    build_model, choose_aggregation_and_threshold, epoch_batches, make_optimizer, make_scheduler,
)
from training.lr_find import lr_range_test, valley
from training.losses import soft_f1_loss
from training.settings import TrainSettings


def test_soft_f1_loss() -> None:
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    perfect = torch.tensor([[-20.0, 20.0], [20.0, -20.0], [-20.0, 20.0]])
    assert float(soft_f1_loss(perfect, targets)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_f1_loss(-perfect, targets)) == pytest.approx(1.0, abs=1e-6)
    logits = torch.zeros(3, 2, requires_grad=True)
    soft_f1_loss(logits, targets).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_mixup_keeps_the_larger_share() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 4, 4).contiguous()
    y = torch.nn.functional.one_hot(torch.tensor([0, 1] * 4), 2).float()
    mx, my = mixup_batch(x, y, 0.4, g)
    assert torch.allclose(my.sum(1), torch.ones(8))
    # lambda >= 0.5: each mixed target keeps at least half of its own label
    assert bool(((my * y).sum(1) >= 0.5 - 1e-6).all())
    assert not torch.equal(mx, x)


@pytest.mark.parametrize("augmentation", ["fastai", "dihedral"])
def test_augmentation_is_seeded_and_off_when_disabled(augmentation: str) -> None:
    x = torch.randn(6, 3, 32, 32)
    s = TrainSettings(augmentation=augmentation)
    a = augment_batch(x, s, torch.Generator().manual_seed(1))
    b = augment_batch(x, s, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x) and a.shape == x.shape
    off = s.replace(affine_p=0.0, lighting_p=0.0, flip_p=0.0) if augmentation == "fastai" else s.replace(augmentation="none")
    assert torch.equal(augment_batch(x, off, torch.Generator().manual_seed(1)), x)


def test_dihedral_augmentation_turns_and_mirrors_whole_images() -> None:
    """Every image comes out as one of the 8 symmetries of itself (no resampling), and all 8 occur."""
    x = torch.randn(1, 1, 8, 8).expand(400, 1, 8, 8).contiguous()
    out = augment_batch(x, TrainSettings(augmentation="dihedral"), torch.Generator().manual_seed(3))
    variants = [torch.rot90(v, k, dims=(-2, -1)) for v in (x[0], x[0].flip(-1)) for k in range(4)]
    seen = [next(i for i, v in enumerate(variants) if torch.equal(image, v)) for image in out]
    assert sorted(set(seen)) == list(range(8))


def test_frozen_body_trains_only_head_and_batchnorm() -> None:
    model = build_model(TrainSettings(freeze_body=True, allow_random_frozen_body=True, head="fastai"), seed=0)
    for name, p in model.named_parameters():
        if name.startswith("head."):
            assert p.requires_grad, name
        elif ".bn" in name or "downsample.1" in name or name.startswith("body.1."):
            assert p.requires_grad, name  # BatchNorm in the body
        else:
            assert not p.requires_grad, name
    full = build_model(TrainSettings(freeze_body=False), seed=0)
    assert all(p.requires_grad for p in full.parameters())
    opt = make_optimizer(model, TrainSettings())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])  # no BatchNorm / bias parameter decays


def test_one_cycle_matches_fastai() -> None:
    s = TrainSettings.from_mapping({"recipe": "paper", "imagenet_weights": "/w.pth", "epochs": 4})
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, s)
    sched = make_scheduler(opt, s, steps_per_epoch=10)
    lrs, betas = [], []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(4e-2 / 25)
    assert max(lrs) == pytest.approx(4e-2, rel=1e-3) and int(np.argmax(lrs)) in (9, 10)
    assert lrs[-1] < 4e-2 / 1e4
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85, abs=1e-3)


def test_oversampling_draws_classes_about_equally() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([torch.cat(epoch_batches(labels, TrainSettings(batch_size=10), g)) for _ in range(20)])
    share = float(labels[drawn].float().mean())
    assert 0.42 < share < 0.58
    plain = torch.cat(epoch_batches(labels, TrainSettings(batch_size=10, oversample=False), g))
    assert float(labels[plain].float().mean()) == pytest.approx(0.1)


def test_mixup_lambda_is_beta_distributed() -> None:
    """Johnk's Beta(0.4, 0.4) draws, taken without a host sync, have the Beta's moments."""
    from training.augment import _beta

    draws = _beta(20000, 0.4, torch.Generator().manual_seed(3), torch.device("cpu")).double()
    assert draws.shape == (20000,) and bool(((draws >= 0) & (draws <= 1)).all())
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(draws.var()) == pytest.approx(0.25 / 1.8, abs=0.01)  # a^2 / ((2a)^2 (2a + 1)) = 1 / (4 (2a + 1))


def test_nested_threshold_is_youden_or_a_stated_fallback() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    separable = np.array([[0.1] * 5, [0.2] * 5, [0.3] * 5, [0.6] * 5, [0.7] * 5, [0.9] * 5])
    how, threshold, record = choose_aggregation_and_threshold(labels, separable)
    assert record["threshold_rule"] == "youden" and 0.3 < threshold <= 0.6  # between the classes, not at 0.000
    assert threshold == pytest.approx(0.45)
    inverted = separable[::-1]
    how, threshold, record = choose_aggregation_and_threshold(labels, inverted, fallback=0.5)
    assert (how, threshold) == ("median", 0.5) and record["threshold_rule"].startswith("fallback 0.5: no slice aggregation")
    one_class = choose_aggregation_and_threshold(np.zeros(4, dtype=int), separable[:4], fallback=0.4)
    assert one_class[1] == 0.4 and "one class only" in one_class[2]["threshold_rule"]


def test_nested_selection_places_a_threshold_on_each_aggregations_own_scale() -> None:
    # one bright slice per patient: the max of slices sits far above the median, so a threshold
    # placed on the median's scale would call every patient positive under the max
    labels = np.array([0, 0, 0, 1, 1, 1])
    base = np.array([0.1, 0.15, 0.2, 0.3, 0.35, 0.4])[:, None] * np.ones((6, 5))
    base[:, 2] += 0.5
    how, threshold, record = choose_aggregation_and_threshold(labels, base)
    assert how == "median" and threshold == pytest.approx(0.25)
    assert record["youden"]["median"] == threshold and record["youden"]["max"] == pytest.approx(0.75)
    for aggregation, cut in record["youden"].items():  # each separates the classes on its own scale
        patient = aggregate_slices(base, aggregation)
        assert ((patient >= cut) == labels.astype(bool)).all(), aggregation
    result = FoldResult(0, {}, 1, [], np.arange(6), base, how, threshold, {"threshold_rule": "youden",
                                                                            "youden": record["youden"]})
    assert result.youden_threshold("max") == pytest.approx(0.75)
    old = FoldResult(0, {}, 1, [], np.arange(6), base, how, threshold, {"threshold_rule": "youden"})  # an older record
    assert old.youden_threshold("median") == threshold and old.youden_threshold("max") is None


def test_lr_range_test_on_training_patients_suggests_a_rate_in_its_range() -> None:
    lrs = [10.0 ** e for e in range(-7, 3)]
    # flat, then the longest fall (points 1..7), then divergence: fastai's valley picks 2/3 down the fall
    assert valley(lrs, [2.0, 2.0, 2.0, 1.8, 1.5, 1.2, 1.0, 0.9, 2.5, 5.0]) == pytest.approx(lrs[4])
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(8, 5, 3, 16, 16)).astype(np.float32))
    labels = np.array([0, 1] * 4)
    finding = lr_range_test(x, labels, np.arange(6), TrainSettings(batch_size=8), seed=0, device=torch.device("cpu"),
                            steps=12, skip_end=2)
    assert finding.patients == 6 and len(finding.lrs) == len(finding.losses)
    assert finding.lrs == sorted(finding.lrs) and finding.summary()
    # the suggestion is valley's answer on the curve this run recorded (its last skip_end points left out)
    kept = len(finding.lrs) - 2
    assert finding.suggestion == valley(finding.lrs[:kept], finding.losses[:kept])


def test_lr_range_test_finds_the_falling_loss_of_a_learnable_case_and_stops_where_it_diverges() -> None:
    """A case with a known answer: the class is written into the image (positives brighter), so
    the recipe's network learns it as soon as the rate is large enough, and a rate of 10 makes
    it diverge. The range test must see the loss fall and then blow up, stop at the blow-up
    (4x the best), and suggest a rate on the fall: where the loss is already lower than at the
    start and before its minimum."""
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 6)
    x = (rng.normal(size=(12, 5, 3, 16, 16)) * 0.1 + labels[:, None, None, None, None] * 2.0).astype(np.float32)
    finding = lr_range_test(torch.as_tensor(x), labels, np.arange(12), TrainSettings(batch_size=12, mixup=False),
                            seed=0, device=torch.device("cpu"), start_lr=1e-5, end_lr=10.0, steps=60, skip_end=2)
    lowest = int(np.argmin(finding.losses))
    assert len(finding.lrs) < 60, "a rate of 10 did not make the loss blow up"  # stopped at the divergence
    assert finding.losses[lowest] < 0.8 * finding.losses[0]  # it learned
    index = finding.lrs.index(finding.suggestion)
    assert 0 < index < lowest and finding.losses[index] < finding.losses[0], (index, lowest, finding.summary())


def test_paper_selection_is_not_trapped_at_epoch_one_and_breaks_ties_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper recipe keeps the epoch with the best slice accuracy on its selection patients.
    Epoch 1 of a network that has learned nothing calls every slice negative, and its accuracy
    is the share of negatives (here 0.75), which a strict ``>`` then never lets go: the trap of
    the project's own ablation. Such an epoch is not eligible; a tie goes to the later epoch."""
    from training import engine

    labels = np.array([0, 0, 0, 1] * 2)  # 6 negatives, 2 positives
    select = np.arange(8)
    scripted = [
        np.full((8, 5), 0.3),  # epoch 1: all negative -> accuracy 0.75, not eligible
        np.where(labels[:, None] == 1, 0.8, np.array([0.3, 0.3, 0.8, 0, 0.3, 0.3, 0.8, 0])[:, None]) * np.ones((1, 5)),
        np.where(labels[:, None] == 1, 0.8, np.array([0.3, 0.8, 0.3, 0, 0.3, 0.8, 0.3, 0])[:, None]) * np.ones((1, 5)),
        np.where(labels[:, None] == 1, 0.3, 0.3) * np.ones((1, 5)),  # epoch 4: all negative again
    ]  # epochs 2 and 3: 6 of 8 right (0.75), a tie: epoch 3 is kept
    calls = iter(scripted)
    real = engine.patient_scores

    def scores(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        return next(calls) if inputs.shape[0] == 8 and inputs.shape[-1] == 16 else real(model, inputs, batch_size)

    monkeypatch.setattr(engine, "patient_scores", scores)
    settings = TrainSettings.for_recipe("paper", allow_random_frozen_body=True, epochs=4, batch_size=8, selection="paper")
    inputs = torch.randn(10, 5, 3, 16, 16)
    all_labels = np.concatenate([labels, [0, 1]])
    trainer = engine.FoldTrainer(0, inputs, all_labels, np.arange(10), select, np.array([8, 9]), settings, seed=0,
                                 device=torch.device("cpu"), progress=False)
    for _ in range(settings.epochs):
        trainer.begin_epoch()
        for i in range(trainer.steps):
            trainer.step(i)
        trainer.end_epoch()
    result = trainer.finish()
    assert [h["accuracy"] for h in result.history] == [0.75, 0.75, 0.75, 0.75]
    assert [h["eligible"] for h in result.history] == [False, True, True, False]
    assert result.epoch == 3 and result.selection["epoch"] == 3
    assert "ties to the later epoch" in result.selection["epoch_rule"] and "test fold itself" in result.selection["epoch_rule"]


def test_when_no_epoch_is_eligible_the_last_is_kept_and_said() -> None:
    from training.engine import epoch_rule_text, keeps_epoch

    assert keeps_epoch(0.7, True, 0.7) and not keeps_epoch(0.9, False, 0.1) and not keeps_epoch(0.6, True, 0.7)
    assert "last was kept" in epoch_rule_text("accuracy", "nested", no_eligible_epoch=True)
    assert epoch_rule_text("last", "paper") == "the last epoch (nothing chosen on data)"
