"""Which labelled cases a run trains and validates on.

:func:`stable_split`: a train/validation split that does not move when the datastore grows.
:func:`select_incremental`: for an incremental run, the labels no run has seen plus a replay sample.

Upstream MONAI Label re-partitions the datalist on every run (MONAILabel issue 1752), so a case
used for validation in one run is trained on in the next and validation Dice is inflated. Here a
case validates because of its hashed image id or because an earlier run validated on it, and a
case some run trained on never validates: the validation set only grows, across versions.
"""

import hashlib
import math
import os
import random
from typing import AbstractSet, Dict, List, Mapping, Sequence, Tuple


def case_key(item: Dict) -> str:
    """The image id of a datalist item (file name without folder and NIfTI suffix)."""
    name = os.path.basename(str(item["image"]))
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_hash(image_id: str, salt: str = "segloop") -> float:
    """A uniform number in [0, 1) fixed by the image id."""
    digest = hashlib.sha256(f"{salt}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation_case(image_id: str, val_fraction: float) -> bool:
    return case_hash(image_id) < val_fraction


def stable_split(
    datalist: Sequence[Dict],
    val_fraction: float,
    keep_val: AbstractSet[str] = frozenset(),
    ever_trained: AbstractSet[str] = frozenset(),
    min_train: int = 1,
    first_val_at: int = 3,
) -> Tuple[List[Dict], List[Dict]]:
    """Split ``datalist`` into (train, validation) so that the validation set only ever grows and
    never holds a case that an earlier run trained on.

    Validation = cases whose hash is below ``val_fraction`` + ``keep_val`` (the previous run's
    validation cases). Small campaigns would often have none, so from ``first_val_at`` labelled
    cases on, the lowest-hash case not in ``ever_trained`` validates too (and, kept, stays).
    With ``val_fraction`` 0, or if fewer than ``min_train`` cases would train, nothing validates.
    """
    if val_fraction <= 0 or len(datalist) <= min_train:
        return list(datalist), []
    ids = [case_key(d) for d in datalist]
    val_ids = {i for i in ids if is_validation_case(i, val_fraction) or i in keep_val}
    fresh = [i for i in ids if i not in ever_trained]
    if not val_ids and len(ids) >= first_val_at and fresh:
        val_ids = {min(fresh, key=case_hash)}
    train = [d for d in datalist if case_key(d) not in val_ids]
    val = [d for d in datalist if case_key(d) in val_ids]
    if len(train) < min_train:
        return list(datalist), []
    return train, val


def select_incremental(
    train: List[Dict], seen: Mapping[str, object], replay_ratio: float, seed: int
) -> Dict[str, List[Dict]]:
    """Split training cases into labels no run has seen (new or re-edited) and a replay sample of the rest."""
    new = [d for d in train if seen.get(case_key(d)) != d.get("label_ts")]
    old = [d for d in train if seen.get(case_key(d)) == d.get("label_ts")]
    if not new:
        return {"new": [], "replay": old}
    k = min(len(old), max(1, math.ceil(replay_ratio * len(new)))) if replay_ratio > 0 else 0
    return {"new": new, "replay": random.Random(seed).sample(old, k)}
