"""MSE, MAE, R2Score against scikit-learn; Loss against the whole-data loss."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

from aiotrain.metrics import MAE, MSE, Loss, NotComputableError, R2Score


def _feed(metric, y_pred, y, batch=13):
    for i in range(0, len(y), batch):
        metric.update((y_pred[i:i + batch], y[i:i + batch]))
    return metric.compute()


def _data(shape=(101,), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(*shape, generator=g) * 3 + 1
    return y + torch.randn(*shape, generator=g), y


@pytest.mark.parametrize("shape", [(101,), (101, 3)])
@pytest.mark.parametrize(("cls", "sk"), [(MSE, skm.mean_squared_error),
                                         (MAE, skm.mean_absolute_error),
                                         (R2Score, skm.r2_score)])
def test_against_sklearn(cls, sk, shape):
    y_pred, y = _data(shape)
    assert _feed(cls(), y_pred, y) == pytest.approx(sk(y.numpy(), y_pred.numpy()), rel=1e-6)


def test_hand_computed():
    y_pred, y = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    assert _feed(MSE(), y_pred, y, batch=2) == pytest.approx(5 / 3)
    assert _feed(MAE(), y_pred, y, batch=2) == pytest.approx(1.0)
    # mean(y) = 2, SS_tot = 2, SS_res = 5
    assert _feed(R2Score(), y_pred, y, batch=2) == pytest.approx(1 - 5 / 2)


def test_column_output_against_flat_targets():
    y_pred, y = _data()
    assert _feed(MSE(), y_pred.unsqueeze(1), y) == pytest.approx(_feed(MSE(), y_pred, y))


def test_r2_constant_target_is_finite_like_sklearn():
    y = torch.full((6,), 0.1)
    assert _feed(R2Score(), y.clone(), y) == 1.0
    assert _feed(R2Score(), y + 1, y) == 0.0
    assert skm.r2_score(y.numpy(), (y + 1).numpy()) == 0.0


def test_r2_needs_two_examples():
    m = R2Score()
    m.update((torch.tensor([1.0]), torch.tensor([2.0])))
    with pytest.raises(NotComputableError, match="at least two examples, got 1"):
        m.compute()


def test_r2_outputs_must_not_change():
    m = R2Score()
    m.update((torch.zeros(4, 2), torch.zeros(4, 2)))
    with pytest.raises(ValueError, match="changed from 2 to 3 outputs"):
        m.update((torch.zeros(4, 3), torch.zeros(4, 3)))


@pytest.mark.parametrize("cls", [MSE, MAE, R2Score])
def test_shape_mismatch(cls):
    with pytest.raises(ValueError, match=r"y_pred \(4, 2\) and y \(4,\) must have the same shape"):
        cls().update((torch.zeros(4, 2), torch.zeros(4)))


@pytest.mark.parametrize("cls", [MSE, MAE, R2Score, lambda: Loss(torch.nn.functional.mse_loss)])
def test_compute_before_update(cls):
    with pytest.raises(NotComputableError, match="before it can be computed"):
        cls().compute()


def test_reset_between_epochs():
    m = MAE()
    m.update((torch.tensor([10.0]), torch.tensor([0.0])))
    m.reset()
    m.update((torch.tensor([1.0]), torch.tensor([0.0])))
    assert m.compute() == 1.0


def test_loss_is_example_weighted_mean():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    fn = torch.nn.functional.cross_entropy
    m = Loss(fn)
    for i in range(0, 50, 16):  # uneven last batch: weighting matters
        m.update((logits[i:i + 16], y[i:i + 16]))
    assert m.compute() == pytest.approx(fn(logits, y).item(), rel=1e-6)


def test_loss_kwargs_and_batch_size():
    seen = {}

    def fn(y_pred, y, weight=None):
        seen["weight"] = weight
        return (y_pred - y).abs().mean()

    m = Loss(fn, batch_size=lambda y: 2 * len(y))
    m.update((torch.ones(3), torch.zeros(3), {"weight": 0.5}))
    m.update((torch.zeros(1), torch.zeros(1)))
    assert seen["weight"] is None
    assert m.compute() == pytest.approx(6 / 8)


def test_loss_must_be_scalar():
    m = Loss(torch.nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match="did not return the average loss"):
        m.update((torch.zeros(3), torch.ones(3)))


def test_loss_bad_output():
    with pytest.raises(TypeError, match=r"expects \(y_pred, y\) or \(y_pred, y, kwargs\)"):
        Loss(torch.nn.functional.mse_loss).update(torch.zeros(3))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        Loss("mse")
