"""Config parsing speed: the same large config as SDN (aiotrain) and as YAML (PyYAML, OmegaConf).

The config (about ``--lines`` SDN lines) holds nested dict sections with scalars and inline
lists, and a table of records. It is written once with ``aiotrain.config.sdn.dumps`` and once
with ``yaml.safe_dump``; both texts are checked to hold the same value. Each parser reads its
text ``--repeat`` times (best time counts): aiotrain ``sdn.loads``, PyYAML's pure-Python
``SafeLoader``, its ``CSafeLoader`` (libyaml) when present, and ``OmegaConf.create`` on the YAML
text (what ``OmegaConf.load`` does after reading the file). MB/s is each format's own text size
over its time; ``*_per_parse_ms`` compares the same data directly. Target (issue 3): SDN at
least 2x PyYAML's pure-Python loader. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import yaml  # noqa: E402
from _common import emit  # noqa: E402

from aiotrain.config import sdn  # noqa: E402


def make_config(lines: int) -> dict:
    """Roughly ``lines`` SDN lines: 20-line sections plus a 1/3-size table of records."""
    sections = max(1, lines * 2 // 3 // 20)
    cfg: dict = {"project": "bench", "seed": 42}
    for i in range(sections):
        cfg[f"section_{i}"] = {
            "name": f"block-{i}", "enabled": i % 2 == 0, "lr": 1e-3 / (i + 1), "epochs": 10 + i,
            "path": f"/data/set_{i}/train", "note": None, "ratio": i / 7,
            "layers": [64, 128, 256, i], "tags": ["a", "b", f"t{i}"],
            "optim": {"kind": "adam", "betas": [0.9, 0.999], "eps": 1e-8, "decay": 0.01},
            "data": {"batch": 32, "workers": 4, "shuffle": True,
                     "aug": {"flip": True, "crop": 224, "scale": [0.8, 1.0]}},
        }
    cfg["rows"] = [{"id": i, "name": f"item_{i}", "score": i * 0.25, "ok": i % 3 == 0}
                   for i in range(lines // 3)]
    return cfg


def best_time(fn, text, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5, help="parses per parser (best counts)")
    args = p.parse_args()

    data = make_config(args.lines)
    sdn_text = sdn.dumps(data)
    yaml_text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    assert sdn.loads(sdn_text) == data and yaml.safe_load(yaml_text) == data

    parsers = {
        "sdn": (sdn.loads, sdn_text),
        "pyyaml_pure": (lambda t: yaml.load(t, Loader=yaml.SafeLoader), yaml_text),
    }
    if hasattr(yaml, "CSafeLoader"):
        parsers["pyyaml_c"] = (lambda t: yaml.load(t, Loader=yaml.CSafeLoader), yaml_text)
    # OmegaConf caps YAML nodes at 10 000 by default (an alias-bomb guard): raise it for this input
    os.environ.setdefault("OMEGACONF_MAX_YAML_EXPANDED_NODES", "10000000")
    try:
        from omegaconf import OmegaConf

        parsers["omegaconf"] = (OmegaConf.create, yaml_text)
    except ImportError:
        pass

    figures: dict = {"sdn_lines": sdn_text.count("\n"), "yaml_lines": yaml_text.count("\n"),
                     "sdn_bytes": len(sdn_text.encode()), "yaml_bytes": len(yaml_text.encode())}
    for name, (fn, text) in parsers.items():
        seconds = best_time(fn, text, args.repeat)
        figures[f"{name}_mb_s"] = round(len(text.encode()) / seconds / 1e6, 3)
        figures[f"{name}_per_parse_ms"] = round(seconds * 1e3, 2)
    sdn_ms = figures["sdn_per_parse_ms"]
    for name in parsers:
        if name != "sdn":
            figures[f"speedup_vs_{name}"] = round(figures[f"{name}_per_parse_ms"] / sdn_ms, 2)
            figures[f"mb_s_ratio_vs_{name}"] = round(figures["sdn_mb_s"] / figures[f"{name}_mb_s"], 2)
    figures["target_2x_pyyaml_pure_met"] = figures["mb_s_ratio_vs_pyyaml_pure"] >= 2.0
    emit("config", **figures)


if __name__ == "__main__":
    main()
