"""One progress line per federated round, read from the coordinator's rounds.csv as it gains rows
(the coordinator writes a round's row when the round is done, whichever engine runs the sites)."""

from __future__ import annotations

import csv
import threading
from pathlib import Path

from ugafl.common.log import get_logger

progress = get_logger("progress")


def _number(row: dict[str, str], key: str) -> float | None:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return None


def round_line(row: dict[str, str], num_rounds: int) -> str:
    """`round 2/3: 20 patches queued, 5 updates aggregated, 0 refused, gate: kept; Dice on the sites'
    corrections 0.812, RUMC test 0.951; 64 s` from a rounds.csv row."""
    count = lambda key: int(_number(row, key) or 0)  # noqa: E731
    parts = [f"{count('query-queued')} patches queued",
             f"{count('updates-aggregated')} updates aggregated, {count('updates-refused')} refused"]
    if _number(row, "aggregate-refused"):
        parts.append("aggregate refused (model unchanged)")
    elif (kept := _number(row, "gate-kept")) is not None:
        parts.append("gate: kept" if kept else "gate: refused (model unchanged)")
    dice = []
    if (sites := _number(row, "sites-dice")) is not None:
        dice.append(f"Dice on the sites' corrections {sites:.3f}")
    dice += [f"{key.removeprefix('server-dice-')} test {float(value):.3f}"
             for key, value in row.items() if key.startswith("server-dice-") and _number(row, key) is not None]
    line = f"round {row.get('round', '?')}/{num_rounds}: " + ", ".join(parts)
    if dice:
        line += "; " + ", ".join(dice)
    if (seconds := _number(row, "seconds-round")) is not None:
        line += f"; {seconds:.0f} s"
    return line


class RoundProgress:
    """While inside: logs `round_line` for every row rounds.csv gains (polled every `poll_s`, and
    once more on the way out). Rows already there (a resumed run) are not repeated."""

    def __init__(self, path: Path, num_rounds: int, poll_s: float = 1.0):
        self.path = Path(path)
        self.num_rounds = num_rounds
        self.poll_s = poll_s
        self._seen = len(self._rows())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="round-progress", daemon=True)

    def _rows(self) -> list[dict[str, str]]:
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except (FileNotFoundError, csv.Error, UnicodeDecodeError):
            return []

    def _report(self) -> None:
        rows = self._rows()
        if len(rows) < self._seen:  # written afresh (a new run in the same folder)
            self._seen = 0
        for row in rows[self._seen:]:
            progress.info("%s", round_line(row, self.num_rounds))
        self._seen = max(self._seen, len(rows))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._report()

    def __enter__(self) -> RoundProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._report()
