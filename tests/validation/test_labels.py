"""Class-index targets: CrossEntropyLoss on sequence logits is a layout problem, said so."""

from __future__ import annotations

import torch
from torch import nn

from aiotrain.validation import RuntimeValidator
from aiotrain.validation.labels import label_layout_error, label_range_error


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 50)

    def forward(self, x):
        return self.head(self.embed(x))  # (B, T, V)


def test_sequence_logits_are_a_layout_error_not_one_based_labels():
    out, y = torch.randn(4, 16, 50), torch.randint(0, 50, (4, 16))
    msg = label_layout_error(nn.CrossEntropyLoss(), out, y)
    assert "classes in dim 1" in msg and "(4, 16, 50)" in msg and "flatten" in msg
    assert label_range_error(nn.CrossEntropyLoss(), out, y) is None
    # the (B, C, T) layout torch expects is fine
    assert label_layout_error(nn.CrossEntropyLoss(), out.transpose(1, 2), y) is None


def test_the_validator_reports_the_layout_in_shapes():
    model = TinyLM()
    batch = (torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16)))
    report = RuntimeValidator("check_only").validate_all_sync(
        model, [batch] * 3, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss())
    shapes = report.section("Shapes")
    assert any("sequence logits (B, T, V)" in e for e in shapes.errors), shapes.errors
    assert not any("1-based" in e for s in report.sections for e in s.errors)
    others = [e for s in report.sections if s.name != "Shapes" for e in s.errors]
    assert others and all("(see Shapes)" in e for e in others)
