"""The app's ``--conf`` options: one table with defaults and help, parsed in one place.

``segloop conf`` prints this table; the README documents the same names.
"""

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from segloop.labels import parse_labels
from segloop.prompts.text import parse_vocabulary
from segloop.networks import DEFAULT_NETWORK, check_roi_size, get_preset
from segloop.networks.precision import AMP_MODES
from segloop.networks.prompt import DEFAULT_PROMPT_NETWORK, get_prompt_preset
from segloop.transforms import DEFAULT_HU_WINDOW
from segloop.validation import DEFAULT_MAX_VOXELS


OPTIONS: Dict[str, Tuple[str, str]] = {
    "models": ("segmentation,prompt", "comma-separated task names to serve: segmentation, prompt"),
    "prompt_proposal": ("false", "true: also serve the prompt model's label-only answers (one per label, merged into one label map) as the automatic model <prompt>_seg, beside the segmentation model's proposal"),
    "labels": ("", 'JSON name->index map, e.g. {"liver":1,"spleen":2}; default: the sample labels'),
    "network": (DEFAULT_NETWORK, "unetr_cpu (CPU-sized UNETR), unetr (full size, GPU), dynunet_cpu / dynunet (nnU-Net topology, deep supervision), swinunetr_cpu or segresnet"),
    "prompt_network": (DEFAULT_PROMPT_NETWORK, "prompt model size: prompt_cpu (CPU default) or prompt (GPU)"),
    "label_vocabulary": ("", 'JSON (or a JSON file) {label: {"description": text or [texts], "synonyms": [...]}} for text prompts'),
    "plan": ("off", "auto: plan the automatic model's spacing, window and HU range from the labelled cases' fingerprint before its first training (frozen in plan.json); off: the network preset's"),
    "target_spacing": ("", "JSON [x,y,z] mm the model works at; default: the network preset's"),
    "roi_size": ("", "JSON [x,y,z] voxels of the network input; default: the network preset's"),
    "hu_window": (json.dumps(list(DEFAULT_HU_WINDOW)), "JSON [low,high] HU mapped to [0,1]"),
    "device": ("auto", "auto (cuda if available), cpu or cuda[:N]"),
    "amp": ("auto", "precision: auto (GPU training in bfloat16 where the GPU has it, else float16; the prompt model's inference, and its training on a CPU, in bfloat16 where the hardware computes it natively), float16 or off"),
    "checkpoint": ("", "local path of a starting checkpoint (.pt); never downloaded"),
    "max_epochs": ("50", "default epochs per manual training run"),
    "auto_train": ("true", "retrain automatically when final labels are submitted"),
    "retrain_every": ("1", "new final labels that start an automatic run"),
    "retrain_max_seconds": ("60", "time budget of an automatic (incremental) run"),
    "first_run_max_seconds": ("300", "time budget of a model's first automatic run (no version serving yet)"),
    "retrain_max_iterations": ("0", 'iteration budget of an automatic run besides its time budget, whichever ends first (0: time only; one number, or per model: {"segmentation":100,"prompt":20}): the same run on a fast or a slow machine'),
    "first_run_max_iterations": ("0", "iteration budget of a model's first automatic run besides first_run_max_seconds (0: time only; one number or per model)"),
    "train_procs_per_node": ("1", "training processes per node; more than 1 (or train_nodes > 1) runs each training under torchrun with DistributedDataParallel (gloo on CPUs, NCCL on GPUs)"),
    "train_nodes": ("1", "nodes a training run spans; the other nodes join with the command in the README (Scaling out)"),
    "train_rdzv": ("", "host:port where the nodes of a multi-node training run meet (node 0, reachable from every node)"),
    "retrain_debounce_s": ("2", "wait this long after a label so a burst lands in one run"),
    "replay_ratio": ("1.0", "earlier labels replayed per new label in incremental runs"),
    "promotion_tolerance": ("0.02", "a new version serves unless its validation mean Dice is lower by more"),
    "dropout": ("0.1", "dropout rate of the automatic model (trained with it; sampled for MC-dropout scores)"),
    "mc_samples": ("4", "MC-dropout passes per unlabelled image in the active-learning scoring job"),
    "tta_samples": ("4", "test-time-augmentation passes per unlabelled image in the scoring job"),
    "scoring_workers": ("0", "0: the scoring job scores its images itself; N: as Ray tasks, N at a time, on a local Ray runtime the job starts and stops (or on ray_address)"),
    "batch_infer_workers": ("0", "0: /batch/infer runs MONAI Label's thread pool; N: the automatic model's batch inference as Ray tasks, N at a time, on a local Ray runtime it starts and stops (or on ray_address)"),
    "ray_address": ("", "an existing Ray cluster for the scoring job and batch inference (auto, host:port of its head, or ray://host:port); empty: a local runtime"),
    "reads_per_case": ("1", "independent reads (annotators) a case needs before it trains; with 2 or more their STAPLE consensus trains"),
    "review": ("false", "true: a label trains only once a reviewer approved it"),
    "agreement_threshold": ("0.7", "a case whose reads agree less (lowest per-label mean pairwise Dice) waits for adjudication"),
    "assignment_lock_s": ("1800", "seconds a case handed to one annotator is not offered to another"),
    "max_upload_mb": ("1024", "largest request body accepted (MiB): image, label and session uploads"),
    "max_voxels": (str(DEFAULT_MAX_VOXELS), "largest volume accepted (voxels, from the header, before decoding)"),
    "dicomweb_cache_series": ("64", "DICOMweb studies: series kept in the local cache (least recently used removed first)"),
}


@dataclass
class SegLoopOptions:
    models: List[str]
    prompt_proposal: bool
    labels: Dict[str, int]
    network: str
    plan: str
    prompt_network: str
    target_spacing: Tuple[float, float, float]
    roi_size: Tuple[int, int, int]
    hu_window: Tuple[float, float]
    device: str
    amp: str
    checkpoint: Optional[str]
    max_epochs: int
    auto_train: bool
    retrain_every: int
    retrain_max_seconds: float
    first_run_max_seconds: float
    retrain_max_iterations: Dict[str, int]  # per served model; 0: time only
    first_run_max_iterations: Dict[str, int]
    train_procs_per_node: int
    train_nodes: int
    train_rdzv: str
    retrain_debounce_s: float
    replay_ratio: float
    promotion_tolerance: float
    dropout: float
    mc_samples: int
    tta_samples: int
    scoring_workers: int
    batch_infer_workers: int
    ray_address: str
    reads_per_case: int
    review: bool
    agreement_threshold: float
    assignment_lock_s: float
    max_upload_mb: float
    max_voxels: int
    dicomweb_cache_series: int


def _json_list(conf: Mapping[str, str], key: str, length: int, cast) -> Optional[tuple]:
    raw = conf.get(key) or OPTIONS[key][0]
    if not raw:
        return None
    try:
        value = json.loads(raw)
        if not isinstance(value, list) or len(value) != length:
            raise ValueError
        return tuple(cast(v) for v in value)
    except (ValueError, TypeError):
        raise ValueError(f"--conf {key} must be a JSON list of {length} numbers, got {raw!r}") from None


def _number(conf: Mapping[str, str], key: str, cast, minimum: float):
    raw = conf.get(key) or OPTIONS[key][0]
    try:
        value = cast(raw)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise ValueError(f"--conf {key} must be {kind}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"--conf {key} must be >= {minimum}, got {value}")
    return value


def _flag(conf: Mapping[str, str], key: str) -> bool:
    raw = (conf.get(key) or OPTIONS[key][0]).lower()
    if raw not in ("true", "false"):
        raise ValueError(f"--conf {key} must be true or false, got {raw!r}")
    return raw == "true"


def _endpoint(conf: Mapping[str, str], key: str, expected: str, schemes=(), words=()) -> str:
    """``key`` as ``host:port`` (optionally after one of ``schemes``, or one of ``words``); empty if unset."""
    raw = (conf.get(key) or "").strip()
    address = next((raw[len(s):] for s in schemes if raw.startswith(s)), raw)
    if raw and raw not in words and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", address):
        raise ValueError(f"--conf {key} must be {expected}, got {raw!r}")
    return raw


def _per_model_iterations(conf: Mapping[str, str], key: str, models: List[str]) -> Dict[str, int]:
    """``key`` as {model: iterations}: one integer for every model, or a JSON object per model."""
    raw = (conf.get(key) or OPTIONS[key][0]).strip()
    if not raw.startswith("{"):
        value = _number(conf, key, int, minimum=0)
        return {model: value for model in models}
    try:
        given = json.loads(raw)
    except ValueError:
        raise ValueError(f"--conf {key} must be an integer or a JSON object {{model: integer}}, got {raw!r}") from None
    unknown = sorted(set(given) - set(models))
    if unknown:
        raise ValueError(f"--conf {key}: {unknown} are not served models ({models})")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in given.values()):
        raise ValueError(f"--conf {key}: every value must be an integer >= 0, got {raw!r}")
    return {model: int(given.get(model, 0)) for model in models}


def parse_options(conf: Mapping[str, str]) -> SegLoopOptions:
    """Validate every option up front so a typo stops the server with a clear message."""
    network = conf.get("network") or OPTIONS["network"][0]
    plan = (conf.get("plan") or OPTIONS["plan"][0]).lower()
    if plan not in ("auto", "off"):
        raise ValueError(f"--conf plan must be auto or off, got {plan!r}")
    prompt_network = conf.get("prompt_network") or OPTIONS["prompt_network"][0]
    get_prompt_preset(prompt_network)
    preset = get_preset(network)
    spacing = _json_list(conf, "target_spacing", 3, float) or preset.target_spacing
    if min(spacing) <= 0:
        raise ValueError(f"--conf target_spacing must be positive mm, got {spacing}")
    roi = check_roi_size(network, _json_list(conf, "roi_size", 3, int) or preset.roi_size)
    window = _json_list(conf, "hu_window", 2, float)
    if window[0] >= window[1]:
        raise ValueError(f"--conf hu_window must be [low, high] with low < high, got {window}")
    checkpoint = conf.get("checkpoint") or None
    if checkpoint:
        if "://" in checkpoint:
            raise ValueError("--conf checkpoint must be a local file path; SegLoop never downloads models")
        if not os.path.isfile(checkpoint):
            raise ValueError(f"--conf checkpoint: file not found: {checkpoint}")
    device = conf.get("device") or "auto"
    amp = (conf.get("amp") or OPTIONS["amp"][0]).lower()
    if amp not in AMP_MODES:
        raise ValueError(f"--conf amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    models = [m.strip() for m in (conf.get("models") or OPTIONS["models"][0]).split(",") if m.strip()]
    max_epochs = _number(conf, "max_epochs", int, minimum=1)
    labels = parse_labels(conf.get("labels"))
    dropout = _number(conf, "dropout", float, minimum=0)
    if dropout >= 1:
        raise ValueError(f"--conf dropout must be in [0, 1), got {dropout}")
    parse_vocabulary(conf.get("label_vocabulary"), list(labels))  # a bad vocabulary stops the server
    reads_per_case = _number(conf, "reads_per_case", int, minimum=1)
    if reads_per_case > 10:
        raise ValueError(f"--conf reads_per_case must be 1..10, got {reads_per_case}")
    agreement_threshold = _number(conf, "agreement_threshold", float, minimum=0)
    if agreement_threshold > 1:
        raise ValueError(f"--conf agreement_threshold must be in [0, 1], got {agreement_threshold}")
    train_nodes = _number(conf, "train_nodes", int, minimum=1)
    train_rdzv = _endpoint(conf, "train_rdzv", "host:port")
    if train_nodes > 1 and not train_rdzv:
        raise ValueError("--conf train_nodes > 1 needs --conf train_rdzv host:port (node 0, reachable from every node)")
    scoring_workers, batch_infer_workers = (_number(conf, key, int, minimum=0) for key in ("scoring_workers", "batch_infer_workers"))
    for key, workers in (("scoring_workers", scoring_workers), ("batch_infer_workers", batch_infer_workers)):
        if workers > 256:
            raise ValueError(f"--conf {key} must be 0..256, got {workers}")
    ray_address = _endpoint(conf, "ray_address", "auto, host:port or ray://host:port", schemes=("ray://",), words=("auto",))
    return SegLoopOptions(
        models=models,
        prompt_proposal=_flag(conf, "prompt_proposal"),
        labels=labels,
        network=network,
        plan=plan,
        prompt_network=prompt_network,
        target_spacing=spacing,  # type: ignore[arg-type]
        roi_size=roi,
        hu_window=window,  # type: ignore[arg-type]
        device=device,
        amp=amp,
        checkpoint=os.path.abspath(checkpoint) if checkpoint else None,
        max_epochs=max_epochs,
        auto_train=_flag(conf, "auto_train"),
        retrain_every=_number(conf, "retrain_every", int, minimum=1),
        retrain_max_seconds=_number(conf, "retrain_max_seconds", float, minimum=1),
        first_run_max_seconds=_number(conf, "first_run_max_seconds", float, minimum=1),
        retrain_max_iterations=_per_model_iterations(conf, "retrain_max_iterations", models),
        first_run_max_iterations=_per_model_iterations(conf, "first_run_max_iterations", models),
        train_procs_per_node=_number(conf, "train_procs_per_node", int, minimum=1),
        train_nodes=train_nodes,
        train_rdzv=train_rdzv,
        retrain_debounce_s=_number(conf, "retrain_debounce_s", float, minimum=0),
        replay_ratio=_number(conf, "replay_ratio", float, minimum=0),
        promotion_tolerance=_number(conf, "promotion_tolerance", float, minimum=0),
        dropout=dropout,
        mc_samples=_number(conf, "mc_samples", int, minimum=0),
        tta_samples=_number(conf, "tta_samples", int, minimum=0),
        scoring_workers=scoring_workers,
        batch_infer_workers=batch_infer_workers,
        ray_address=ray_address,
        reads_per_case=reads_per_case,
        review=_flag(conf, "review"),
        agreement_threshold=agreement_threshold,
        assignment_lock_s=_number(conf, "assignment_lock_s", float, minimum=0),
        max_upload_mb=_number(conf, "max_upload_mb", float, minimum=1),
        max_voxels=_number(conf, "max_voxels", int, minimum=8),
        dicomweb_cache_series=_number(conf, "dicomweb_cache_series", int, minimum=1),
    )


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
