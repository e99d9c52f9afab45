"""Save step 1, then die (os._exit) while step 2 is being written: mid-write or before the rename.

Usage: die_while_writing.py SAVE_DIR mid-write|before-rename. Exits with status 17 when it died
where it was told to; any other status means the scenario did not happen.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import torch

from aiotrain.handlers.checkpoint import Checkpoint


def box_state(value: float) -> dict:
    return {"big": torch.full((2_000_000,), value), "small": torch.full((4,), value),
            "count": int(value), "history": [value]}


async def main(save_dir: str, moment: str) -> None:
    state = box_state(1.0)
    box = SimpleNamespace(state_dict=lambda: state, load_state_dict=lambda sd: None)
    ckpt = Checkpoint({"box": box}, save_dir, n_saved=1)
    engine = SimpleNamespace(state=SimpleNamespace(iteration=1))
    await ckpt(engine)
    await ckpt.aflush()
    state.update(box_state(2.0))
    real_save = torch.save
    if moment == "mid-write":
        def torn_save(obj, path):  # the process dies with half the bytes on disk
            real_save(obj, path)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os._exit(17)
        torch.save = torn_save
    else:
        os.replace = lambda src, dst: os._exit(17)
    engine.state.iteration = 2
    await ckpt(engine)
    await ckpt.aflush()
    sys.exit(1)  # not reached when the scenario happened


if __name__ == "__main__":
    from aiotrain.runtime import run

    run(main(sys.argv[1], sys.argv[2]))
