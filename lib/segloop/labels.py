"""Label vocabulary: a name -> index map.

Conventions: 0 is background and never appears in the map; names are the API,
indices are what label files store. The map need not be contiguous (``{"liver": 1, "tumor": 4}``
is valid); networks use one output channel per entry plus background, in ascending index order.
"""

import json
from typing import Dict, Mapping, Union

DEFAULT_LABELS: Dict[str, int] = {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}


def parse_labels(value: Union[None, str, Mapping[str, int]]) -> Dict[str, int]:
    """Parse ``--conf labels`` (JSON text or a mapping) into a validated, index-sorted map.

    Raises ``ValueError`` with a readable message for anything a user could get wrong.
    """
    if value is None or value == "":
        return dict(DEFAULT_LABELS)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"labels must be a JSON object of name -> index, got {value!r}: {e}") from None
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"labels must be a non-empty JSON object of name -> index, got {value!r}")
    labels: Dict[str, int] = {}
    for name, index in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"label names must be non-empty strings, got {name!r}")
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 255:
            raise ValueError(f"label {name!r}: index must be an integer in 1..255 (0 is background), got {index!r}")
        labels[name.strip()] = index
    if len(set(labels.values())) != len(labels):
        raise ValueError(f"label indices must be unique, got {labels}")
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def channel_map(labels: Mapping[str, int]) -> Dict[int, int]:
    """Storage index -> network channel (background 0 -> 0, then labels in ascending index order)."""
    return {0: 0, **{index: channel for channel, index in enumerate(sorted(labels.values()), start=1)}}


def is_contiguous(labels: Mapping[str, int]) -> bool:
    """True when indices are exactly 1..N, so channels equal storage indices."""
    return sorted(labels.values()) == list(range(1, len(labels) + 1))
