"""Kill a child process with SIGKILL somewhere inside its work, for the durability tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time


def kill_after_acks(command: list[str], kill_after: int, rng: random.Random, max_delay_s: float) -> list[str]:
    """Run `command`, which prints "ready" and then one line per acknowledged piece of work; after
    `kill_after` lines wait a random 0..`max_delay_s` (to land inside the next piece) and SIGKILL
    it. Returns every line it printed after "ready" (lines printed before the kill landed count:
    they were acknowledged). Fails if the child ended on its own."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    try:
        assert child.stdout.readline().strip() == "ready"
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= kill_after:
                time.sleep(rng.random() * max_delay_s)
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        if child.poll() is None:
            child.kill()
        rest = child.stdout.read()
        child.stdout.close()
        child.wait(10)
    assert child.returncode == -signal.SIGKILL, f"child ended on its own ({child.returncode}) after {len(acked)} acks"
    return acked + [line.strip() for line in rest.splitlines() if line.strip()]
