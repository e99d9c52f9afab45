"""Runtime validation before a long run: modes check_only / train_only / check_and_train.

``RuntimeValidator(mode).validate_all(model, loader, optimizer, loss_fn)`` returns a
ValidationReport with eight sections (memory, shapes, gradient flow, numeric stability,
devices, data pipeline, optimizer, training loop); see docs/architecture.md.
"""

from .batches import unpack_batch
from .mode import ValidationMode
from .report import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, ValidationReport, ValidationSection
from .validator import RuntimeValidator

__all__ = ["EXIT_FAILED", "EXIT_PASSED", "EXIT_USAGE", "RuntimeValidator", "ValidationMode",
           "ValidationReport", "ValidationSection", "unpack_batch"]
