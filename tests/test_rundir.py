import os
import socket
import subprocess
import sys

import pytest

from multibox.engine.rundir import RunDirError, RunLock, fresh_out_dir, holds_run, lock_owner


def test_lock_is_exclusive_across_processes_and_released(tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from multibox.engine.rundir import RunLock; import time; RunLock({out!r}).acquire(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        owner = lock_owner(out)
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        with pytest.raises(RunDirError, match=f"another run is writing to this folder \\(process {holder.pid}"):
            RunLock(out).acquire()
        assert fresh_out_dir(out) == out + "2"  # a default folder in use gives way to the next
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale and taken over
    lock = RunLock(out).acquire()
    assert lock.held and lock_owner(out)["pid"] == os.getpid()
    assert RunLock(out).acquire().held is False  # re-entrant in the owning process, without a second owner
    lock.release()
    assert not os.path.exists(os.path.join(out, ".lock")) and lock_owner(out) is None


def test_fresh_out_dir_skips_folders_holding_a_run(tmp_path):
    run = tmp_path / "train"
    assert fresh_out_dir(str(run)) == str(run) and not holds_run(str(run))
    run.mkdir()
    (run / "config.yaml").write_text("")
    assert fresh_out_dir(str(run)) == str(run)  # no checkpoint yet: still free
    (run / "last.pt").write_bytes(b"x")
    (tmp_path / "train2").mkdir()
    (tmp_path / "train2" / "last.pt").write_bytes(b"x")
    assert holds_run(str(run)) and fresh_out_dir(str(run)) == str(tmp_path / "train3")
