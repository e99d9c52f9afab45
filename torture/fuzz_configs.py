"""Fuzzed SDN configs: a deterministic generator, and a worker that reads each one.

``generate(seed)`` builds one hostile text from a seed (mutated example configs, deep nesting,
escape runs, interpolation chains that repeat each other, huge numbers in typed tables, stray
brackets and bytes). The worker (``python fuzz_configs.py FIRST COUNT``) reads seeds
``FIRST .. FIRST+COUNT-1`` and prints one line per input before (``> seed``) and after
(``= seed outcome``) it: ``ok`` (parsed, resolved and written back identically), ``error``
(SdnError or another ConfigError: the allowed failure), ``wrong`` (written back differently),
or ``crash ExceptionType`` (anything else). The parent times each input from its ``>`` line.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from aiotrain.config import Conf, ConfigError, sdn

_EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.sdn"))
_CORPUS = [p.read_text() for p in _EXAMPLES] or ["a: 1\nb:\n    c = [1, 2]\n"]
_TOKENS = ["{", "}", "[", "]", "(", ")", ",", ":", "=", "|", "#", '"', "\\", "\\u", "\\ud800",
           "${", "${a}", "${.x}", "${env:HOME}", "???", "table{f64}", "table{i8, str}", "\t",
           "\r", "\n", "    ", "\ufeff", "\x00", "9" * 400, "1e999", "-0", "nan", "true", "null"]


def _deep(rng: random.Random) -> str:
    depth = rng.choice([50, 99, 100, 101, 150, 2000])
    if rng.random() < 0.5:
        return "".join("    " * i + f"k{i}:\n" for i in range(depth)) + "    " * depth + "v: 1\n"
    return "x = " + "[" * depth + "1" + "]" * depth + "\n"


def _doubling(rng: random.Random) -> str:
    levels = rng.randint(10, 64)
    lines = ["x:", '    l0: "ab"']
    for i in range(1, levels + 1):
        ref = f"${{x.l{i - 1}}}"
        lines.append(f"    l{i} = [{ref}, {ref}]" if rng.random() < 0.3 else f'    l{i}: "{ref}{ref}"')
    return "\n".join(lines) + "\n"


def _escapes(rng: random.Random) -> str:
    unit = rng.choice(["\\n", '\\"', "\\\\", "\\u00e9", "\\ud83d\\ude00", "\\x", "\\u12"])
    return 's: "' + unit * rng.randint(1, 20_000) + ('"' if rng.random() < 0.9 else "") + "\n"


def _table(rng: random.Random) -> str:
    kind = rng.choice(["f64", "f32", "i8", "u64", "int", "float", "bool", "str"])
    cell = rng.choice(["1", "-1", "9" * rng.randint(1, 500), "1e39", "1e999", "0x10", "true", '"s"', "nan"])
    return f"t: table{{{kind}}} = [({cell})]\n" if rng.random() < 0.5 else f"t: table{{{kind}}}\n    {cell}\n"


def _mutate(rng: random.Random) -> str:
    text = list(rng.choice(_CORPUS))
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.4:
            text[at:at] = list(rng.choice(_TOKENS))
        elif op < 0.7 and text:
            del text[at:at + rng.randint(1, 20)]
        elif op < 0.85 and text:
            text[at:at] = text[max(0, at - 40):at]
        else:
            text[at:at] = [chr(rng.randrange(0x20, 0x3000))]
    return "".join(text)


def generate(seed: int) -> str:
    """One fuzzed config text (the same for the same seed)."""
    rng = random.Random(seed)
    maker = rng.choices([_mutate, _deep, _doubling, _escapes, _table], [70, 5, 10, 10, 5])[0]
    return maker(rng)


def check(text: str) -> str:
    """Read ``text`` the way ``aiotrain train`` does; the outcome word (see the module doc)."""
    try:
        data = sdn.loads(text)
        cfg = Conf.from_dict(data)
        resolved = Conf.resolve(cfg)
        written = Conf.to_sdn(resolved)
        return "ok" if sdn.loads(written) == Conf.to_dict(resolved) else "wrong"
    except ConfigError:
        return "error"
    except Exception as exc:  # the finding: anything that is not a ConfigError
        return f"crash {type(exc).__name__}"


def main(first: int, count: int) -> None:
    out = sys.stdout
    for seed in range(first, first + count):
        out.write(f"> {seed}\n")
        out.flush()
        out.write(f"= {seed} {check(generate(seed))}\n")
    out.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
