"""Streaming from object storage: aiotrain's RemoteDataset against the usual ways, side by side.

A real S3 API server (moto's, on 127.0.0.1) behind a loopback proxy that makes it behave like a
remote store: 50 ms before the first byte of every response, each connection capped at 20 MB/s
(``examples/local_s3.py``). The data: ~100 KB JPEGs (generated at start with Pillow and numpy),
4,000 of them; every reader decodes them the same way (Pillow with JPEG draft scaling to about
224 px, a centre crop to 224x224, uint8 HWC) in N = core count worker processes, batch 64, and
the training step is a 10 ms GIL-free sleep.

- (a) packed shards (~64 MB): aiotrain (``RemoteDataset`` packed format, ``AsyncLoader(workers=N)``,
  the Engine) vs WebDataset tars + ``DataLoader(num_workers=N)`` (curl through the proxy, as
  WebDataset reads http URLs) vs MosaicML Streaming ``StreamingDataset`` (MDS shards) vs litdata
  ``StreamingDataset``, each reading its own format of the same items through the same proxy.
- (b) one object per item: aiotrain (``aget`` through ``ObjectSource``) vs ``DataLoader(num_workers=N)``
  over a map-style dataset that GETs each object with boto3, and the ceiling: a bare asyncio
  client (obstore) fetching the same objects, no decoding, no training.
- (c) no latency, no cap (decode-bound): aiotrain vs WebDataset + DataLoader straight to the server.
- the second epoch from aiotrain's cache vs the same shards read from local files; resume
  exactness (a loader resumed from a mid-epoch state_dict reads exactly the rest of the epoch).
- the client: obstore vs aiobotocore, 400 GETs of 100 KB at concurrency 32 straight to the server:
  throughput and CPU per request.

Every reader runs in its own process (peak RSS and PSS summed over it and its workers).
``items_s`` counts the whole epoch from the moment the reader is created, so start-up and time
to first batch are in it; ``first_batch_s`` is that start-up alone. Peers that cannot run here
are null, with the reason in ``notes``. The peers come from the ``bench`` extra; MosaicML
Streaming needs torchvision, which may not install beside a CPU torch (then it is null).
One JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 64
STEP_S = 0.010
DELAY_S = 0.050
RATE = 20e6
SHARD_BYTES = 64 << 20
BUCKET = "bench"


# the data -------------------------------------------------------------------------------------
def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct ~100 KB JPEGs (380x380, a gradient and noise, quality 90)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = 380
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    base = ramp[None, :, None] * 0.5 + ramp[:, None, None] * 0.3
    out = []
    for i in range(count):
        img = (base + rng.normal(0, 40, (side, side, 3)) + (i % 50)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode(raw: bytes):
    """What every reader does per item: JPEG -> 224x224x3 uint8 (draft-scaled decode, crop)."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(raw))
    img.draft("RGB", (224, 224))
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) < 224:
        img = img.resize((max(224, w), max(224, h)))
        w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    return np.asarray(img.crop((left, top, left + 224, top + 224)))


def decode_item(item, gen=None):
    """aiotrain's transform over a stored item (packed: {"jpg", "cls"}; tar: {"jpg", "cls"})."""
    cls = item["cls"]
    return decode(item["jpg"]), int(cls if isinstance(cls, int) else bytes(cls).decode())


def step() -> None:
    time.sleep(STEP_S)  # the GIL-free training step


# readers (each runs in a child process) ------------------------------------------------------------
def child(name: str, spec: dict) -> dict:
    return READERS[name](spec)


def _consume(batches, n_items: int, t0: float) -> dict:
    first = None
    seen = 0
    for batch in batches:
        if first is None:
            first = time.perf_counter() - t0
        seen += len(batch[1])
        step()
    total = time.perf_counter() - t0
    assert seen == n_items, f"read {seen} items, expected {n_items}"
    return {"items_s": round(n_items / total, 1), "first_batch_s": round(first or 0.0, 3),
            "epoch_s": round(total, 2)}


def _engine_epochs(loader, n_items: int, t0: float, epochs: int = 1) -> dict:
    """Run the aiotrain Engine over ``loader``; the step sleeps 10 ms on the compute thread."""
    from aiotrain import Engine, Events

    marks: dict = {"first": None, "epochs": []}
    engine = Engine(lambda eng, batch: step())

    @engine.on(Events.ITERATION_STARTED(once=1))
    def first(_):
        marks["first"] = time.perf_counter() - t0

    @engine.on(Events.EPOCH_COMPLETED)
    def done(_):
        marks["epochs"].append(time.perf_counter())

    engine.run_sync(loader, max_epochs=epochs)
    ends = [t0, *marks["epochs"]]
    rates = [round(n_items / (b - a), 1) for a, b in zip(ends, ends[1:], strict=False)]
    return {"items_s": rates[0], "epoch_items_s": rates, "first_batch_s": round(marks["first"], 3),
            "epoch_s": round(ends[1] - t0, 2)}


def run_aiotrain_packed(spec: dict) -> dict:
    from aiotrain import AsyncLoader
    from aiotrain.data.remote import RemoteDataset, ShardCache
    from aiotrain.runtime import run

    t0 = time.perf_counter()
    cache = ShardCache(spec["cache"], disk_bytes=spec.get("disk_bytes", 16 << 30))
    ds = run(RemoteDataset.aopen(spec["url"], cache=cache))
    loader = AsyncLoader(ds, BATCH, sampler=ds.sampler(seed=0), workers=spec["workers"],
                         transform=decode_item, rng="numpy", concurrency=128, prefetch=6)
    try:
        out = _engine_epochs(loader, spec["items"], t0, spec.get("epochs", 1))
    finally:
        loader.close()
    out["hit_rate"] = round(ds.stats.hit_rate(), 3)
    out["mb_downloaded"] = round(ds.stats.bytes / 1e6, 1)
    return out


class _PerObject:
    """aiotrain, one object per item: ``aget`` GETs it on the loop."""

    def __init__(self, url: str, n: int) -> None:
        from aiotrain.data.remote import ObjectSource

        self.source, self.n = ObjectSource(url), n

    def __len__(self) -> int:
        return self.n

    def __reduce__(self):
        return (_Sized, (self.n,))

    async def aget(self, i: int) -> dict:
        return {"jpg": bytes(await self.source.aget(f"{i:06d}.jpg")), "cls": i % 10}


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def run_aiotrain_objects(spec: dict) -> dict:
    from aiotrain import AsyncLoader

    t0 = time.perf_counter()
    loader = AsyncLoader(_PerObject(spec["url"], spec["items"]), BATCH, shuffle=True,
                         workers=spec["workers"], transform=decode_item, rng="numpy",
                         concurrency=256, prefetch=8)
    try:
        return _engine_epochs(loader, spec["items"], t0)
    finally:
        loader.close()


class _Boto3Objects:
    """The map-style dataset most people start with: boto3 GET per item (client per worker)."""

    def __init__(self, bucket: str, prefix: str, n: int, endpoint: str) -> None:
        self.bucket, self.prefix, self.n, self.endpoint = bucket, prefix, n, endpoint
        self._client = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint)
        raw = self._client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{i:06d}.jpg")["Body"].read()
        return decode(raw), i % 10


def run_dataloader_objects(spec: dict) -> dict:
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    ds = _Boto3Objects(BUCKET, "objects", spec["items"], spec["endpoint"])
    dl = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=spec["workers"])
    return _consume(dl, spec["items"], t0)


def run_ceiling(spec: dict) -> dict:
    import obstore
    from obstore.store import from_url

    async def go() -> float:
        store = from_url(f"s3://{BUCKET}/objects", client_options={"allow_http": True})
        sem = asyncio.Semaphore(256)

        async def one(i: int) -> int:
            async with sem:
                r = await obstore.get_async(store, f"{i:06d}.jpg")
                return len(await r.bytes_async())

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(spec["items"])))
        return time.perf_counter() - t0

    return {"items_s": round(spec["items"] / asyncio.run(go()), 1)}


def run_webdataset(spec: dict) -> dict:
    import webdataset as wds
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    ds = wds.WebDataset(spec["urls"], shardshuffle=False, empty_check=False,
                        workersplitter=wds.split_by_worker).map(_sample_decode)
    dl = DataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
    return _consume(dl, spec["items"], t0)


class _MosaicImages:
    """MosaicML Streaming's dataset with the shared decode (a class made on first use: the
    library is imported only where it runs)."""

    made: Any = None

    @classmethod
    def make(cls, **kw: Any) -> Any:
        from streaming import StreamingDataset

        class Images(StreamingDataset):
            def __getitem__(self, i):
                return _sample_decode(super().__getitem__(i))

        Images.__qualname__ = "_MosaicImages.made"
        cls.made = Images
        return Images(**kw)


def run_mosaic(spec: dict) -> dict:
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    ds = _MosaicImages.make(remote=spec["url"], local=spec["cache"], shuffle=False, batch_size=BATCH)
    dl = DataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
    return _consume(dl, spec["items"], t0)


def _sample_decode(sample: dict):
    return decode(sample["jpg"]), int(sample["cls"])


def run_litdata(spec: dict) -> dict:
    import litdata
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    ds = litdata.StreamingDataset(spec["url"], storage_options={"endpoint_url": spec["endpoint"]},
                                  max_cache_size="8GB", cache_dir=spec["cache"],
                                  transform=_sample_decode)
    dl = DataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
    try:
        return _consume(dl, spec["items"], t0)
    except RuntimeError as exc:
        if "builder error" in str(exc):  # reqwest refusing http:// without allow_http
            raise RuntimeError("litdata reads chunks with an obstore client whose options it fixes "
                               "without allow_http, so it cannot reach the plain-http loopback "
                               "server (obstore: 'HTTP error: builder error')") from None
        raise


def run_resume(spec: dict) -> dict:
    """A loader stopped half way through the epoch and resumed from its state_dict in a new loader reads
    exactly the rest of the epoch's order."""
    from aiotrain import AsyncLoader
    from aiotrain.data.remote import RemoteDataset, ShardCache
    from aiotrain.runtime import run

    def ids(items):
        return [int(it["i"]) for it in items]

    async def go() -> bool:
        ds = await RemoteDataset.aopen(spec["url"], cache=ShardCache(spec["cache"]))
        def loader():
            return AsyncLoader(ds, BATCH, sampler=ds.sampler(seed=3), collate_fn=ids)
        straight = [i async for b in loader() for i in b]
        first = loader()
        got: list[int] = []
        it = aiter(first)
        for _ in range(max(1, len(straight) // BATCH // 2)):  # stop half way
            got += await anext(it)
        state = json.loads(json.dumps(first.state_dict()))
        await it.aclose()
        second = loader()
        second.load_state_dict(state)
        got += [i async for b in second for i in b]
        await ds.aclose()
        return got == straight and len(set(got)) == spec["items"]

    return {"resume_exact": run(go())}


def run_clients(spec: dict) -> dict:
    """obstore vs aiobotocore: GETs of the per-item objects straight to the server."""
    import resource

    n = min(spec["items"], 400)
    out: dict = {}

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def with_obstore() -> None:
        import obstore
        from obstore.store import from_url

        store = from_url(f"s3://{BUCKET}/objects", client_options={"allow_http": True})
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with sem:
                await (await obstore.get_async(store, f"{i:06d}.jpg")).bytes_async()

        await asyncio.gather(*(one(i) for i in range(n)))

    async def with_aiobotocore() -> None:
        from aiobotocore.session import get_session

        sem = asyncio.Semaphore(32)
        async with get_session().create_client("s3", endpoint_url=spec["endpoint"]) as client:
            async def one(i: int) -> None:
                async with sem:
                    r = await client.get_object(Bucket=BUCKET, Key=f"objects/{i:06d}.jpg")
                    async with r["Body"] as body:
                        await body.read()

            await asyncio.gather(*(one(i) for i in range(n)))

    for name, fn in (("obstore", with_obstore), ("aiobotocore", with_aiobotocore)):
        try:
            c0, t0 = cpu(), time.perf_counter()
            asyncio.run(fn())
            wall, used = time.perf_counter() - t0, cpu() - c0
            out[name] = {"requests_s": round(n / wall, 1), "cpu_ms_per_request": round(used / n * 1e3, 3)}
        except ImportError as exc:
            out[name] = {"error": f"not installed: {exc}"}
    return out


READERS = {
    "aiotrain_packed": run_aiotrain_packed, "aiotrain_objects": run_aiotrain_objects,
    "dataloader_objects": run_dataloader_objects, "ceiling": run_ceiling,
    "webdataset": run_webdataset, "mosaic": run_mosaic, "litdata": run_litdata,
    "resume": run_resume, "clients": run_clients,
}


# the parent ------------------------------------------------------------------------------------
_ONLY: set[str] = set()  # --only: the result keys to measure (all when empty)


def wanted(*keys: str) -> bool:
    return not _ONLY or any(k in _ONLY for k in keys)


def measure(name: str, spec: dict, env: dict, notes: dict, key: str, timeout: int = 600) -> dict | None:
    """Run reader ``name`` in a child process; None (and a note) if it cannot run."""
    if not wanted(key):
        return None
    from _common import PeakRss

    proc = subprocess.Popen([sys.executable, __file__, "--child", name, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    # memory is sampled from here, so the sampler takes no CPU or GIL from the reader
    with PeakRss(pss=True, pid=proc.pid, every_s=0.05) as mem:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        errors = [ln for ln in stderr.splitlines() if "Error" in ln]
        tail = (errors or stderr.strip().splitlines() or ["no output"])[-1]
        notes[key] = f"{name} could not run: {tail[:300]}"
        return None
    out = json.loads(lines[-1])
    if "error" in out:
        notes[key] = f"{name} could not run: {out['error']}"
        return None
    out.update(peak_rss_mb=mem.mb, peak_pss_mb=mem.pss_mb)
    return out


def _put_objects(s3, jpegs: list[bytes]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = s3.client()
    with ThreadPoolExecutor(16) as pool:  # the benchmark's set-up, not library code
        list(pool.map(lambda i: client.put_object(Bucket=BUCKET, Key=f"objects/{i:06d}.jpg",
                                                  Body=jpegs[i]), range(len(jpegs))))


def _upload_dir(s3, local: Path, prefix: str) -> None:
    client = s3.client()
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")


def _write_mds(jpegs: list[bytes], out: Path) -> str | None:
    try:
        from streaming import MDSWriter
    except Exception as exc:  # ImportError, or torchvision failing to load its ops
        return f"MosaicML Streaming cannot be imported here: {type(exc).__name__}: {exc}"[:300]
    with MDSWriter(out=str(out), columns={"jpg": "bytes", "cls": "int"}, size_limit=SHARD_BYTES) as w:
        for i, raw in enumerate(jpegs):
            w.write({"jpg": raw, "cls": i % 10})
    return None


def _litdata_item(path: str) -> dict:
    return {"jpg": Path(path).read_bytes(), "cls": int(Path(path).stem) % 10}


def _write_litdata(jpegs: list[bytes], out: Path) -> str | None:
    try:
        import litdata
    except Exception as exc:
        return f"litdata cannot be imported here: {type(exc).__name__}: {exc}"[:300]
    folder = out.parent / "jpgs"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, raw in enumerate(jpegs):
        (folder / f"{i:06d}.jpg").write_bytes(raw)
        paths.append(str(folder / f"{i:06d}.jpg"))
    try:
        litdata.optimize(fn=_litdata_item, inputs=paths, output_dir=str(out), chunk_bytes="64MB",
                         num_workers=1, mode="overwrite")
    except Exception as exc:
        return f"litdata.optimize failed: {type(exc).__name__}: {exc}"[:300]
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("spec", nargs="?")
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--only", default="", help="comma-separated result keys to measure (e.g. "
                    "aiotrain,webdataset,decode_bound,decode_bound_webdataset); default all")
    a = ap.parse_args()
    _ONLY.update(k for k in a.only.split(",") if k)
    if a.child:
        try:
            print(json.dumps(child(a.child, json.loads(a.spec))))
        except ImportError as exc:
            print(json.dumps({"error": f"not installed: {exc}"}))
        except Exception as exc:
            traceback.print_exc()
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}))
        return

    from _common import emit

    from aiotrain.data.remote import pack
    from examples.local_s3 import LocalS3, LoopbackProxy

    # the peers' writers print progress on stdout (their spawned workers too): the set-up's
    # output goes to stderr, and stdout carries the one JSON line
    sys.stdout.flush()
    json_out = os.dup(1)
    os.dup2(2, 1)
    load_before = os.getloadavg()
    notes: dict[str, str] = {}
    n, workers = a.items, a.workers
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    atexit.register(shutil.rmtree, tmp, True)  # ~2.7 GB of shards and caches: never left behind
    with LocalS3() as s3, LoopbackProxy(s3.port, delay_s=DELAY_S, rate=RATE) as proxy:
        s3.bucket(BUCKET)
        os.environ.update(s3.env)  # the writers below talk to the server straight
        jpegs = make_jpegs(n)
        items = [{"jpg": raw, "cls": i % 10, "i": i} for i, raw in enumerate(jpegs)]
        manifest = pack(items, tmp / "packed", shard_bytes=SHARD_BYTES)
        _upload_dir(s3, tmp / "packed", "packed")
        tars = pack([{"__key__": f"{i:06d}", "jpg": raw, "cls": str(i % 10)} for i, raw in enumerate(jpegs)],
                    tmp / "wds", shard_bytes=SHARD_BYTES, format="tar")
        _upload_dir(s3, tmp / "wds", "wds")
        if wanted("per_object_aiotrain", "per_object_dataloader", "per_object_ceiling", "clients"):
            _put_objects(s3, jpegs)
        mds_note = _write_mds(jpegs, tmp / "mds") if wanted("streaming") else "not run (--only)"
        if mds_note is None:
            _upload_dir(s3, tmp / "mds", "mds")
        lit_note = _write_litdata(jpegs, tmp / "lit") if wanted("litdata") else "not run (--only)"
        if lit_note is None:
            _upload_dir(s3, tmp / "lit", "lit")
        del items

        slow = {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint, "S3_ENDPOINT_URL": proxy.endpoint}
        fast = {**s3.env, "S3_ENDPOINT_URL": s3.endpoint}
        base = {"items": n, "workers": workers}

        def tar_urls(endpoint: str) -> list[str]:
            return [f"pipe:curl -s --fail {endpoint}/{BUCKET}/wds/{s.name}" for s in tars.shards]

        def cache(name: str) -> str:
            return str(tmp / "cache" / name)

        r: dict = {}
        r["aiotrain"] = measure("aiotrain_packed", {**base, "url": f"s3://{BUCKET}/packed",
                                                   "cache": cache("a1"), "epochs": 2}, slow, notes, "aiotrain")
        r["webdataset"] = measure("webdataset", {**base, "urls": tar_urls(proxy.endpoint)}, slow, notes, "webdataset")
        if mds_note is None:
            r["mosaic"] = measure("mosaic", {**base, "url": f"s3://{BUCKET}/mds", "cache": cache("m")},
                                  slow, notes, "streaming")
        else:
            r["mosaic"], notes["streaming"] = None, mds_note
        if lit_note is None:
            r["litdata"] = measure("litdata", {**base, "url": f"s3://{BUCKET}/lit", "cache": cache("l"),
                                               "endpoint": proxy.endpoint}, slow, notes, "litdata")
        else:
            r["litdata"], notes["litdata"] = None, lit_note
        r["obj_aiotrain"] = measure("aiotrain_objects", {**base, "url": f"s3://{BUCKET}/objects"}, slow,
                                    notes, "per_object_aiotrain")
        r["obj_dataloader"] = measure("dataloader_objects", {**base, "endpoint": proxy.endpoint}, slow,
                                      notes, "per_object_dataloader")
        r["ceiling"] = measure("ceiling", base, slow, notes, "per_object_ceiling")
        r["c_aiotrain"] = measure("aiotrain_packed", {**base, "url": f"s3://{BUCKET}/packed",
                                                     "cache": cache("c1")}, fast, notes, "decode_bound")
        r["c_webdataset"] = measure("webdataset", {**base, "urls": tar_urls(s3.endpoint)}, fast, notes,
                                    "decode_bound_webdataset")
        r["local"] = measure("aiotrain_packed", {**base, "url": str(tmp / "packed"), "cache": cache("x"),
                                                "disk_bytes": 0}, fast, notes, "local")
        r["resume"] = measure("resume", {**base, "url": f"s3://{BUCKET}/packed", "cache": cache("r")},
                              fast, notes, "resume")
        r["clients"] = measure("clients", {**base, "endpoint": s3.endpoint}, fast, notes, "clients")

    def rate(key: str) -> float | None:
        return r[key]["items_s"] if r.get(key) else None

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 2) if x and y else None

    peers = [v for v in (rate("mosaic"), rate("litdata")) if v]
    best_peer = max(peers) if peers else None
    cached = r["aiotrain"]["epoch_items_s"][1] if r.get("aiotrain") else None
    sys.stdout.flush()
    os.dup2(json_out, 1)
    emit("bench_remote",
         items=n, workers=workers, batch=BATCH, step_ms=STEP_S * 1e3, delay_ms=DELAY_S * 1e3,
         cap_mb_s=RATE / 1e6, shards=len(manifest.shards),
         shard_mb=round(max(s.bytes or 0 for s in manifest.shards) / 1e6, 1),
         aiotrain_items_s=rate("aiotrain"), webdataset_dataloader_items_s=rate("webdataset"),
         streaming_items_s=rate("mosaic"), litdata_items_s=rate("litdata"),
         vs_webdataset_dataloader=ratio(rate("aiotrain"), rate("webdataset")),
         vs_best_streaming_peer=ratio(rate("aiotrain"), best_peer),
         first_batch_s=r["aiotrain"]["first_batch_s"] if r.get("aiotrain") else None,
         per_object_aiotrain_items_s=rate("obj_aiotrain"),
         per_object_dataloader_items_s=rate("obj_dataloader"),
         per_object_ceiling_items_s=rate("ceiling"),
         per_object_vs_dataloader=ratio(rate("obj_aiotrain"), rate("obj_dataloader")),
         per_object_vs_ceiling=ratio(rate("obj_aiotrain"), rate("ceiling")),
         decode_bound_aiotrain_items_s=rate("c_aiotrain"),
         decode_bound_webdataset_items_s=rate("c_webdataset"),
         decode_bound_ratio=ratio(rate("c_aiotrain"), rate("c_webdataset")),
         cached_epoch_items_s=cached, local_files_items_s=rate("local"),
         cached_epoch_vs_local=ratio(cached, rate("local")),
         resume_exact=r["resume"]["resume_exact"] if r.get("resume") else None,
         clients=r.get("clients"),
         memory_mb={k: {"rss": v["peak_rss_mb"], "pss": v["peak_pss_mb"]} for k, v in r.items()
                    if v and "peak_rss_mb" in v},
         readers=r, notes=notes,
         load_avg_before=[round(x, 2) for x in load_before],
         load_avg_after=[round(x, 2) for x in os.getloadavg()],
         targets={"vs_webdataset_dataloader_min": 2.0, "vs_best_streaming_peer_min": 1.0,
                  "first_batch_s_max": 1.0, "per_object_vs_dataloader_min": 8.0,
                  "per_object_vs_ceiling_min": 0.9, "decode_bound_ratio_min": 0.9,
                  "cached_epoch_vs_local_min": 0.9})


if __name__ == "__main__":
    main()
