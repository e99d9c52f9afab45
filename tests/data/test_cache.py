"""CacheManager / CacheValidator: planning, modes, change detection, views, on small files."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from aiotrain.data.cache import CachedData, CacheManager, CacheMode, CacheValidator

KB = 1024
linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def replace_atomically(path, data: bytes) -> None:
    """Write a new inode and move it over ``path``, then give it ``path``'s old mtime."""
    old = os.stat(path)
    tmp = f"{path}.tmp"
    write(tmp, data)
    os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(tmp, path)


def mapped(path) -> bool:
    with open("/proc/self/maps") as f:
        return os.path.abspath(path) in f.read()


@pytest.fixture
def files(tmp_path):
    return {name: write(tmp_path / f"{name}.bin", os.urandom(size)) for name, size in
            [("small", 1 * KB), ("medium", 100 * KB), ("large", 5000 * KB)]}


def test_size_analysis_maps_what_fits(files):
    cache = CacheManager(memory_limit=200 * KB)
    stats = cache.scan_files(list(files.values()))
    assert stats["total_files"] == 3
    assert stats["cached_files"] == 2  # small + medium
    assert stats["cached_size"] == 101 * KB < 200 * KB
    assert stats["total_size"] == 5101 * KB
    assert stats["memory_limit"] == 200 * KB
    assert cache.mode_of(files["large"]) is CacheMode.NORMAL


def test_scan_goes_on_after_a_file_that_does_not_fit(tmp_path):
    a = write(tmp_path / "a", b"a" * 60)
    b = write(tmp_path / "b", b"b" * 50)
    c = write(tmp_path / "c", b"c" * 30)
    cache = CacheManager(memory_limit=100)
    # b (high priority) takes 50, a (60) no longer fits, c (30) still does
    cache.scan_files([a, b, c], priorities={b: 2, a: 1, c: 0})
    assert [cache.mode_of(p) for p in (a, b, c)] == [CacheMode.NORMAL, CacheMode.MMAP, CacheMode.MMAP]


def test_priorities_beat_size(files):
    cache = CacheManager(memory_limit=5000 * KB)
    stats = cache.scan_files(list(files.values()), priorities={files["large"]: 2})
    assert cache.mode_of(files["large"]) is CacheMode.MMAP
    assert cache.mode_of(files["small"]) is CacheMode.NORMAL
    assert stats["cached_files"] == 1


def test_memory_limit_enforcement(files):
    cache = CacheManager(memory_limit=50 * KB)
    cache.scan_files([files["small"], files["large"]])
    small, large = cache.get(files["small"]), cache.get(files["large"])
    assert small.cached and small.mode is CacheMode.MMAP
    assert not large.cached and large.mode is CacheMode.NORMAL
    assert bytes(large.data) == open(files["large"], "rb").read()
    assert cache.stats()["active_mmaps"] == 1


def test_default_limit_is_80_percent_of_available(monkeypatch):
    import psutil

    class Mem:
        available = 10_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem)
    assert CacheManager().memory_limit == 8_000


@pytest.mark.parametrize("bad", [-1, 1.5, "1GB", True])
def test_bad_memory_limit(bad):
    with pytest.raises(ValueError, match=r"memory_limit \(bytes\) must be a non-negative integer"):
        CacheManager(memory_limit=bad)


def test_missing_paths_are_reported_not_fatal(files, tmp_path):
    cache = CacheManager(memory_limit=KB * KB)
    gone = str(tmp_path / "gone.bin")
    stats = cache.scan_files([files["small"], gone])
    assert stats["total_files"] == 1 and stats["missing"] == [gone]
    assert cache.stats()["missing"] == [gone]


def test_stats_keys_and_values(files):
    cache = CacheManager(memory_limit=202 * KB)
    cache.scan_files(list(files.values()))
    cache.get(files["small"])
    s = cache.stats()
    assert {k: s[k] for k in ("total_entries", "mmap_count", "total_size", "memory_limit",
                              "memory_usage_pct", "active_mmaps")} == {
        "total_entries": 3, "mmap_count": 2, "total_size": 101 * KB, "memory_limit": 202 * KB,
        "memory_usage_pct": 50, "active_mmaps": 1}


def test_get_shares_one_mapping(files):
    with CacheManager(memory_limit=KB * KB) as cache:
        cache.scan_files([files["small"]])
        a, b = cache.get(files["small"]), cache.get(files["small"])
        ta, tb = a.as_tensor(), b.as_tensor()
        assert ta.data_ptr() == tb.data_ptr()
        assert bytes(a.data) == open(files["small"], "rb").read()
        assert cache.stats()["active_mmaps"] == 1


def test_untracked_path_is_read_directly(files):
    cache = CacheManager(memory_limit=KB * KB)
    data = cache.get(files["small"])
    assert not data.cached and bytes(data.data) == open(files["small"], "rb").read()
    assert cache.stats()["active_mmaps"] == 0


@linux_only
def test_zero_copy_tensor_shares_the_mapping(tmp_path):
    path = write(tmp_path / "f.bin", torch.arange(1024, dtype=torch.float32).numpy().tobytes())
    with CacheManager(memory_limit=KB * KB) as cache:
        cache.scan_files([path])
        data = cache.get(path)
        t = data.as_tensor(torch.float32, (32, 32))
        assert t[3, 4].item() == 100.0
        addr = t.data_ptr()
        with open("/proc/self/maps") as f:
            ranges = [line.split()[0].split("-") for line in f if line.rstrip().endswith(path)]
        assert any(int(lo, 16) <= addr < int(hi, 16) for lo, hi in ranges)
        # writes are private to this process (copy-on-write), never reach the file
        t[0, 0] = -1.0
        assert cache.get(path).as_tensor(torch.float32)[0].item() == -1.0
        assert open(path, "rb").read(4) == torch.tensor([0.0]).numpy().tobytes()


def test_as_tensor_checks_element_size(tmp_path):
    path = write(tmp_path / "odd.bin", b"\x00" * 7)
    with pytest.raises(ValueError, match="not a whole number of torch.float32"):
        CacheManager().get(path).as_tensor(torch.float32)


def test_empty_file_gives_empty_data(tmp_path):
    path = write(tmp_path / "empty.bin", b"")
    cache = CacheManager(memory_limit=KB)
    cache.scan_files([path])
    data = cache.get(path)
    assert len(data) == 0 and bytes(data.data) == b"" and data.mode is CacheMode.MMAP
    assert data.as_tensor(torch.int64).shape == (0,)


def test_directory_and_missing_file_are_clear_errors(tmp_path):
    cache = CacheManager()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        cache.get(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory, not a data file"):
        cache.scan_files([tmp_path])
    path = write(tmp_path / "f.bin", b"x")
    cache.scan_files([path])
    os.unlink(path)
    with pytest.raises(FileNotFoundError, match="no such data file.*f.bin"):
        cache.get(path)
    with pytest.raises(FileNotFoundError, match="no such data file"):
        cache.get(tmp_path / "never.bin")


def test_change_detection_same_size_atomic_replace(tmp_path):
    path = write(tmp_path / "d.bin", b"A" * 4096)
    with CacheManager(memory_limit=KB * KB) as cache:
        cache.scan_files([path])
        old = cache.get(path)
        replace_atomically(path, b"B" * 4096)  # same size, same mtime, new inode
        assert os.stat(path).st_mtime_ns == os.stat(path).st_mtime_ns
        new = cache.get(path)
        assert bytes(new.data) == b"B" * 4096
        assert bytes(old.data) == b"A" * 4096  # the old inode stays valid while viewed
        assert cache.stats()["active_mmaps"] == 1


def test_change_detection_in_place_rewrite_same_size(tmp_path):
    path = write(tmp_path / "d.bin", b"A" * 4096)
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([path])
    assert bytes(cache.get(path).data[:1]) == b"A"
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"C" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: ctime still moves
    assert bytes(cache.get(path).data) == b"C" * 4096


def test_change_detection_new_size(tmp_path):
    path = write(tmp_path / "d.bin", b"A" * 100)
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([path])
    assert len(cache.get(path)) == 100
    write(path, b"Z" * 300)
    data = cache.get(path)
    assert len(data) == 300 and bytes(data.data) == b"Z" * 300
    assert cache.entries[0].size == 300


def test_normal_mode_sees_changes(tmp_path):
    path = write(tmp_path / "d.bin", b"A" * 100)
    cache = CacheManager(memory_limit=10)
    cache.scan_files([path])
    assert bytes(cache.get(path).data) == b"A" * 100
    write(path, b"B" * 50)
    assert bytes(cache.get(path).data) == b"B" * 50


TRUNCATE_CHILD = textwrap.dedent("""
    import os, sys
    from aiotrain.data.cache import CacheManager
    path, touch_old_view = sys.argv[1], sys.argv[2] == "old"
    cache = CacheManager(memory_limit=1 << 30)
    cache.scan_files([path])
    old = cache.get(path)
    assert old.as_tensor().sum().item() == 7 * 65536
    os.truncate(path, 4096)
    if touch_old_view:  # the documented window: a view handed out before the truncation
        print(old.as_tensor()[-1].item())
    new = cache.get(path)
    assert len(new) == 4096 and new.as_tensor().sum().item() == 7 * 4096
    print("ok")
""")


@pytest.mark.skipif(not hasattr(signal, "SIGBUS"), reason="no SIGBUS on this platform")
def test_truncated_file_is_remapped_not_sigbus(tmp_path):
    def child(mode: str) -> subprocess.CompletedProcess[str]:
        path = write(tmp_path / f"{mode}.bin", b"\x07" * 65536)
        return subprocess.run([sys.executable, "-c", TRUNCATE_CHILD, path, mode],
                              capture_output=True, text=True, timeout=60)

    # control: touching a stale view really does die of SIGBUS, so the check below means something
    assert child("old").returncode == -signal.SIGBUS
    done = child("new")
    assert done.returncode >= 0, f"child killed by signal {-done.returncode}"
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@linux_only
def test_cleanup_releases_every_mapping(files):
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([files["small"], files["medium"]])
    cache.get(files["small"])
    cache.get(files["medium"])
    assert mapped(files["small"]) and mapped(files["medium"])
    cache.cleanup()
    gc.collect()
    assert not mapped(files["small"]) and not mapped(files["medium"])
    assert cache.stats()["active_mmaps"] == 0
    assert bytes(cache.get(files["small"]).data) == open(files["small"], "rb").read()  # maps again


@linux_only
def test_cleanup_with_live_views_defers_to_last_view(files):
    with CacheManager(memory_limit=KB * KB) as cache:
        cache.scan_files([files["small"], files["medium"]])
        tensor = cache.get(files["small"]).as_tensor()
        view = cache.get(files["medium"]).data[10:20]
        expected = bytes(view)
    # leaving the context did not raise; both mappings outlive it through their views
    assert cache.stats()["active_mmaps"] == 0
    assert cache.stats()["retired_mmaps"] == 2
    assert mapped(files["small"]) and mapped(files["medium"])
    assert bytes(view) == expected and tensor.numel() == KB
    del tensor
    gc.collect()
    assert not mapped(files["small"]) and mapped(files["medium"])
    view.release()
    del view
    gc.collect()
    assert not mapped(files["medium"])
    assert cache.stats()["retired_mmaps"] == 0


@linux_only
def test_invalidate_and_set_cache_mode_release_the_mapping(files):
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([files["small"]])
    cache.get(files["small"])
    cache.invalidate(files["small"])
    gc.collect()
    assert not mapped(files["small"]) and cache.mode_of(files["small"]) is CacheMode.MMAP
    cache.get(files["small"])
    cache.set_cache_mode(files["small"], CacheMode.NORMAL)
    gc.collect()
    assert not mapped(files["small"])
    data = cache.get(files["small"])
    assert data.mode is CacheMode.NORMAL and not data.cached


def test_set_cache_mode_on_untracked_file_overrides_budget(files):
    cache = CacheManager(memory_limit=0)
    cache.set_cache_mode(files["medium"], CacheMode.MMAP)
    assert cache.get(files["medium"]).cached
    cache.set_cache_mode(files["medium"], CacheMode.NONE)
    data = cache.get(files["medium"])
    assert data.mode is CacheMode.NONE and len(data) == 100 * KB


def test_disabled_survives_a_rescan(files):
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([files["small"]])
    cache.set_cache_mode(files["small"], CacheMode.DISABLED)
    stats = cache.scan_files([files["small"]])
    assert cache.mode_of(files["small"]) is CacheMode.DISABLED and stats["cached_files"] == 0


def test_rescan_counts_budget_already_planned(tmp_path):
    a = write(tmp_path / "a", b"a" * 60)
    b = write(tmp_path / "b", b"b" * 60)
    cache = CacheManager(memory_limit=100)
    assert cache.scan_files([a])["remaining"] == 40
    assert cache.scan_files([b])["cached_files"] == 0
    assert cache.scan_files([a])["cached_files"] == 1  # a re-planned, not counted twice


def test_validator_finds_and_invalidates_changes(tmp_path):
    paths = [write(tmp_path / f"{i}.bin", bytes([i]) * 64) for i in range(3)]
    cache = CacheManager(memory_limit=KB)
    cache.scan_files(paths)
    for p in paths:
        cache.get(p)
    validator = CacheValidator()
    assert validator.check_source_changes(cache.entries) == []
    replace_atomically(paths[0], b"\xff" * 64)
    os.unlink(paths[2])
    assert sorted(validator.check_source_changes(cache.entries)) == sorted([paths[0], paths[2]])
    assert validator.auto_invalidate(cache) == 2
    assert cache.stats()["active_mmaps"] == 1
    assert validator.check_source_changes(cache.entries) == [paths[2]]  # still gone
    assert bytes(cache.get(paths[0]).data) == b"\xff" * 64


async def test_aget_runs_off_the_loop(files, monkeypatch):
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([files["small"]])
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real_stat = os.stat

    def spy(path, *a, **k):
        seen.append(threading.get_ident())
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", spy)
    data = await cache.aget(files["small"])
    assert isinstance(data, CachedData) and data.cached
    assert seen and loop_thread not in seen


async def test_concurrent_agets_share_one_mapping(files):
    cache = CacheManager(memory_limit=KB * KB)
    cache.scan_files([files["medium"]])
    results = await asyncio.gather(*(cache.aget(files["medium"]) for _ in range(16)))
    assert len({r.as_tensor().data_ptr() for r in results}) == 1
    assert cache.stats()["active_mmaps"] == 1
