"""MONAI Label's radiology sample app, as shipped in the monailabel wheel, for side-by-side benchmarks.

``python -m segloop_bench.upstream train --studies DIR --seconds S --labels a,b`` trains its
``segmentation`` model (SegResNet at 1.5 mm, 96^3 patches, the app's own trainer and transforms)
on the datastore's final labels for a wall-clock budget, in its own process: the app's ``lib``
package would clash with another app's in one interpreter. The budget is checked at the end of
each epoch, as SegLoop's trainer checks ``max_seconds``; MONAI Label then publishes the run's best
checkpoint (by training Dice, as the app does without validation cases) to
``<model dir>/segmentation.pt``.
"""

import argparse
import json
import os
import sys
import time


def radiology_app() -> str:
    app = os.path.join(sys.prefix, "monailabel", "sample-apps", "radiology")
    if not os.path.isfile(os.path.join(app, "main.py")):
        raise FileNotFoundError(f"MONAI Label's radiology sample app not found at {app}")
    return app


class TimeBudget:
    """Ignite handler: end the run at the first epoch end after ``seconds`` since it was attached."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.time()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self.start = time.time()
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        if time.time() - self.start >= self.seconds:
            engine.terminate()


def train(studies: str, seconds: float, labels: str, model_dir: str, seed: int = 0) -> dict:
    sys.path.insert(0, radiology_app())
    from lib.configs.segmentation import Segmentation  # noqa: E402  (the radiology app's own package)
    from monai.utils import set_determinism
    from monailabel.datastore.local import LocalDatastore

    config = Segmentation()
    config.init("segmentation", model_dir, {"labels": labels, "use_pretrained_model": "false"}, None)
    base = type(config.trainer())

    class BudgetedTrainer(base):
        def train_handlers(self, context):
            return super().train_handlers(context) + [TimeBudget(seconds)]

    task = config.trainer()
    task.__class__ = BudgetedTrainer
    datastore = LocalDatastore(studies, extensions=("*.nii.gz",))
    set_determinism(seed=seed)
    start = time.time()
    stats = task({"max_epochs": 100000, "val_split": 0.0, "device": "cpu", "multi_gpu": False, "dataset": "CacheDataset",
                  "train_batch_size": 1, "tracking": "None"}, datastore)
    # MONAI Label's stats: current_iteration counts every step; total_iterations is one epoch's length.
    return {"wall_s": round(time.time() - start, 1), "iterations": stats.get("current_iteration"),
            "epochs": stats.get("current_epoch"), "model": config.path[1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segloop_bench.upstream")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train")
    p.add_argument("--studies", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--labels", required=True, help="comma-separated label names in storage-index order")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.studies, args.seconds, args.labels, args.model_dir, args.seed)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
