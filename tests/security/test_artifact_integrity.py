"""Artifact integrity (issue 24, item 6): a stored file that no longer matches the sha256 its
version recorded is refused, naming the file, by ``use_artifact`` and ``download``; nothing is
copied from it; an index that names a file outside the store is refused; a materialized copy
that was edited is rebuilt from the store; logging again repairs a corrupt stored object."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aiotrain.tracking import Track
from aiotrain.tracking.artifacts import ArtifactIntegrityError


@pytest.fixture
def logged(tmp_path: Path, track_root: Path) -> tuple[Path, dict]:
    """An artifact ``data:v0`` of two files; returns its store folder and its index."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "train.csv").write_text("a,b\n1,2\n")
    (src / "sub" / "labels.txt").write_text("cat\n")
    with Track.run("p") as run:
        art = Track.Artifact("data", "dataset")
        art.add_dir(src)
        run.log_artifact(art)
    folder = track_root / "artifacts" / "projects" / "p" / "data"
    return folder, json.loads((folder / "index.json").read_text())


def _object(track_root: Path, index: dict, member: str) -> Path:
    sha = index["versions"][0]["files"][member]["sha256"]
    return track_root / "artifacts" / "objects" / sha[:2] / sha


def _tamper(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-2] + b"9\n")  # the same size: only the content differs


def test_a_tampered_stored_file_is_refused_by_use_and_by_download(logged, track_root, tmp_path):
    _, index = logged
    with Track.run("p") as ok:
        art = ok.use_artifact("data:v0")  # intact: used, recorded as a consumer
    _tamper(_object(track_root, index, "train.csv"))
    with Track.run("p") as consumer:
        with pytest.raises(ArtifactIntegrityError, match=r"data:v0: stored file 'train.csv' .* does not match its "
                                                         r"recorded sha256"):
            consumer.use_artifact("data:latest")
    assert not (consumer.dir / "artifacts" / "used.jsonl").exists()  # not recorded as a consumer
    target = tmp_path / "out"
    with pytest.raises(ArtifactIntegrityError, match="'train.csv'.*nothing was copied from it"):
        art.download(target)
    assert not (target / "train.csv").exists()  # no tampered copy left behind
    with pytest.raises(ArtifactIntegrityError, match="train.csv"):
        art.download()  # the store's own materialized folder
    message = ""
    try:
        art.download()
    except ArtifactIntegrityError as exc:
        message = str(exc)
    assert len(message.splitlines()) == 1 and str(_object(track_root, index, "train.csv")) in message


def test_a_missing_stored_file_is_named(logged, track_root):
    _, index = logged
    _object(track_root, index, "sub/labels.txt").unlink()
    with Track.run("p") as run, pytest.raises(ArtifactIntegrityError, match="'sub/labels.txt' is missing"):
        run.use_artifact("data:v0")


def test_an_edited_materialized_folder_is_rebuilt_from_the_store(logged):
    with Track.run("p") as run:
        art = run.use_artifact("data:v0")
    folder = art.download()
    (folder / "train.csv").write_text("a,b\n7,7\n")  # the same size, edited in place
    (folder / "sub" / "labels.txt").unlink()
    again = art.download()
    assert again == folder
    assert (folder / "train.csv").read_text() == "a,b\n1,2\n" and (folder / "sub" / "labels.txt").read_text() == "cat\n"


@pytest.mark.parametrize("edit, needle", [
    (lambda files: files.update({"../../escape.txt": files.pop("train.csv")}), "outside the version's folder"),
    (lambda files: files["train.csv"].update(sha256="../../../../etc/passwd"), "no valid sha256"),
])
def test_an_index_that_names_files_outside_the_store_is_refused(logged, tmp_path, edit, needle):
    folder, index = logged
    edit(index["versions"][0]["files"])
    (folder / "index.json").write_text(json.dumps(index))
    with Track.run("p") as run, pytest.raises(ArtifactIntegrityError, match=needle):
        run.use_artifact("data:v0")
    assert not (tmp_path / "escape.txt").exists()


def test_logging_the_content_again_repairs_a_corrupt_stored_object(logged, track_root, tmp_path):
    _, index = logged
    stored = _object(track_root, index, "train.csv")
    _tamper(stored)
    src = tmp_path / "again.csv"
    src.write_text("a,b\n1,2\n")
    with Track.run("p") as run:
        art = Track.Artifact("data2", "dataset")
        art.add_file(src, name="train.csv")
        run.log_artifact(art)  # the same content as the corrupt object: it is written again
    assert stored.read_text() == "a,b\n1,2\n"
    with Track.run("p") as user:
        assert (user.use_artifact("data:v0").download() / "train.csv").read_text() == "a,b\n1,2\n"


def test_a_file_changed_right_after_it_was_hashed_is_hashed_again(logged, track_root):
    _, index = logged
    with Track.run("p") as run:
        run.use_artifact("data:v0")  # hashed; written under two seconds ago, so not remembered
        stored = _object(track_root, index, "train.csv")
        st = stored.stat()
        _tamper(stored)  # possibly within the same clock tick: same ctime, same mtime, same size
        os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(ArtifactIntegrityError, match="train.csv"):
            run.use_artifact("data:v0")


def test_a_remembered_hash_is_dropped_when_the_file_changes(logged, track_root, monkeypatch):
    from aiotrain.tracking import artifacts

    _, index = logged
    monkeypatch.setattr(artifacts, "_SETTLED_NS", -10**12)  # remember every hash at once
    with Track.run("p") as run:
        run.use_artifact("data:v0")  # hashed and remembered
        stored = _object(track_root, index, "train.csv")
        st = stored.stat()
        deadline = st.st_ctime_ns
        while stored.stat().st_ctime_ns == deadline:  # the next clock tick of the file system
            os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))
        _tamper(stored)
        os.utime(stored, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: the ctime moved on
        assert stored.stat().st_size == st.st_size and stored.stat().st_mtime_ns == st.st_mtime_ns
        with pytest.raises(ArtifactIntegrityError, match="train.csv"):
            run.use_artifact("data:v0")
