"""Click memory: the last result of each click sequence, for clients that resend every click.

The upstream Slicer plugin's DeepGrow tools send all the clicks of a structure again with every
new click, and no previous mask. To refine those requests locally (:mod:`segloop.prompts.refine`)
like one that uploads its previous mask, the infer task remembers, per image and prompted
structure (label index and box), the clicks it answered and the mask it returned. A request whose
clicks extend a remembered sequence (every remembered click is still there, and there are more)
refines that mask; any other request starts afresh. Clicks count as a multiset: a click on the
voxel of an earlier one (the clinician clicks again where nothing changed) extends the sequence
rather than restarting it and dropping the earlier local corrections. ``reset_state`` (the
plugin's "new segment") forgets an image's sequences.

Masks are kept bit-packed (1/8 of a boolean array), at most ``capacity`` sequences, least recently
used dropped first.
"""

import threading
from collections import Counter, OrderedDict
from typing import Hashable, Optional, Sequence, Tuple

import numpy as np

from segloop.prompts.encoding import Prompt

Voxels = Counter  # voxel (i, j, k) -> how many clicks it holds


def _voxels(points: Sequence[Sequence[float]]) -> Voxels:
    return Counter(tuple(int(round(v)) for v in p) for p in points)


class ClickMemory:
    def __init__(self, capacity: int = 16):
        self.capacity = int(capacity)
        self._entries: "OrderedDict[Hashable, Tuple[Voxels, Voxels, Tuple[int, ...], np.ndarray]]" = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(image: str, prompt: Prompt) -> Hashable:
        box = None if prompt.box is None else tuple(tuple(float(v) for v in corner) for corner in prompt.box)
        return image, int(prompt.label), box

    def previous(self, image: str, prompt: Prompt) -> Optional[np.ndarray]:
        """The remembered mask (boolean [X, Y, Z]) this prompt's clicks extend, else None."""
        positive, negative = _voxels(prompt.positive), _voxels(prompt.negative)
        with self._lock:
            entry = self._entries.get(self._key(image, prompt))
        if entry is None:
            return None
        old_positive, old_negative, shape, bits = entry
        kept = not (old_positive - positive) and not (old_negative - negative)  # no remembered click dropped
        extends = kept and (old_positive, old_negative) != (positive, negative)
        if not extends:
            return None
        return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)

    def remember(self, image: str, prompt: Prompt, mask: np.ndarray) -> None:
        key = self._key(image, prompt)
        entry = (_voxels(prompt.positive), _voxels(prompt.negative), tuple(mask.shape), np.packbits(mask.astype(bool), axis=None))
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def forget(self, image: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == image]:
                del self._entries[key]
