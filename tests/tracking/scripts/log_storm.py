"""Log records until killed: the subject of the SIGKILL loss-window tests and benchmark.

``python log_storm.py ROOT COUNTER [--interval S] [--count N] [--rate R]`` logs one record per
call (``{"i": i}``) into a run under ROOT, ``R`` records a second (0: as fast as it can). After
each ``log`` returns it stores how many calls have returned in the 8-byte file COUNTER through a
shared mapping, which the kernel keeps when the process is killed. With ``--count`` it stops
logging after N records, prints ``logged`` and sleeps until killed.
"""

from __future__ import annotations

import argparse
import mmap
import struct
import sys
import time

from aiotrain.tracking import Track


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("counter")
    p.add_argument("--interval", type=float, default=None)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0)
    args = p.parse_args()
    with open(args.counter, "r+b") as f:
        shared = mmap.mmap(f.fileno(), 8)
    run = Track.run("storm", dir=args.root, flush_interval=args.interval)
    print(run.dir, flush=True)
    pack, start, i = struct.pack_into, time.perf_counter(), 0
    while not args.count or i < args.count:
        if args.rate and i >= (time.perf_counter() - start) * args.rate:
            time.sleep(0.0005)
            continue
        run.log({"i": i})
        i += 1
        pack("<q", shared, 0, i)
    print("logged", flush=True)
    sys.stdout.close()
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
