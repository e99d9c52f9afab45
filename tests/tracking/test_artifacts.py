"""Artifacts: versions, dedupe, aliases, download, bad names, concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from aiotrain.tracking import Track


def make(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_versions_dedupe_aliases_download(tmp_path, track_root):
    data = make(tmp_path / "src" / "train.csv", "a,b\n1,2\n")
    make(tmp_path / "src" / "sub" / "labels.txt", "cat\n")
    with Track.run("p") as run:
        a0 = Track.Artifact("mnist", "dataset", description="first", metadata={"rows": 1})
        a0.add_dir(tmp_path / "src")
        assert run.log_artifact(a0, aliases=["best"]).ref == "mnist:v0"
        same = Track.Artifact("mnist", "dataset")
        same.add_dir(tmp_path / "src")
        assert run.log_artifact(same).ref == "mnist:v0"  # identical content: no new version
        data.write_text("a,b\n3,4\n")
        a1 = Track.Artifact("mnist", "dataset")
        a1.add_file(data, name="data/train.csv")
        assert run.log_artifact(a1).ref == "mnist:v1"
        with pytest.raises(RuntimeError):
            a1.add_file(data)
        other = Track.Artifact("mnist", "model")
        other.add_file(data)
        with pytest.raises(ValueError, match="type"):
            run.log_artifact(other)
        empty = Track.Artifact("nothing", "x")
        with pytest.raises(ValueError, match="no files"):
            run.log_artifact(empty)
        with pytest.raises(ValueError):
            run.log_artifact(a0, aliases=["v3"])
    objects = list((track_root / "artifacts" / "objects").rglob("*"))
    assert len([o for o in objects if o.is_file()]) == 3  # train.csv twice, labels once

    with Track.run("p") as consumer:
        latest = consumer.use_artifact("mnist:latest")
        best = consumer.use_artifact("mnist:best")
        v0 = consumer.use_artifact("mnist:v0")
        plain = consumer.use_artifact("mnist")
        with pytest.raises(LookupError, match="known"):
            consumer.use_artifact("mnist:v9")
        with pytest.raises(LookupError):
            consumer.use_artifact("absent:v0")
    assert (latest.version, best.version, v0.version, plain.version) == (1, 0, 0, 1)
    assert latest.aliases == ["latest"] and best.aliases == ["best"]
    assert best.description == "first" and best.metadata == {"rows": 1}
    folder = best.download()
    assert (folder / "train.csv").read_text() == "a,b\n1,2\n"
    assert (folder / "sub" / "labels.txt").read_text() == "cat\n"
    (folder / "train.csv").write_text("edited")  # a copy: the store is untouched
    assert (latest.download() / "data" / "train.csv").read_text() == "a,b\n3,4\n"
    assert (best.download() / "train.csv").read_text() == "a,b\n1,2\n"  # an edited copy is rebuilt
    out = v0.download(tmp_path / "fresh")
    assert (out / "train.csv").read_text() == "a,b\n1,2\n"


def test_bad_names():
    for bad in ("", "a/b", "..", "x/../y", "a\\b", "name:v1"):
        with pytest.raises(ValueError):
            Track.Artifact(bad, "dataset")
    with pytest.raises(ValueError):
        Track.Artifact("ok", "")
    art = Track.Artifact("ok", "t")
    with pytest.raises(FileNotFoundError):
        art.add_file("/nonexistent/file")
    with pytest.raises(RuntimeError):
        art.download()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from aiotrain.tracking import Track
    root, tag, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    Track.set_dir(root)
    src = Path(root).parent / f"src-{tag}"
    versions = []
    with Track.run("p", name=tag) as run:
        ready.with_name(ready.name + tag).touch()
        while not all(ready.with_name(ready.name + t).exists() for t in ("a", "b")):
            pass
        for i in range(8):
            f = src / f"{i}.txt"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"{tag}-{i}")
            art = Track.Artifact("shared", "data")
            art.add_file(f)
            versions.append(run.log_artifact(art).version)
    print(" ".join(map(str, versions)))
""")


def test_two_processes_log_the_same_artifact(tmp_path, track_root):
    ready = tmp_path / "ready-"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(track_root), tag, str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    versions = sorted(int(v) for out, _ in outs for v in out.split())
    assert versions == list(range(16))  # every version number handed out exactly once
    index = json.loads((track_root / "artifacts" / "projects" / "p" / "shared" / "index.json").read_text())
    assert [v["version"] for v in index["versions"]] == list(range(16))
    assert index["aliases"]["latest"] == 15
    with Track.run("p") as run:
        for n in range(16):
            folder = run.use_artifact(f"shared:v{n}").download()
            assert len(list(folder.iterdir())) == 1
