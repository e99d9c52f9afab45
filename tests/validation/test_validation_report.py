"""ValidationMode parsing, ValidationSection semantics, the report's dict and printed form."""

from __future__ import annotations

import json

import pytest
from validation_helpers import check, loader

from aiotrain.validation import EXIT_FAILED, EXIT_PASSED, ValidationMode, ValidationSection


@pytest.mark.parametrize("text, mode", [("check_only", ValidationMode.CHECK_ONLY),
                                        ("CHECK-AND-TRAIN", ValidationMode.CHECK_AND_TRAIN),
                                        (" train_only ", ValidationMode.TRAIN_ONLY)])
def test_modes_parse_from_strings(text, mode):
    assert ValidationMode(text) is mode and mode == mode.value and str(mode) == mode.value


def test_a_section_passes_only_without_errors():
    s = ValidationSection("Shapes")
    assert s.status == "not run" and not s.passed
    s.add_pass("fine")
    assert s.passed and s.status == "passed"
    s.add_warning("hmm")
    assert s.status == "warning"
    s.add_error("broken")
    assert not s.passed and s.has_errors() and s.status == "failed"
    s.add_pass("fine again")
    assert not s.passed


async def test_to_dict_is_json_and_print_is_readable(net, capsys):
    net.dead = __import__("torch").nn.Linear(3, 3)  # trainable, unused: one error
    report = await check(net, loader())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["mode"] == "check_only" and data["passed"] is False
    assert data["exit_code"] == EXIT_FAILED == report.exit_code and data["errors"] == 1
    assert [s["status"] for s in data["sections"]].count("failed") == 1
    report.print()
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # no colour codes when not on a terminal
    assert "RUNTIME VALIDATION REPORT" in out and "✗ Gradient flow  [failed]" in out
    assert "[ERROR] 2 parameter(s) require grad but got none" in out
    assert out.rstrip().splitlines()[-2].startswith("VALIDATION FAILED ✗  1 error(s)")
    assert report.render() == out


async def test_a_passing_report(net):
    report = await check(net, loader())
    assert report.exit_code == EXIT_PASSED and report.errors == []
    assert "VALIDATION PASSED ✓" in report.render()
    with pytest.raises(KeyError, match="sections: \\['Memory'"):
        report.section("nope")


async def test_long_messages_wrap_under_their_tag_without_trailing_spaces(net):
    net.dead = __import__("torch").nn.Linear(3, 3)
    lines = (await check(net, loader())).render(width=60).splitlines()
    assert all(line == line.rstrip() and len(line) <= 70 for line in lines)
    at = next(i for i, line in enumerate(lines) if line.startswith("  [ERROR]"))
    assert lines[at + 1].startswith(" " * 10) and lines[at + 1][10] != " "
