"""Accuracy, Precision, Recall, F1Score against scikit-learn, fed in several batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from aiotrain.metrics import Accuracy, F1Score, NotComputableError, Precision, Recall

SK = {Precision: skm.precision_score, Recall: skm.recall_score, F1Score: skm.f1_score}


def _feed(metric, y_pred, y, batch=17):
    for i in range(0, len(y), batch):
        metric.update((y_pred[i:i + batch], y[i:i + batch]))
    return metric.compute()


def _multiclass(seed=0, n=203, c=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return logits, y


def test_accuracy_binary():
    g = torch.Generator().manual_seed(1)
    y_pred = torch.randint(0, 2, (150,), generator=g)
    y = torch.randint(0, 2, (150,), generator=g)
    assert _feed(Accuracy(), y_pred, y) == pytest.approx(skm.accuracy_score(y, y_pred))


def test_accuracy_binary_from_n_by_1_scores():
    y_pred = torch.tensor([[1], [0], [1], [1]])
    y = torch.tensor([1, 1, 1, 0])
    assert _feed(Accuracy(), y_pred, y) == pytest.approx(0.5)


def test_accuracy_multiclass_logits_and_probs_agree():
    logits, y = _multiclass()
    want = skm.accuracy_score(y, logits.argmax(1))
    assert _feed(Accuracy(), logits, y) == pytest.approx(want)
    assert _feed(Accuracy(), logits.softmax(1), y) == pytest.approx(want)


def test_accuracy_multiclass_spatial():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (6, 4, 5), generator=g)
    want = (logits.argmax(1) == y).double().mean().item()
    assert _feed(Accuracy(), logits, y, batch=4) == pytest.approx(want)


def test_accuracy_multilabel_is_subset_accuracy():
    g = torch.Generator().manual_seed(3)
    y_pred = torch.randint(0, 2, (120, 4), generator=g)
    y = torch.randint(0, 2, (120, 4), generator=g)
    y_pred[:40] = y[:40]  # make some samples exactly right
    got = _feed(Accuracy(is_multilabel=True), y_pred, y)
    assert got == pytest.approx(skm.accuracy_score(y.numpy(), y_pred.numpy()))


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
@pytest.mark.parametrize("average", [None, "macro", "micro", "weighted"])
def test_multiclass_against_sklearn(cls, average):
    logits, y = _multiclass(seed=4)
    pred = logits.argmax(1)
    want = SK[cls](y, pred, average=average, labels=list(range(5)), zero_division=0)
    got = _feed(cls(average=average), logits, y)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
def test_multiclass_average_false_is_per_class_and_true_is_macro(cls):
    logits, y = _multiclass(seed=5)
    per_class = _feed(cls(), logits, y)
    assert isinstance(per_class, torch.Tensor) and per_class.shape == (5,)
    np.testing.assert_allclose(per_class.numpy(), SK[cls](y, logits.argmax(1), average=None,
                                                          labels=list(range(5)), zero_division=0))
    assert _feed(cls(average=True), logits, y) == pytest.approx(per_class.mean().item())


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
def test_binary_positive_class_and_two_class_averages(cls):
    g = torch.Generator().manual_seed(6)
    y_pred = torch.randint(0, 2, (99,), generator=g)
    y = torch.randint(0, 2, (99,), generator=g)
    got = _feed(cls(), y_pred, y)
    assert isinstance(got, float)
    assert got == pytest.approx(SK[cls](y, y_pred))
    assert _feed(cls(average="macro"), y_pred, y) == pytest.approx(SK[cls](y, y_pred, average="macro"))
    both = _feed(cls(average=None), y_pred, y)
    np.testing.assert_allclose(both.numpy(), SK[cls](y, y_pred, average=None))


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
@pytest.mark.parametrize("average", [False, "macro", "micro", "weighted"])
def test_multilabel_against_sklearn(cls, average):
    g = torch.Generator().manual_seed(7)
    y_pred = torch.randint(0, 2, (80, 4), generator=g)
    y = torch.randint(0, 2, (80, 4), generator=g)
    got = _feed(cls(average=average, is_multilabel=True), y_pred, y)
    want = SK[cls](y.numpy(), y_pred.numpy(), average=average or None, zero_division=0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


def test_absent_class_scores_zero():
    # class 2 is never predicted nor present: its precision is 0 and it counts in macro
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0]])
    y = torch.tensor([0, 1, 1])
    per_class = _feed(Precision(), logits, y)
    assert per_class.tolist() == [0.5, 1.0, 0.0]
    assert _feed(Precision(average="macro"), logits, y) == pytest.approx(0.5)


def test_reset_forgets():
    m = Accuracy()
    m.update((torch.tensor([1, 1]), torch.tensor([0, 0])))
    m.reset()
    m.update((torch.tensor([1, 1]), torch.tensor([1, 1])))
    assert m.compute() == 1.0


@pytest.mark.parametrize("cls", [Accuracy, Precision, Recall, F1Score])
def test_compute_before_update_raises(cls):
    with pytest.raises(NotComputableError, match=f"{cls.__name__} must have at least one example"):
        cls().compute()


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match=r"y_pred \(4, 3\) must be \(N, C, ...\) around y \(5,\)"):
        Accuracy().update((torch.zeros(4, 3), torch.zeros(5)))
    with pytest.raises(ValueError, match=r"y_pred \(4,\) and y \(4, 3, 2\) do not match"):
        Accuracy().update((torch.zeros(4), torch.zeros(4, 3, 2)))


def test_binary_needs_zeros_and_ones():
    with pytest.raises(ValueError, match="only 0s and 1s.*threshold"):
        Accuracy().update((torch.tensor([0.2, 0.9]), torch.tensor([0, 1])))


def test_class_index_out_of_range():
    with pytest.raises(ValueError, match=r"class index 3 outside \[0, 3\)"):
        Accuracy().update((torch.zeros(2, 3), torch.tensor([0, 3])))


def test_changing_kind_is_an_error():
    m = Accuracy()
    m.update((torch.zeros(2, 3), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="changed from multiclass with 3 classes"):
        m.update((torch.zeros(2, 4), torch.tensor([0, 1])))


def test_multilabel_needs_same_shape():
    with pytest.raises(ValueError, match="same shape"):
        Precision(is_multilabel=True).update((torch.zeros(2, 3), torch.tensor([0, 1])))


@pytest.mark.parametrize("bad", ["samples", "mean", 1])
def test_invalid_average(bad):
    with pytest.raises(ValueError, match="average must be"):
        F1Score(average=bad)


def test_update_wants_a_pair():
    with pytest.raises(TypeError, match=r"expects \(y_pred, y\), got a dict.*output_transform"):
        Accuracy().update({"y_pred": 1, "y": 2})


def test_inputs_are_detached_and_moved_to_the_metric_device():
    logits = torch.randn(4, 3, requires_grad=True)
    m = Accuracy(device="cpu")
    m.update((logits * 2, torch.tensor([0, 1, 2, 0])))
    assert m.device == torch.device("cpu")
    assert 0.0 <= m.compute() <= 1.0
