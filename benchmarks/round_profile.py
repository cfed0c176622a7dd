"""Where a deployment round's time goes, from the SuperNodes' DEBUG logs (FLWR_LOG_LEVEL=DEBUG).

For every message a SuperNode handled it reads, in seconds: `download` (the SuperNode pulling the
message from the SuperLink, Receiving -> Received), `spawn` (message received -> Flower starts the
flwr-clientapp process, its SuperExec polling), `inputs` (ClientApp process start -> our
ClientApp loaded: Python and Flower imports, pulling the message from the SuperNode), `handler`
(our ClientApp: forwarding to the round worker and its handler, the compute), `upload` (the reply
leaving the SuperNode, Sending -> Sent). The gaps before a message arrives (the SuperNode's
fixed 3 s pull loop) are the coordinator's wall minus these. Prints the mean and max per message
type over all sites and rounds, and the objects pulled per message from the SuperLink.

    python benchmarks/round.py --deployment --profile DIR     (runs this at the end)
    python benchmarks/round_profile.py DIR
"""

from __future__ import annotations

import argparse
import re
import statistics
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
EVENTS = {
    "receiving": re.compile(r"Receiving: (\w+) message"),
    "received": re.compile(r"Received successfully"),
    "spawn": re.compile(r"Start `flwr-clientapp` process"),
    "inputs": re.compile(r"Runtime\.PullTaskInput"),
    "loaded": re.compile(r"Loading ClientApp"),
    "pushed": re.compile(r"Runtime\.PushMessages"),
    "sending": re.compile(r"Sending: (\w+) message"),
    "sent": re.compile(r"Sent successfully"),
}
PHASES = ("download", "spawn", "inputs", "handler", "upload")


def _time(line: str) -> float | None:
    m = STAMP.search(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def messages(log: Path) -> list[dict]:
    """One dict per message the SuperNode of `log` handled: its type and the phases' seconds."""
    out: list[dict] = []
    current: dict | None = None
    for raw in log.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        for event, pattern in EVENTS.items():
            m = pattern.search(line)
            if not m or (t := _time(line)) is None:
                continue
            if event == "receiving":
                current = {"type": m.group(1), "receiving": t}
                out.append(current)
            elif current is not None and event not in current:
                current[event] = t
    rows = []
    for c in out:
        if all(k in c for k in ("receiving", "received", "spawn", "loaded", "pushed", "sending", "sent")):
            rows.append({"type": c["type"], "download": c["received"] - c["receiving"],
                         "spawn": max(0.0, c["spawn"] - c["received"]),
                         "inputs": c["loaded"] - max(c["spawn"], c["received"]),
                         "handler": c["pushed"] - c["loaded"], "upload": c["sent"] - c["sending"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the folder holding supernode*.log (and superlink.log)")
    args = parser.parse_args(argv)
    logs = sorted(args.folder.glob("supernode*.log"))
    if not logs:
        parser.error(f"{args.folder}: no supernode*.log here")
    rows = [r for log in logs for r in messages(log)]
    print(f"{len(rows)} messages from {len(logs)} SuperNodes' logs, seconds (mean / max):")
    print(f"{'message':>9} {'n':>3} " + " ".join(f"{p:>13}" for p in PHASES))
    for kind in ("query", "train", "evaluate"):
        sel = [r for r in rows if r["type"] == kind]
        if sel:
            cells = [f"{statistics.fmean(r[p] for r in sel):6.2f} /{max(r[p] for r in sel):5.1f}" for p in PHASES]
            print(f"{kind:>9} {len(sel):>3} " + " ".join(f"{c:>13}" for c in cells))
    superlink = args.folder / "superlink.log"
    if superlink.is_file():
        text = superlink.read_text(errors="replace")
        pulls, pushes = text.count("[Fleet.PullObject]"), text.count("[Fleet.PushObject]")
        downstream = sum(1 for r in rows if r["type"] in ("query", "train", "evaluate"))
        print(f"SuperLink: {pulls} object pulls and {pushes} object pushes by the SuperNodes "
              f"({pulls / max(1, downstream):.0f} pulls per message sent to a site)")


if __name__ == "__main__":
    main()
