"""Hostile configs: reading escape-heavy strings and exponential interpolation, time per input.

* escapes: one quoted string of N MB of ``\\n`` escapes, read by ``sdn.loads``; the peer is
  ``json.loads`` of the same string (C code) in the same run. Linear reading means the seconds
  per MB stay flat as N grows (the issue measured 2.3 s for 1 MB, 40-48 s for 3 MB before).
* doubling: ``x.l{i}: "${x.l{i-1}}${x.l{i-1}}"`` for 64 levels (2**65 characters if built);
  ``Conf.resolve`` must stop at its size limit with an InterpolationError: time to that error.

Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402


def main() -> None:
    from aiotrain.config import Conf, InterpolationError, sdn

    escapes = {}
    for mb in (1, 3):
        body = "\\n" * (mb * 2**20 // 2)
        t0 = time.perf_counter()
        assert len(sdn.loads(f'a: "{body}"\n')["a"]) == len(body) // 2
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        json.loads(f'"{body}"')
        peer = time.perf_counter() - t0
        escapes[f"{mb}MB"] = {"sdn_s": round(ours, 4), "json_s": round(peer, 4),
                              "sdn_s_per_mb": round(ours / mb, 4)}
    x = {"l0": "ab"} | {f"l{i}": f"${{x.l{i - 1}}}${{x.l{i - 1}}}" for i in range(1, 65)}
    cfg = Conf.from_dict({"x": x})
    t0 = time.perf_counter()
    try:
        Conf.resolve(cfg)
        stopped = None
    except InterpolationError as exc:
        stopped = exc.full_key
    emit("hostile_config", escapes=escapes, doubling_64_levels_s=round(time.perf_counter() - t0, 4),
         doubling_stopped_at=stopped,
         linear=escapes["3MB"]["sdn_s_per_mb"] <= 2 * escapes["1MB"]["sdn_s_per_mb"],
         load_avg_1m=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
