"""Polls the worker from the GUI thread with a ``qt.QTimer`` (the Qt side of :mod:`.worker`).

Results are written into the scene by :meth:`BackgroundRunner.poll`, which this timer calls on the main
thread; the timer runs only while the runner is busy.
"""

from __future__ import annotations

import qt

from .worker import BackgroundRunner

INTERVAL_MS = 50
_pollers: dict[int, qt.QTimer] = {}


def ensure_polling(runner: BackgroundRunner) -> None:
    """Start (once) a timer that polls ``runner`` while it is busy; call it after each ``submit``."""
    timer = _pollers.get(id(runner))
    if timer is None:
        timer = qt.QTimer()
        timer.setInterval(INTERVAL_MS)

        def tick() -> None:
            runner.poll()
            if not runner.busy:
                timer.stop()

        timer.connect("timeout()", tick)
        _pollers[id(runner)] = timer
    if runner.busy and not timer.isActive():
        timer.start()
