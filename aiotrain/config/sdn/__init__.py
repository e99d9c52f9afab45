"""SDN ("Simple Data Notation"): the indentation-based config format aiotrain reads and writes.

The format is described in ``docs/sdn.md``. ``loads`` / ``load`` read, ``dumps`` / ``dump`` write,
every reading error is an :class:`SdnError` whose message starts ``line L, column C:``.

The parser is hand written and line oriented: a block structure is a stack of frames (one per
indented block), inline ``{}`` / ``[]`` values are parsed by an explicit stack as well, so no
input can recurse; nesting deeper than :data:`MAX_DEPTH` (blocks and inline values together)
is an error. :class:`SdnDocument` keeps the text and where each dict entry sits in it, so that
``sdn set`` can change one value and leave every comment and all other formatting alone.

The modules: :mod:`.lexer` (values as written on one line), :mod:`.parser` (the block structure
and ``loads`` / ``load``), :mod:`.writer` (``dumps`` / ``dump``), :mod:`.document`
(:class:`SdnDocument` and dotted paths). Import from here; the split is not public.
"""

from ..errors import SdnError
from .document import PathSpec, SdnDocument, split_path
from .lexer import MAX_DEPTH, Scalar, Value
from .parser import MAX_FILE_BYTES, Key, KeyPath, load, loads, parse_value
from .writer import dump, dumps, value_text, write_atomic

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "Key", "KeyPath", "PathSpec", "Scalar", "SdnDocument",
           "SdnError", "Value", "dump", "dumps", "load", "loads", "parse_value", "split_path",
           "value_text", "write_atomic"]
