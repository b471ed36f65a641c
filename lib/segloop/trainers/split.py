"""Train/validation split that does not move when the datastore grows.

Upstream MONAI Label re-partitions the datalist on every run (MONAILabel issue 1752), so a case
used for validation in one run is trained on in the next and validation Dice is inflated. Here a
case's side is a pure function of its image id: adding labels never moves an existing case.
"""

import hashlib
import os
from typing import Dict, List, Sequence, Tuple


def case_key(item: Dict) -> str:
    """The image id of a datalist item (file name without folder and NIfTI suffix)."""
    name = os.path.basename(str(item["image"]))
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_validation_case(image_id: str, val_fraction: float, salt: str = "segloop") -> bool:
    digest = hashlib.sha256(f"{salt}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def stable_split(datalist: Sequence[Dict], val_fraction: float, min_train: int = 1) -> Tuple[List[Dict], List[Dict]]:
    """Split ``datalist`` by hashed image id. With fewer than ``min_train + 1`` cases, or if the
    hash would leave fewer than ``min_train`` training cases, everything trains and nothing validates.
    """
    if val_fraction <= 0 or len(datalist) <= min_train:
        return list(datalist), []
    train = [d for d in datalist if not is_validation_case(case_key(d), val_fraction)]
    val = [d for d in datalist if is_validation_case(case_key(d), val_fraction)]
    if len(train) < min_train:
        return list(datalist), []
    return train, val
