"""The daemons' supervisor with real child processes: a child that exits is restarted, a child
whose output says it cannot run stops the daemon with the reason, SIGTERM stops every child's
whole process tree, and a daemon killed with SIGKILL takes its children with it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from deployment_kit import wait_for
from ugafl.common.processes import alive, descendants
from ugafl.common.supervisor import STOP, Child, Supervisor

PY = sys.executable
DEADLINE_S = 60.0  # generous: the machine may be busy; a pass returns as soon as the condition holds


def _wait(what: str, check) -> None:
    """Poll `check` every 0.1 s; fail naming `what` if it does not hold within DEADLINE_S."""
    wait_for(what, check, DEADLINE_S, every_s=0.1)


def _ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether the process ignores `sig` (its bit in /proc/PID/status SigIgn)."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    raise AssertionError(f"no SigIgn line for process {pid}")


def test_a_child_that_exits_is_restarted_and_its_lines_logged(caplog) -> None:
    caplog.set_level(logging.INFO, "ugafl")
    child = Child("flaky", [PY, "-c", "print('\\x1b[92mhello\\x1b[0m'); raise SystemExit(3)"])
    sup = Supervisor(logging.getLogger("ugafl.test"), [child], poll_s=0.05)
    sup.max_backoff_s = 0.2
    thread = threading.Thread(target=sup.run)
    thread.start()
    try:
        _wait("the flaky child to be restarted twice", lambda: child.restarts >= 2)
    finally:
        sup.stop()
        thread.join(30)
    assert child.last_exit == 3
    assert "flaky | hello" in caplog.text  # colour codes stripped
    assert "flaky exited with code 3; restarting" in caplog.text


def test_a_child_that_cannot_run_stops_the_daemon() -> None:
    child = Child("node", [PY, "-c", "print('CERTIFICATE_VERIFY_FAILED'); raise SystemExit(1)"],
                  on_line=lambda line: STOP if "CERTIFICATE" in line else None)
    sup = Supervisor(logging.getLogger("ugafl.test"), [child], poll_s=0.05)
    assert sup.run() == 2
    assert child.restarts == 0 and "node cannot run" in sup.fatal


def test_sigterm_stops_the_whole_tree(tmp_path: Path) -> None:
    """A daemon process whose child starts a grandchild in a new session (as Flower's are)."""
    script = tmp_path / "daemon.py"
    script.write_text(
        "import logging, subprocess, sys\n"
        "from ugafl.common.supervisor import Child, Supervisor\n"
        "inner = \"import subprocess, time; subprocess.Popen(['sleep', '300'], start_new_session=True); time.sleep(300)\"\n"
        "sup = Supervisor(logging.getLogger('ugafl.t'), [Child('c', [sys.executable, '-c', inner])], poll_s=0.05)\n"
        "sup.install_signal_handlers()\n"
        "raise SystemExit(sup.run())\n")
    daemon = subprocess.Popen([PY, str(script)])
    _wait("daemon, child and its detached grandchild to run", lambda: len(descendants([daemon.pid])) >= 3)
    tree = descendants([daemon.pid])
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    _wait(f"every process of the tree {sorted(tree)} to end", lambda: not any(alive(p) for p in tree))


def test_a_killed_daemon_takes_its_children_with_it(tmp_path: Path) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(
        "import logging, sys\n"
        "from ugafl.common.supervisor import Child, Supervisor\n"
        "sup = Supervisor(logging.getLogger('ugafl.t'), [Child('c', ['sleep', '300'])], poll_s=0.05)\n"
        "sup.run()\n")
    daemon = subprocess.Popen([PY, str(script)])
    _wait("the daemon's child to run", lambda: len(descendants([daemon.pid])) >= 2)
    children = descendants([daemon.pid]) - {daemon.pid}
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=30)
    _wait(f"the killed daemon's children {sorted(children)} to end", lambda: not any(alive(p) for p in children))


def test_a_new_daemon_stops_what_a_killed_one_left(tmp_path: Path) -> None:
    """A child that ignores the SIGTERM it gets when its daemon dies is stopped by the next daemon,
    which finds it in the pid file (and only if it still runs the same command)."""
    pid_file, ready = tmp_path / "processes.json", tmp_path / "child-ignores-sigterm"
    script = tmp_path / "daemon.py"
    script.write_text(
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from ugafl.common.supervisor import Child, Supervisor\n"
        f"ignore = 'import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({json.dumps(str(ready))}).touch(); time.sleep(300)'\n"
        "child = Child('c', [sys.executable, '-c', ignore])\n"
        f"Supervisor(logging.getLogger('ugafl.t'), [child], poll_s=0.05, pid_file=Path({str(pid_file)!r})).run()\n")
    daemon = subprocess.Popen([PY, str(script)])
    # the child ignores SIGTERM, and the pid file holds it as it runs (after exec), before the kill
    _wait("the SIGTERM-ignoring child to be ready and in the pid file",
          lambda: ready.exists() and pid_file.is_file() and "SIG_IGN" in pid_file.read_text())
    left = [int(p) for p in json.loads(pid_file.read_text())]
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(timeout=30)
    # The daemon's exit (seen by wait) already sent its child the parent-death SIGTERM; the child
    # ignores SIGTERM, so it survives its daemon: no waiting needed to know it stays.
    assert all(alive(p) and _ignores(p, signal.SIGTERM) for p in left)
    successor = Supervisor(logging.getLogger("ugafl.test"), [], pid_file=pid_file)
    successor.stop_leftovers()
    assert not any(alive(p) for p in left) and not pid_file.exists()


def test_a_clientapp_ends_when_the_superexec_that_started_it_is_killed(tmp_path: Path) -> None:
    """The site's flwr-clientapp (ugafl-clientapp, the app gate) started by a process that is then
    SIGKILLed: it was left retrying a SuperNode that was gone, re-parented to init (seen after the
    kit test killed a hospital); now it ends with its parent."""
    clientapp = str(Path(PY).with_name("ugafl-clientapp"))
    superexec = subprocess.Popen(
        [PY, "-c", "import subprocess, sys, time\n"
                   f"p = subprocess.Popen([{clientapp!r}, '--runtime-api-address', '127.0.0.1:9', '--token', 'x', "
                   "'--insecure'])\nprint(p.pid, flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    pid = int(superexec.stdout.readline())
    try:
        # it runs on its own (Flower retries the unreachable Runtime API), past its start-up
        _wait("the ClientApp to start (its heartbeat thread)", lambda: _threads(pid) > 1)
        assert alive(pid)
        os.kill(superexec.pid, signal.SIGKILL)
        superexec.wait(timeout=30)
        _wait(f"the orphaned ClientApp {pid} to end", lambda: not alive(pid))
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0
