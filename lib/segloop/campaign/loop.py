"""The live loop for one served model: registry + retrain trigger + edit effort, wired to the app.

``MONAILabelApp/main.py`` calls ``on_label_saved`` from MONAI Label's ``on_save_label`` hook,
``on_inferred`` after each ``/infer``, and ``summary`` for ``/info``; training runs are started
through MONAI Label's own background-task runner (one training at a time, subprocess, status in
``GET /train/``).
"""

import json
import logging
import os
from typing import Any, Dict, Optional

from monailabel.utils.async_tasks.utils import processes, run_background_task

from segloop.campaign.effort import EffortTracker
from segloop.campaign.registry import ModelRegistry
from segloop.campaign.trigger import RetrainTrigger

logger = logging.getLogger(__name__)


class CampaignLoop:
    """``options``: the app's parsed ``--conf`` options (``labels``, ``retrain_every``, ``auto_train``,
    ``retrain_debounce_s``, ``retrain_max_seconds``, ``first_run_max_seconds`` and their ``*_max_iterations`` are read)."""

    def __init__(self, name: str, registry: ModelRegistry, options, datastore_fn, train_config_fn):
        self.name = name
        self.registry = registry
        self.options = options
        self.datastore_fn = datastore_fn  # () -> datastore (the app's, created after the configs)
        self.train_config_fn = train_config_fn  # () -> dict of the trainer's defaults
        self.effort = EffortTracker(registry.folder, options.labels)
        self.trigger = RetrainTrigger(
            name,
            count_unseen=self.count_unseen,
            start_run=self.start_incremental_run,
            other_run_active=lambda: bool(processes("train")),
            retrain_every=options.retrain_every,
            enabled=options.auto_train,
            debounce_s=options.retrain_debounce_s,
        )

    def final_labels(self) -> Dict[str, Any]:
        """{image id: label timestamp} of every final label in the datastore."""
        datastore = self.datastore_fn()
        return {i: datastore.get_label_info(i, "final").get("ts") for i in datastore.get_labeled_images()}

    def count_unseen(self) -> int:
        latest = self.registry.latest_completed()  # a failed or interrupted run saw no labels
        seen = latest.get("labels_seen", {}) if latest else {}
        # A quarantined case (its file does not decode) counts again once its label is saved again.
        held = {image: entry.get("label_ts") for image, entry in self.quarantined().items()}
        return sum(
            1 for image, ts in self.final_labels().items() if seen.get(image) != ts and (image not in held or held[image] != ts)
        )

    def start_incremental_run(self, on_finished) -> Dict:
        request = dict(self.train_config_fn())
        request.update({"model": self.name, "incremental": True, "max_epochs": 100000})  # bounded by the budget
        request.update(self.run_budget())
        return run_background_task(request, "train", callback=on_finished)

    def run_budget(self) -> Dict[str, float]:
        """An automatic run's budget, ``{"max_seconds", "max_iterations"}`` (whichever ends first;
        0 iterations: time only): the ``first_run_*`` options while no version serves (the first
        proposal a user sees should show something), the ``retrain_*`` options after."""
        options = self.options
        if self.registry.serving() is None:
            seconds, iterations = options.first_run_max_seconds, options.first_run_max_iterations
        else:
            seconds, iterations = options.retrain_max_seconds, options.retrain_max_iterations
        return {"max_seconds": float(seconds), "max_iterations": int(iterations.get(self.name, 0))}

    def on_server_start(self) -> None:
        interrupted = self.registry.discard_interrupted_run()
        if interrupted:
            logger.warning(f"{self.name}: discarded training run {interrupted['run_id']} interrupted by a restart")
        self.trigger.check_now()

    def on_label_saved(self, image_id: str) -> Optional[Dict]:
        datastore = self.datastore_fn()
        record = None
        if "final" in datastore.get_labels_by_image_id(image_id):
            info = datastore.get_label_info(image_id, "final")
            record = self.effort.record_final(
                image_id, datastore.get_label_uri(image_id, "final"), info.get("ts"), info.get("user") or info.get("annotator")
            )
            if record:
                datastore.update_label_info(image_id, "final", {"edit_effort": record})
        self.trigger.on_label_saved()
        return record

    def on_inferred(self, image_id: str, result_file: str, version: Optional[int]) -> None:
        self.effort.save_proposal(image_id, result_file, version)

    def quarantined(self) -> Dict[str, Any]:
        """{image id: {"error", "file", "label_ts", "time"}} of the cases the last training run could not decode."""
        try:
            with open(self.registry.quarantine_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning(f"{self.name}: cannot read {os.path.basename(self.registry.quarantine_path)}: {e}")
            return {}

    def summary(self) -> Dict[str, Any]:
        state = self.registry.state()
        mismatches = [e for e in state["events"] if e.get("event") == "checkpoint_mismatch"]
        return {
            "serving_version": state["serving"],
            "training_run": state.get("running"),
            "versions": self.registry.history(),
            "events": state["events"][-20:],
            "trigger": self.trigger.state(),
            "edit_effort_by_version": self.effort.summary(),
            "checkpoint_warning": mismatches[-1] if mismatches else None,
            "quarantined": self.quarantined(),
        }
