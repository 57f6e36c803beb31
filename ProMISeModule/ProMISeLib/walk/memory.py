"""The lesions a segmenter found on its current volume, kept so that a refinement click is cheap.

A state is the list of lesions after a run of clicks, keyed by those clicks in the order they were
applied. A call finds the longest remembered run made only of its own clicks and applies just the
clicks left; a call with the same clicks finds its whole result. The states are dropped when the
volume, its spacing, the settings or the prompter change.
"""

from __future__ import annotations

import weakref
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from ProMISeLib.walk.masks import SliceMasks

#: One click in a key: ("+" | "-", k, j, i); the first positive click of a call may be "+n" (its n-th hypothesis).
Click = tuple[str, int, int, int]


class LesionMemory:
    """Least-recently-used store of the lesions after each run of clicks, for one volume and configuration."""

    def __init__(self, max_states: int = 32) -> None:
        self.max_states = max_states
        self._volume: weakref.ref | None = None
        self._context: Hashable = None
        self._states: OrderedDict[tuple[Click, ...], list[SliceMasks]] = OrderedDict()

    def bind(self, volume: np.ndarray, context: Hashable) -> None:
        """Use the states of ``volume`` (the very array object) with ``context``; forget all others."""
        if self._volume is not None and self._volume() is volume and self._context == context:
            return
        self.clear()
        try:
            self._volume = weakref.ref(volume)
        except TypeError:  # an array type without weak references: never reuse
            self._volume = None
            return
        self._context = context

    def get(self, key: tuple[Click, ...]) -> list[SliceMasks] | None:
        if self._volume is None:
            return None
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def state(self, volume: np.ndarray, context: Hashable, key: tuple[Click, ...]) -> list[SliceMasks] | None:
        """The lesions after ``key``'s clicks on ``volume`` (the very array) with ``context``, if remembered."""
        if self._volume is None or self._volume() is not volume or self._context != context:
            return None
        return self.get(key)

    def longest(self, clicks: Sequence[Click]) -> tuple[tuple[Click, ...], list[SliceMasks]]:
        """The longest remembered run made only of ``clicks`` (each used at most as often as given),
        and its lesions; ``((), [])`` when there is none."""
        have = Counter(clicks)
        best: tuple[Click, ...] = ()
        if self._volume is not None:
            for key in self._states:
                if len(key) > len(best) and not Counter(key) - have:
                    best = key
        return (best, list(self.get(best))) if best else ((), [])

    def put(self, key: tuple[Click, ...], state: list[SliceMasks]) -> None:
        if self._volume is None:
            return
        self._states[key] = list(state)
        self._states.move_to_end(key)
        while len(self._states) > self.max_states:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()
        self._volume, self._context = None, None

    def __len__(self) -> int:
        return len(self._states)
