"""Phase timing with progress lines for slow phases.

``with progress.phase("export"):`` times the phase. When a phase is still running after one
second a line such as "[compile] export: running..." goes to stderr, and its end is announced
with the time taken; fast phases print nothing, so short compiles stay quiet.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None, delay: float = 1.0):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.delay = delay
        self.times: dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[compile] {message}", file=self.stream, flush=True)

    @contextmanager
    def phase(self, name: str, what: str = ""):
        announced = threading.Event()

        def announce():
            announced.set()
            self.say(f"{name}: {what or 'running'}...")

        timer = threading.Timer(self.delay, announce)
        timer.daemon = True
        if self.enabled:
            timer.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            timer.cancel()
            seconds = time.perf_counter() - start
            self.times[name] = self.times.get(name, 0.0) + seconds
            if announced.is_set():
                self.say(f"{name}: done in {seconds:.1f} s")
