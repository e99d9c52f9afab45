"""The one liveness check: the owning process by pid *and* create time, on this host."""

from __future__ import annotations

import socket
import subprocess
import sys

from aiotrain.owner import current_owner, owner_alive, owner_of, process_alive


def test_this_process_is_alive_and_a_reused_pid_is_not():
    me = current_owner()
    assert owner_alive(me) is True and me["host"] == socket.gethostname()
    # the same pid, started at another time: a different process that reuses the pid
    assert owner_alive({**me, "started": me["started"] - 3600}) is False
    assert process_alive({"owner": {**me, "started": me["started"] + 3600}}) is False


def test_an_ended_process_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        owner = {"pid": child.pid, "started": psutil.Process(child.pid).create_time(),
                 "host": socket.gethostname()}
        assert owner_alive(owner) is True
    finally:
        child.kill()
        child.wait()
    assert owner_alive(owner) is False and process_alive({"owner": owner}) is False


def test_another_host_is_unknown_and_reads_as_running():
    owner = {**current_owner(), "host": "elsewhere.example"}
    assert owner_alive(owner) is None and process_alive({"owner": owner}) is True
    assert owner_alive({"pid": None}) is None


def test_older_records_without_a_create_time_check_the_pid():
    legacy = {"pid": current_owner()["pid"], "system": {"hostname": socket.gethostname()}}
    assert owner_of(legacy)["started"] is None and process_alive(legacy) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive({"pid": child.pid, "system": {"hostname": socket.gethostname()}}) is False
