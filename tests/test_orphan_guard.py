"""sweeps.orphan_guard: a trainer started through it dies with the job that started it, even
when the job is killed outright (SIGKILL), and is never started for a job already gone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sweeps import orphan_guard

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for a job: starts a long "trainer" through the guard, prints its pid, then waits.
JOB = textwrap.dedent("""
    import os, subprocess, sys, threading, time
    def start():  # from a thread, as a packed job does
        child = subprocess.Popen([sys.executable, "-m", "sweeps.orphan_guard", str(os.getpid()),
                                  sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        child.wait()
    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
""")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_trainer_dies_when_its_job_is_killed_outright(tmp_path):
    job = subprocess.Popen([sys.executable, "-c", JOB], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    trainer = int(job.stdout.readline())
    time.sleep(0.5)  # past the guard's exec: the "trainer" runs
    assert alive(trainer)
    with open(f"/proc/{trainer}/cmdline", "rb") as cmdline:
        assert b"time.sleep(120)" in cmdline.read()  # the guard became the command, same pid
    job.send_signal(signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + 10
    while alive(trainer) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(trainer), "the trainer outlived its job"


def test_a_guard_whose_parent_is_gone_starts_nothing(tmp_path):
    # The job that asked is not this process's parent any more (it died; the guard was
    # re-parented): the guard must return, not exec (which would replace this test's process).
    marker = tmp_path / "started"
    gone = os.getpid()  # any pid but the parent's
    code = orphan_guard.main([str(gone), sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert code == orphan_guard.ORPHANED_EXIT and not marker.exists()


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required"),
    (["123"], "no COMMAND to run"),
    (["x", "true"], "invalid int value"),
])
def test_a_bad_call_is_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        orphan_guard.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and message in err
