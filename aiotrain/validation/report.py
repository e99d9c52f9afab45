"""ValidationSection and ValidationReport: what the checks found, printable and JSON-able."""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from ..errors import require
from .mode import ValidationMode

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

__all__ = ["EXIT_FAILED", "EXIT_PASSED", "EXIT_USAGE", "ValidationReport", "ValidationSection"]

#: Process exit codes for a command that validates: passed, validation errors, usage/config errors.
EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class ValidationSection:
    """One check's findings: infos, warnings and errors (plain sentences), and whether it passed.

    ``passed`` is True only when ``add_pass`` was called and no error was recorded, before or
    after it; a section that was not run (no usable batch) is neither passed nor failed.
    """

    name: str
    infos: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    passed: bool = False

    def add_info(self, msg: str) -> None:
        self.infos.append(msg)

    def add_warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def add_error(self, msg: str) -> None:
        self.errors.append(msg)
        self.passed = False

    def add_pass(self, msg: str) -> None:
        """Record the check's success message; it counts only when there are no errors."""
        self.infos.append(msg)
        self.passed = not self.errors

    def has_errors(self) -> bool:
        return bool(self.errors)

    @property
    def status(self) -> str:
        """"passed", "failed", "warning" (passed with warnings) or "not run"."""
        if self.errors:
            return "failed"
        if not self.passed:
            return "not run"
        return "warning" if self.warnings else "passed"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "passed": self.passed,
                "infos": list(self.infos), "warnings": list(self.warnings),
                "errors": list(self.errors)}


_STYLE = {"passed": ("✓", "green"), "warning": ("!", "yellow"), "failed": ("✗", "red"),
          "not run": ("-", "dim")}


@dataclass
class ValidationReport:
    """The sections of one ``validate_all`` run, in report order (memory first, training loop last).

    ``skipped`` is True for TRAIN_ONLY (no check ran). ``exit_code`` is what a command exits
    with: 0 when there are no errors (skipped included), 1 otherwise; 2 belongs to usage and
    config errors, which the report never sees.
    """

    sections: list[ValidationSection] = field(default_factory=list)
    skipped: bool = False
    mode: ValidationMode = ValidationMode.CHECK_ONLY
    elapsed: float = 0.0

    def add_section(self, section: ValidationSection) -> None:
        self.sections.append(section)

    def section(self, name: str) -> ValidationSection:
        """The section called ``name`` (case-insensitive); KeyError names the ones there are."""
        for s in self.sections:
            if s.name.lower() == name.lower():
                return s
        raise KeyError(f"no section {name!r}; sections: {[s.name for s in self.sections]}")

    def has_errors(self) -> bool:
        return any(s.has_errors() for s in self.sections)

    @property
    def errors(self) -> list[str]:
        """Every error as ``"Section: message"``."""
        return [f"{s.name}: {e}" for s in self.sections for e in s.errors]

    @property
    def warnings(self) -> list[str]:
        """Every warning as ``"Section: message"``."""
        return [f"{s.name}: {w}" for s in self.sections for w in s.warnings]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.has_errors() else EXIT_PASSED

    def to_dict(self) -> dict[str, object]:
        """A JSON-able dict: mode, skipped, passed, exit_code, elapsed seconds, sections."""
        return {"mode": self.mode.value, "skipped": self.skipped, "passed": not self.has_errors(),
                "exit_code": self.exit_code, "elapsed": round(self.elapsed, 4),
                "errors": len(self.errors), "warnings": len(self.warnings),
                "sections": [s.to_dict() for s in self.sections]}

    # rendering ---------------------------------------------------------------------------
    def print(self, file: IO[str] | None = None, *, color: bool | None = None,
              width: int = 100) -> None:
        """Print the report with rich (colours on a terminal, plain text elsewhere; extra
        ``progress``)."""
        console = require("rich.console", "the validation report").Console(file=file, width=width, highlight=False,
                          no_color=color is False, force_terminal=color or None)
        console.print(self._renderable(console.width), soft_wrap=True)

    def render(self, width: int = 100) -> str:
        """The printed report as plain text (for logs, READMEs and tests)."""
        buf = io.StringIO()
        self.print(buf, color=False, width=width)
        return buf.getvalue()

    def _renderable(self, width: int) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        if self.skipped:
            return Text(f"Validation skipped ({self.mode.value} mode)", style="dim")
        title = Text("RUNTIME VALIDATION REPORT", style="bold")
        title.append(f"  mode={self.mode.value}  {self.elapsed:.2f}s", style="dim")
        parts: list[RenderableType] = [Text("=" * 70), title, Text("=" * 70)]
        for s in self.sections:
            parts.extend(_section_lines(s, width))
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = (Text(f"VALIDATION FAILED ✗  {n_err} error(s), {n_warn} warning(s)", style="bold red")
                   if n_err else
                   Text(f"VALIDATION PASSED ✓  {n_warn} warning(s)", style="bold green"))
        parts += [Text(""), Text("=" * 70), verdict, Text("=" * 70)]
        return Group(*parts)


def _section_lines(s: ValidationSection, width: int) -> list[Text]:
    """The heading, then one line per message; wrapped lines stay indented under their tag."""
    from rich.text import Text

    glyph, style = _STYLE[s.status]
    head = Text("\n")
    head.append(f"{glyph} {s.name}", style=f"bold {style}")
    head.append(f"  [{s.status}]", style=style)
    lines: list[Text] = [head]
    indent = " " * 10  # "  [ERROR] "
    for tag, msgs, tag_style in (("INFO ", s.infos, "dim"), ("WARN ", s.warnings, "yellow"),
                                 ("ERROR", s.errors, "red")):
        for msg in msgs:
            wrapped = textwrap.wrap(msg, max(20, width - len(indent)), break_on_hyphens=False)
            line = Text("  ")
            line.append(f"[{tag}]", style=tag_style)
            line.append(" " + f"\n{indent}".join(wrapped or [""]))
            lines.append(line)
    return lines
