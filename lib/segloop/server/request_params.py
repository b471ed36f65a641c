"""What a client may put in the ``params`` JSON of each endpoint, with types and ranges.

Three kinds of key:

* accepted: checked here (type, range, choice); a bad value is a 400 naming the key;
* server settings the upstream Slicer plugin echoes back from ``/info`` (``device``,
  ``sw_overlap``, ``result_dtype``, ...), the ``client_id`` MONAI Label's client adds to
  every request and the ``restore_label_idx`` its OHIF panel adds: dropped on purpose and never
  applied (the server's settings decide them);
* anything else, and anything that could name a server path (``image``, ``session``,
  ``train_ds``, ``tracking_uri``, a ``label`` that looks like a path): a 400 naming the key.
"""

import json
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from segloop.errors import bad_request

# Keys of a model's or trainer's own config (shown by /info, echoed by the upstream plugin):
# what device, precision and window settings the server uses is its operator's decision.
SERVER_SETTINGS = frozenset(
    {
        "device", "gpus", "multi_gpu", "logging", "result_dtype", "result_compress", "sw_batch_size",
        "sw_overlap", "cache_transforms", "cache_transforms_in_memory", "cache_transforms_ttl",
        "tracking", "tracking_uri", "tracking_experiment_name", "tracking_run_name", "nice", "dataset",
        "dataloader", "pretrained", "distributed_backend", "distributed_url", "name", "train_rdzv",
        # MONAI Label's client adds its own id to every request; the annotator comes from the
        # token (auth on) or the /activelearning client_id, never from here.
        "client_id",
        # MONAI Label's OHIF panel adds it to every /infer; MONAI Label's server ignores it too.
        "restore_label_idx",
    }
)
RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
MAX_TEXT = 200  # characters of a free-text prompt
MAX_INFO_BYTES = 64 * 1024  # of an image's or label's info JSON


def parse_params(raw: Optional[str], what: str = "params") -> Dict[str, Any]:
    """The ``params`` form field: a JSON object (an empty field means ``{}``)."""
    if raw in (None, ""):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise bad_request(f"{what} must be a JSON object: {e}") from None
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


def parse_info(raw: Optional[str]) -> Dict[str, Any]:
    if raw is not None and len(raw.encode()) > MAX_INFO_BYTES:
        raise bad_request(f"info: {len(raw.encode())} bytes, at most {MAX_INFO_BYTES}")
    return parse_params(raw, "info")


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise bad_request(f"{key} must be true or false, got {value!r}")


def _number(key: str, value: Any, minimum: float = 0, maximum: Optional[float] = None, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise bad_request(f"{key} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise bad_request(f"{key} must be a whole number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise bad_request(f"{key} must be {bound}, got {value!r}")
    return int(value) if integer else value


def _text(key: str, value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"{key} must be text of at most {limit} characters, got {str(value)[:40]!r}")
    return value


def _split(params: Mapping[str, Any], checks: Mapping[str, Any], what: str) -> Tuple[Dict, list]:
    accepted, ignored = {}, []
    for key, value in params.items():
        if key in checks:
            accepted[key] = checks[key](key, value)
        elif key in SERVER_SETTINGS:
            ignored.append(key)
        else:
            raise bad_request(f"unknown parameter {key!r} for {what}; accepted: {sorted(checks)}")
    return accepted, sorted(ignored)


def _path_free_label(key: str, value: Any) -> str:
    value = _text(key, value)
    if "/" in value or "\\" in value or value.lower().endswith((".nii", ".gz", ".nrrd")):
        raise bad_request(f"{key} names a segment, not a file: {value!r} (upload a previous mask as the 'label' file)")
    return value


def _points(key: str, value: Any) -> Any:
    if not isinstance(value, list):
        raise bad_request(f"{key} must be a list of [i, j, k] points, got {type(value).__name__}")
    return value  # shapes and ranges against the image: segloop.prompts.request


def _choice(options: Iterable[str]):
    options = tuple(options)

    def check(key: str, value: Any) -> str:
        if value not in options:
            raise bad_request(f"{key} must be one of {list(options)}, got {value!r}")
        return value

    return check


COMMON_INFER = {"result_extension": _choice(RESULT_EXTENSIONS), "label_info": _points}
SEGMENTATION_INFER = {**COMMON_INFER, "uncertainty": _flag}


def prompt_infer_checks(label_names: Iterable[str]) -> Dict[str, Any]:
    checks = {
        **COMMON_INFER,
        "label": _path_free_label,
        "text": _text,
        "foreground": _points,
        "background": _points,
        "box": _points,
        "roi": _points,
        "slice": lambda k, v: _number(k, v, integer=True),
        "reset_state": _flag,
        "foreground_scribbles": _points,
        "background_scribbles": _points,
        "label_map": _flag,
        "lasso": _points,
        "scribbles_mask": _flag,
        "label_from_click": _flag,
        "selected_label_name": _path_free_label,  # the upstream plugin's scribbles panel
    }
    checks.update({name: _points for name in label_names})  # DeepEdit: one point list per label name
    return checks


def check_infer_params(params: Mapping[str, Any], prompt_able: bool, label_names: Iterable[str], model: str) -> Tuple[Dict, list]:
    """(accepted params, ignored server-setting keys) of an ``/infer/{model}`` request."""
    checks = prompt_infer_checks(label_names) if prompt_able else SEGMENTATION_INFER
    return _split(params, checks, f"/infer/{model}")


TRAIN_EXTRAS = {
    "seed": lambda k, v: _number(k, v, integer=True),
    "max_iterations": lambda k, v: _number(k, v, integer=True),
    "train_batch_size": lambda k, v: _number(k, v, minimum=1, maximum=64, integer=True),
    "val_batch_size": lambda k, v: _number(k, v, minimum=1, maximum=64, integer=True),
    "early_stop_patience": lambda k, v: _number(k, v, integer=True),
    "max_interactions": lambda k, v: _number(k, v, integer=True),
}
BOUNDED_TRAIN = {"val_split": 1.0, "replay_ratio": 100.0, "promotion_tolerance": 1.0, "region_share": 1.0,
                 "train_procs": 64, "train_nodes": 1024, "structure_shift_hu": 500.0}
PER_CLASS_TRAIN = ("crop_ratios", "class_weights")  # one number per class, background first


def _per_class(channels: Optional[int]):
    """Check of a per-class list (a JSON list, or its text, or comma-separated numbers): ``channels``
    non-negative numbers, not all 0; passed on as JSON text, the trainer's config type."""

    def check(key: str, value: Any) -> str:
        if isinstance(value, str) and value.strip() == "":
            return ""
        items = value
        if isinstance(value, str):
            try:
                items = json.loads(value) if value.strip().startswith("[") else value.split(",")
            except ValueError:
                items = None
        try:
            numbers = [float(v) for v in items] if isinstance(items, (list, tuple)) and items else None
        except (TypeError, ValueError):
            numbers = None
        if numbers is None or any(isinstance(v, bool) for v in items) or min(numbers) < 0 or sum(numbers) <= 0 \
                or (channels is not None and len(numbers) != channels):
            count = f"{channels} " if channels is not None else ""
            raise bad_request(f"{key} must be a list of {count}non-negative numbers, background first, not all 0; got {value!r}")
        return json.dumps(numbers)

    return check


def train_checks(config: Mapping[str, Any], channels: Optional[int] = None) -> Dict[str, Any]:
    """Checks for a trainer's params, derived from its config's defaults (their types and choices);
    ``channels``: the model's classes with background, the length of a per-class list."""
    checks = dict(TRAIN_EXTRAS)
    for key, default in config.items():
        if key in SERVER_SETTINGS:
            continue
        if isinstance(default, list):
            checks[key] = _choice(default)
        elif isinstance(default, bool):
            checks[key] = _flag
        elif isinstance(default, (int, float)):
            integer = isinstance(default, int) and key != "max_seconds"
            checks[key] = lambda k, v, i=integer: _number(k, v, maximum=BOUNDED_TRAIN.get(k), integer=i)
        elif key in PER_CLASS_TRAIN:
            checks[key] = _per_class(channels)
        elif isinstance(default, str):
            checks[key] = _text
    return checks


def check_train_params(
    params: Mapping[str, Any], config: Mapping[str, Any], model: str, channels: Optional[int] = None
) -> Tuple[Dict, list]:
    """(accepted params, ignored server-setting keys) of a ``/train/{model}`` request."""
    return _split(params, train_checks(config, channels), f"/train/{model}")


def _label_tag(key: str, value: Any) -> str:
    value = _text(key, value, 128)
    if not value.replace("_", "").replace("-", "").isalnum():
        raise bad_request(f"{key} must be a plain name (letters, digits, _ and -), got {value!r}")
    return value


BATCH_INFER = {
    "save_label": _flag,
    "label_tag": _label_tag,
    "max_workers": lambda k, v: _number(k, v, minimum=1, maximum=4, integer=True),
    "max_batch_size": lambda k, v: _number(k, v, integer=True),
}


def check_batch_params(params: Mapping[str, Any], model: str) -> Tuple[Dict, list]:
    """(accepted params, ignored server-setting keys) of a ``/batch/infer/{model}`` request."""
    return _split(params, BATCH_INFER, f"/batch/infer/{model}")
