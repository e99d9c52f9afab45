"""ValidationMode: whether a run checks, trains, or checks and then trains."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ValidationMode"]


class ValidationMode(StrEnum):
    """The three run modes; a str Enum, so ``ValidationMode("check_only")`` parses.

    Parsing also accepts the names in any case and with dashes (``"CHECK-ONLY"``), as a
    command line user would type them; anything else is a ValueError listing the valid values.
    """

    CHECK_ONLY = "check_only"
    TRAIN_ONLY = "train_only"
    CHECK_AND_TRAIN = "check_and_train"

    @classmethod
    def _missing_(cls, value: object) -> ValidationMode:
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            for mode in cls:
                if mode.value == key:
                    return mode
        valid = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown validation mode {value!r}; expected one of: {valid}")

    @property
    def checks(self) -> bool:
        """True when this mode runs the checks."""
        return self is not ValidationMode.TRAIN_ONLY

    @property
    def trains(self) -> bool:
        """True when this mode may train (CHECK_AND_TRAIN only after a clean report)."""
        return self is not ValidationMode.CHECK_ONLY
