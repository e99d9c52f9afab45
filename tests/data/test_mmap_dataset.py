"""MmapDataset: fixed-size records as zero-copy tensors, per item and per batch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from aiotrain.data.cache import CacheManager, CacheMode
from aiotrain.data.mmap_dataset import MmapDataset


def records_file(path, start: int, count: int, shape=(2, 3), dtype=np.float32) -> np.ndarray:
    arr = np.arange(start, start + count * int(np.prod(shape)), dtype=dtype).reshape(count, *shape)
    arr.tofile(path)
    return arr


@pytest.fixture
def two_files(tmp_path):
    a = records_file(tmp_path / "a.bin", 0, 5)
    b = records_file(tmp_path / "b.bin", 1000, 7)
    return [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")], np.concatenate([a, b])


def test_items_across_files(two_files):
    paths, expected = two_files
    with MmapDataset(paths, (2, 3), torch.float32) as ds:
        assert len(ds) == 12
        for i in range(-12, 12):
            item = ds[i]
            assert item.shape == (2, 3) and item.dtype == torch.float32
            assert torch.equal(item, torch.from_numpy(expected[i]))


def test_item_is_a_view_of_the_mapping(tmp_path):
    records_file(tmp_path / "a.bin", 0, 4)
    cache = CacheManager(memory_limit=1 << 20)
    ds = MmapDataset(tmp_path / "a.bin", (2, 3), "float32", cache=cache)
    whole = cache.get(tmp_path / "a.bin").as_tensor(torch.float32)
    assert ds[2].data_ptr() == whole.data_ptr() + 2 * ds.record_bytes
    assert ds[0].untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()


def test_getitems_is_one_batch_tensor(two_files):
    paths, expected = two_files
    ds = MmapDataset(paths, (2, 3), np.float32)
    indices = [11, 0, 4, 5, -1, 7, 3]
    batch = ds.__getitems__(indices)
    assert batch.shape == (7, 2, 3) and batch.dtype == torch.float32
    assert torch.equal(batch, torch.from_numpy(expected[indices]))
    assert ds.__getitems__([]).shape == (0, 2, 3)
    single = MmapDataset(paths[0], (2, 3), torch.float32)
    assert torch.equal(single.__getitems__(torch.tensor([4, 1])), torch.from_numpy(expected[[4, 1]]))


def test_files_over_the_limit_are_read_not_mapped(two_files):
    paths, expected = two_files
    cache = CacheManager(memory_limit=5 * 24)  # only a.bin fits
    ds = MmapDataset(paths, (2, 3), torch.float32, cache=cache)
    assert [cache.mode_of(p) for p in paths] == [CacheMode.MMAP, CacheMode.NORMAL]
    assert torch.equal(ds[8], torch.from_numpy(expected[8]))
    assert torch.equal(ds.__getitems__([9, 1, 6]), torch.from_numpy(expected[[9, 1, 6]]))
    assert cache.stats()["active_mmaps"] == 1


def test_bfloat16_records_through_positioned_reads(tmp_path):
    values = torch.arange(12, dtype=torch.bfloat16)
    (tmp_path / "h.bin").write_bytes(values.view(torch.uint8).numpy().tobytes())
    ds = MmapDataset(tmp_path / "h.bin", 4, torch.bfloat16, cache=CacheManager(memory_limit=0))
    assert torch.equal(ds.__getitems__([2, 0]), values.view(3, 4)[[2, 0]])


def test_bad_inputs(tmp_path):
    records_file(tmp_path / "a.bin", 0, 3)
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(FileNotFoundError, match="no such data file: .*nope.bin"):
        MmapDataset(tmp_path / "nope.bin", 4, torch.uint8)
    with pytest.raises(ValueError, match="10 bytes is not a whole number of 4-byte records"):
        MmapDataset(tmp_path / "odd.bin", 4, torch.uint8)
    with pytest.raises(ValueError, match=r"record_shape .*: each dimension .* must be a positive integer"):
        MmapDataset(tmp_path / "a.bin", (0, 3), torch.float32)
    with pytest.raises(ValueError, match="at least one file"):
        MmapDataset([], 4, torch.uint8)
    with pytest.raises(TypeError, match="unsupported dtype"):
        MmapDataset(tmp_path / "a.bin", 4, object)
    ds = MmapDataset(tmp_path / "a.bin", (2, 3), torch.float32)
    with pytest.raises(IndexError, match="index 3 out of range for 3 records"):
        ds[3]
    with pytest.raises(IndexError, match="index -4 out of range"):
        ds.__getitems__([0, -4])


def test_a_file_that_changed_size_is_a_clear_error(tmp_path):
    path = tmp_path / "a.bin"
    records_file(path, 0, 4)
    ds = MmapDataset(path, (2, 3), torch.float32)
    records_file(path, 0, 2)  # rewritten shorter: remapped, never SIGBUS
    with pytest.raises(RuntimeError, match="changed size since the dataset was opened"):
        ds[0]


def test_a_replaced_file_serves_its_new_content(tmp_path):
    path = tmp_path / "a.bin"
    records_file(path, 0, 4)
    ds = MmapDataset(path, (2, 3), torch.float32)
    assert ds[1][0, 0].item() == 6.0
    records_file(tmp_path / "new.bin", 100, 4)
    (tmp_path / "new.bin").replace(path)
    assert ds[1][0, 0].item() == 106.0


def test_pickles_for_worker_processes(two_files):
    paths, expected = two_files
    ds = pickle.loads(pickle.dumps(MmapDataset(paths, (2, 3), torch.float32)))
    assert torch.equal(ds[6], torch.from_numpy(expected[6]))


def test_works_with_torch_dataloader(two_files):
    paths, expected = two_files
    ds = MmapDataset(paths, (2, 3), torch.float32)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=torch.utils.data.default_convert)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [5, 5, 2]
    assert torch.equal(torch.cat(batches), torch.from_numpy(expected))


def test_scalar_records(tmp_path):
    import numpy as np

    path = tmp_path / "labels.i64"
    path.write_bytes(np.arange(10, dtype=np.int64).tobytes())
    ds = MmapDataset(str(path), (), torch.int64)
    assert len(ds) == 10 and ds[3].shape == () and int(ds[3]) == 3
    assert ds.__getitems__([9, 0, 4]).tolist() == [9, 0, 4]
