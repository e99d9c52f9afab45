"""An async web service that trains models, driven from the same event loop as its HTTP server.

    python examples/service.py --port 8080 [--config examples/digits.sdn ...] [--writable DIR ...]

A thin command line over :mod:`aiotrain.service` (the job API, its policy and its bounds are
documented there): POST /jobs, GET /jobs/{id}, GET /jobs/{id}/events (SSE), DELETE /jobs/{id},
GET /health, and the runs dashboard under /dashboard/ over $AIOTRAIN_DIR (jobs show up live).

Each job runs in a job worker process of its own (``aiotrain.job.ProcessJob``), so jobs
running at once never share torch's RNG or settings and each reproduces its solo result;
``--in-process`` runs them as TrainJobs on this loop instead (cheaper to start, but concurrent
jobs then share torch's per-process state: see docs/sweeps.md, "What in-process jobs share").
Either way the loop keeps serving requests. Binds to 127.0.0.1 by default; another address needs
a token, printed once in the URL at start (docs/security.md).

The same service inside a FastAPI app: ``app.mount("/train", service_asgi_app(service))``, or
``app.include_router(job_router(service), prefix="/train")`` (``aiotrain.service.fastapi``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiotrain.service import JobService, Policy, serve


def main() -> None:
    p = argparse.ArgumentParser(description="aiotrain training service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--config", action="append", help="an allowed config (repeat; default: examples/*.sdn)")
    p.add_argument("--task", action="append", help="an allowed task (default: the allowed configs' tasks)")
    p.add_argument("--writable", action="append", help="a directory jobs may write to (repeat)")
    p.add_argument("--overridable", default="seed,train.,optim.,model.",
                   help="comma-separated keys / key prefixes (ending in '.') clients may override")
    p.add_argument("--in-process", action="store_true", help="run jobs on this loop, not in worker processes")
    p.add_argument("--keep", type=int, default=100, help="ended jobs whose summaries are kept")
    p.add_argument("--config-slots", type=int, default=2, help="configs loaded at once (429 beyond)")
    p.add_argument("--max-running", type=int, default=2, help="jobs that train at once")
    p.add_argument("--max-queued", type=int, default=8, help="jobs that wait their turn (429 beyond)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host name the service answers to (repeat; e.g. behind a proxy)")
    a = p.parse_args()
    from aiotrain.config import sdn
    from aiotrain.runtime import run

    configs = a.config or [str(c) for c in sorted(Path(__file__).parent.glob("*.sdn"))]
    tasks = a.task or [sdn.load(c).get("task") for c in configs]  # before the loop starts
    policy = Policy(configs, tasks, a.writable or (), [k for k in a.overridable.split(",") if k])
    service = JobService(policy, isolate=not a.in_process, keep=a.keep, config_slots=a.config_slots,
                         max_running=a.max_running, max_queued=a.max_queued)

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)
        if "?token=" in url:
            print("reachable from the network: every request needs this token "
                  "('Authorization: Bearer TOKEN'; shown only now)", flush=True)

    try:
        run(serve(service, a.host, a.port, on_ready=ready, allowed_hosts=a.allow_host))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
