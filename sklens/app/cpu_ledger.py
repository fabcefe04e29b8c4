"""CPU seconds per phase over every attempt of one run.

A study killed and resumed (``--resume``) is several processes, and each one's CPU clock starts
at 0, so a finished run's ``cpu_s`` counts only its last attempt: a causal check killed twice
and finished the third time would show a third of its cost. The ledger (``attempts.json`` in
the staging directory) records each attempt's phases as they end and, every ``TICK_S`` seconds
from a background thread, the CPU seconds of the phase in progress, so a kill loses at most that
much. The seconds an attempt spent in a phase it did not finish are put on the phase that ran
next in the finishing attempt (the phases run in a fixed order). Attempts count together only
when every stage had the same settings (``key``): after a change they describe another run.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from sklens.atomic import write_text

LEDGER = "attempts.json"
TICK_S = 30.0


class CpuLedger:
    """This attempt's CPU seconds per phase, beside those of the earlier attempts of the run."""

    def __init__(self, staging: Path, key: str, phases: dict[str, float]):
        """Start this attempt's record with the ``phases`` it has already lapped."""
        self.path = staging / LEDGER
        self.attempts = [a for a in _read(self.path) if a.get("key") == key]
        after = list(phases)[-1] if phases else None
        self.current: dict[str, Any] = {
            "key": key, "phases": dict(phases), "open": {"after": after, "cpu_s": 0.0}
        }  # fmt: skip
        self.attempts.append(self.current)
        self._since = time.process_time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._tick, name="sklens-cpu-ledger", daemon=True)
        self._thread.start()

    def lap(self, name: str, cpu_s: float) -> None:
        """Phase ``name`` ended after ``cpu_s`` CPU seconds (``StudyRun.lap``)."""
        with self._lock:
            phases = self.current["phases"]
            phases[name] = round(phases.get(name, 0.0) + cpu_s, 2)
            self.current["open"] = {"after": name, "cpu_s": 0.0}
            self._since = time.process_time()
            self._write()

    def stop(self) -> None:
        """Stop the background thread (a failed attempt's ledger stays for the next one)."""
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        """Stop, and remove the file: the run is finished and its summary holds the totals."""
        self.stop()
        self.path.unlink(missing_ok=True)

    def summary(self) -> dict[str, Any]:
        """``cpu_s_all_attempts`` (per phase, with what interrupted attempts spent in the phase
        they did not finish), ``attempts`` and ``interrupted_cpu_s``."""
        order = list(self.current["phases"])
        totals = {name: 0.0 for name in order}
        interrupted = 0.0
        for attempt in self.attempts:
            for name, seconds in attempt["phases"].items():
                totals[name] = totals.get(name, 0.0) + seconds
            if attempt is not self.current and attempt["open"]["cpu_s"] > 0:
                seconds = attempt["open"]["cpu_s"]
                unfinished = _following(order, attempt["open"]["after"])
                totals[unfinished] = totals.get(unfinished, 0.0) + seconds
                interrupted += seconds
        return {
            "cpu_s_all_attempts": {name: round(s, 2) for name, s in totals.items()},
            "attempts": len(self.attempts),
            "interrupted_cpu_s": round(interrupted, 2),
        }

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                self.current["open"]["cpu_s"] = round(time.process_time() - self._since, 2)
                self._write()

    def _write(self) -> None:
        write_text(self.path, json.dumps(self.attempts, indent=1))


def _following(order: list[str], after: str | None) -> str:
    """The phase that runs after ``after`` (the first, before any; ``after`` itself, when the
    kill came after the last phase or the phase is not in the finishing attempt's order)."""
    if after is None:
        return order[0]
    if after in order[:-1]:
        return order[order.index(after) + 1]
    return after


def _read(path: Path) -> list[dict[str, Any]]:
    """The earlier attempts; none where the file is missing or unreadable (a ledger is
    bookkeeping: a damaged one must not stop a run)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []
