"""The one way an exception crosses a process boundary (data workers and job processes alike)."""

from __future__ import annotations

import pickle
import traceback

__all__ = ["portable_error"]


def portable_error(exc: BaseException, where: str | None = None, *,
                   fallback: type[Exception] = RuntimeError) -> BaseException:
    """``exc`` if it survives pickling, else a ``fallback`` carrying its type name and text.

    With ``where`` (``"a data worker process"``, ``"job process aiotrain-job-3 (pid 4711)"``)
    the traceback of ``exc`` is attached as a note, ``raised in <where>:`` and the frames, so
    the parent that re-raises it still shows where it came from.
    """
    tb = "".join(traceback.format_exception(exc)).rstrip() if where is not None else ""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = fallback(f"{type(exc).__name__}: {exc}")
    if where is not None:
        exc.add_note(f"raised in {where}:\n{tb}")
    return exc
