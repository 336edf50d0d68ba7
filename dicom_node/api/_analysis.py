"""The vision side's result per study, kept so that dialog turns do not re-run it.

:meth:`inference.ChestXrayVLM.analyse` preprocesses every image and runs the vision tower;
a dialog turn needs only its result (finding probabilities and image tokens). The cache keeps
the results of the most recently used studies (LRU), keyed by the model and the exact set of
image files, so a study that received another image is analysed again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inference import StudyAnalysis


class AnalysisCache:
    """A thread-safe LRU of :class:`inference.StudyAnalysis` objects.

    Parameters
    ----------
    size
        Studies kept.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._size = size
        self._items: OrderedDict[Hashable, StudyAnalysis] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], StudyAnalysis]) -> StudyAnalysis:
        """The cached analysis for `key`, or `compute()`'s result, then cached.

        `compute` runs outside the cache's lock, so two first requests for one study may
        both compute it (the second result is kept); other studies are not held up.
        """
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        analysis = compute()
        with self._lock:
            self._items[key] = analysis
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return analysis

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


__all__ = ["AnalysisCache"]
