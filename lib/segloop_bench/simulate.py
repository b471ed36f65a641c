"""``segloop-bench simulate``: annotation campaigns replayed from ground truth, one per strategy and seed.

Every campaign runs the server's own code in-process: the datastore (``SegLoopDatastore``), the
scoring job (``UncertaintyScoring``, asked only for the components the strategy reads), the
strategies (SegLoop's, and MONAI Label's ``Random`` / ``First``), the booking view that keeps a
round's picks distinct, and the incremental trainer with its model registry.

Protocol, per seed:

1. The last ``test_cases`` images (sorted ids) are held out; the rest form the pool.
2. ``initial`` pool cases (seeded random) are labelled from ground truth and a model is trained
   from scratch for ``first_iterations``; every strategy of this seed starts from that model.
3. Each of ``rounds`` rounds: score the pool, let the strategy pick ``per_round`` cases one after
   the other (each pick booked, as for concurrent annotators), save their ground truth as final
   labels, fine-tune incrementally (new labels + replay) for ``round_iterations``, and measure
   held-out Dice at the input geometry.
4. A full-data model (all pool labels, from scratch, ``full_iterations``: by default twice a
   campaign's total, since many labels need more steps to be learnt) gives the target: 95% of its
   mean Dice. It is trained once, with the first seed. *Labels-to-target* of a strategy is the
   first label count at which its seed-mean curve reaches the target.

Budgets are iterations, not seconds, so a busy machine changes the wall time, not the result.
"""

import json
import logging
import os
import random
import shutil
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from segloop.activelearning import STRATEGY_COMPONENTS
from segloop.campaign.assignments import UnassignedView
from segloop.server.datastore import SegLoopDatastore
from segloop_bench.training import build_task_config, evaluate, mean_per_label, train
from segloop.io import atomic_write_json, json_safe
from segloop_bench.provenance import write_result
from segloop.scoring import SCORING_METHOD

logger = logging.getLogger(__name__)

DEFAULT_STRATEGIES = ("random", "entropy", "epistemic", "diversity", "hybrid")
TARGET_FRACTION = 0.95


def mean_dice(per_label: Mapping[str, float]) -> float:
    values = [v for v in per_label.values() if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def case_ids(folder: str) -> List[str]:
    return sorted(f[: -len(".nii.gz")] for f in os.listdir(folder) if f.endswith(".nii.gz"))


def _link_or_copy(src: str, dest: str) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


class Simulation:
    def __init__(
        self,
        studies: str,
        ground_truth: str,
        work: str,
        rounds: int = 4,
        per_round: int = 2,
        initial: int = 2,
        test_cases: int = 4,
        first_iterations: int = 60,
        round_iterations: int = 30,
        full_iterations: int = 0,
        conf: Optional[Mapping[str, str]] = None,
        progress: Callable[[str], None] = print,
    ):
        ids = case_ids(studies)
        if test_cases < 1 or len(ids) - test_cases < initial + rounds * per_round:
            raise ValueError(
                f"{len(ids)} images cannot hold {test_cases} held-out cases and a pool of "
                f"{initial} + {rounds} x {per_round} labels"
            )
        missing = [i for i in ids if not os.path.exists(os.path.join(ground_truth, f"{i}.nii.gz"))]
        if missing:
            raise ValueError(f"no ground truth for {missing[:5]} in {ground_truth}")
        self.studies, self.ground_truth, self.work = studies, ground_truth, work
        self.pool, self.test = ids[:-test_cases], ids[-test_cases:]
        self.rounds, self.per_round, self.initial = rounds, per_round, initial
        self.first_iterations, self.round_iterations = first_iterations, round_iterations
        self.full_iterations = full_iterations or 2 * (first_iterations + rounds * round_iterations)
        self.conf = dict(conf or {})
        self.progress = progress

    # -- pieces ------------------------------------------------------------------------------
    def _truth(self, case: str) -> str:
        return os.path.join(self.ground_truth, f"{case}.nii.gz")

    def _datastore(self, folder: str) -> SegLoopDatastore:
        return SegLoopDatastore(folder, labels=build_task_config(folder, self.conf).labels)

    def _new_datastore_folder(self, folder: str, labelled: Sequence[str]) -> None:
        os.makedirs(folder)
        for case in self.pool:
            _link_or_copy(os.path.join(self.studies, f"{case}.nii.gz"), os.path.join(folder, f"{case}.nii.gz"))
        datastore = self._datastore(folder)
        for case in labelled:
            datastore.save_label(case, self._truth(case), "final", {})

    def _train(self, folder: str, iterations: int, seed: int, incremental: bool) -> Dict:
        request = {
            "max_iterations": iterations,
            "max_epochs": 100000,  # bounded by max_iterations
            "val_split": 0.0,  # every simulated label trains; held-out Dice is measured separately
            "incremental": incremental,
            "from_scratch": not incremental,
            "seed": seed,
            "nice": 0,
        }
        return train(folder, request, self.conf)

    def _evaluate(self, folder: str) -> Dict[str, float]:
        per_label = mean_per_label(evaluate(folder, self.ground_truth, self.test, self.conf, images=self.studies))
        return dict(per_label, mean=mean_dice(per_label))

    def pick(self, folder: str, name: str, seed: int) -> Dict:
        """Score the pool as the strategy needs, then pick ``per_round`` distinct cases."""
        config = build_task_config(folder, self.conf)
        datastore = SegLoopDatastore(folder, labels=config.labels)
        start = time.time()
        components = STRATEGY_COMPONENTS[name]
        if components:
            config.scoring_method()[SCORING_METHOD]({"components": list(components), "nice": 0}, datastore)
        scored = time.time()
        strategy = {"random": Random(), "first": First(), **config.strategy()}[name]
        random.seed(seed)  # MONAI Label's Random draws from the global generator
        chosen: List[str] = []
        for _ in range(self.per_round):
            request = {"strategy": name, "assigned": list(chosen), "seed": seed + len(chosen)}
            result = strategy(request, UnassignedView(datastore, set(chosen)))
            if not result:
                break
            chosen.append(result["id"])
            if result.get("fallback"):
                logger.warning(f"{name}: fell back to {result['fallback']} ({result.get('reason')})")
        for case in chosen:
            datastore.save_label(case, self._truth(case), "final", {})
        return {"chosen": chosen, "scoring_s": round(scored - start, 1), "pick_s": round(time.time() - scored, 2)}

    # -- campaigns ---------------------------------------------------------------------------
    def start(self, seed: int) -> Dict:
        """The seed's initial labels and round-0 model, shared by every strategy."""
        folder = os.path.join(self.work, f"seed{seed}", "start")
        shutil.rmtree(folder, ignore_errors=True)
        initial = sorted(random.Random(seed).sample(self.pool, self.initial))
        self._new_datastore_folder(folder, initial)
        run = self._train(folder, self.first_iterations, seed, incremental=False)
        dice = self._evaluate(folder)
        self.progress(f"seed {seed}: {len(initial)} initial labels {initial}: held-out mean Dice {dice['mean']:.3f}")
        return {"folder": folder, "initial": initial, "point": {"labels": len(initial), "dice": dice, "train_s": run["seconds"]}}

    def campaign(self, name: str, seed: int, start: Dict) -> List[Dict]:
        folder = os.path.join(self.work, f"seed{seed}", name)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(start["folder"], folder)
        points = [dict(start["point"], chosen=start["initial"])]
        for r in range(1, self.rounds + 1):
            picked = self.pick(folder, name, seed * 1000 + r)
            run = self._train(folder, self.round_iterations, seed * 1000 + r, incremental=True)
            dice = self._evaluate(folder)
            labels = points[-1]["labels"] + len(picked["chosen"])
            points.append({"labels": labels, "dice": dice, "train_s": run["seconds"], **picked})
            self.progress(
                f"seed {seed} {name} round {r}/{self.rounds}: +{picked['chosen']} -> {labels} labels, "
                f"held-out mean Dice {dice['mean']:.3f} (scoring {picked['scoring_s']} s, training {run['seconds']} s)"
            )
        return points

    def full_data(self, seed: int) -> Dict:
        folder = os.path.join(self.work, f"seed{seed}", "full")
        shutil.rmtree(folder, ignore_errors=True)
        self._new_datastore_folder(folder, self.pool)
        iterations = self.full_iterations
        run = self._train(folder, iterations, seed, incremental=False)
        dice = self._evaluate(folder)
        self.progress(f"seed {seed}: full data ({len(self.pool)} labels, {iterations} iterations): mean Dice {dice['mean']:.3f}")
        return {"labels": len(self.pool), "iterations": iterations, "dice": dice, "train_s": run["seconds"]}

    def run(self, strategies: Sequence[str], seeds: Sequence[int], checkpoint: Optional[str] = None) -> Dict:
        """All campaigns; with ``checkpoint``, the finished campaigns are saved there as JSON after
        each one, so a long simulation that is stopped keeps what it measured, and a rerun with the
        same checkpoint resumes: campaigns already there are not run again."""
        unknown = [s for s in strategies if s not in STRATEGY_COMPONENTS]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {sorted(STRATEGY_COMPONENTS)}")
        start_time = time.time()
        done: Dict[str, Dict[str, List[Dict]]] = {}
        if checkpoint and os.path.exists(checkpoint):
            with open(checkpoint) as f:
                done = json.load(f)["runs"]
        runs: Dict[str, Dict[str, List[Dict]]] = {s: {} for s in strategies}
        full: Dict[str, Dict] = {}
        for seed in seeds:
            start = None
            for name in strategies:
                if str(seed) in done.get(name, {}):
                    runs[name][str(seed)] = done[name][str(seed)]
                    self.progress(f"seed {seed} {name}: resumed from {checkpoint}")
                    continue
                start = start or self.start(seed)
                runs[name][str(seed)] = self.campaign(name, seed, start)
                if checkpoint:
                    atomic_write_json(checkpoint, json_safe({"runs": runs, "finished": False}))
        full[str(seeds[0])] = self.full_data(seeds[0])
        report = summarize(runs, full)
        report["setup"] = {
            "pool": self.pool, "test": self.test, "rounds": self.rounds, "per_round": self.per_round,
            "initial": self.initial, "first_iterations": self.first_iterations,
            "round_iterations": self.round_iterations, "full_iterations": self.full_iterations, "seeds": list(seeds), "conf": self.conf,
            "wall_s": round(time.time() - start_time, 1),
        }
        return report


def summarize(runs: Dict[str, Dict[str, List[Dict]]], full: Dict[str, Dict]) -> Dict:
    """Seed-mean curves, spread, labels-to-target and the saving against random."""
    full_mean = float(np.mean([f["dice"]["mean"] for f in full.values()]))
    target = TARGET_FRACTION * full_mean
    curves = {}
    for name, by_seed in runs.items():
        labels = [p["labels"] for p in next(iter(by_seed.values()))]
        dice = np.array([[p["dice"]["mean"] for p in points] for points in by_seed.values()])
        mean, std = dice.mean(axis=0), dice.std(axis=0)
        reached = [n for n, d in zip(labels, mean) if d >= target]
        curves[name] = {
            "labels": labels,
            "mean_dice": mean.round(4).tolist(),
            "std_dice": std.round(4).tolist(),
            "labels_to_target": reached[0] if reached else None,
            "final_mean_dice": round(float(mean[-1]), 4),
            "area_under_curve": round(float(np.mean(mean)), 4),
        }
    random_need = curves.get("random", {}).get("labels_to_target")
    for row in curves.values():
        need = row["labels_to_target"]
        row["labels_vs_random"] = round(need / random_need, 3) if need and random_need else None
    return {
        "full_data": {"per_seed": full, "mean_dice": round(full_mean, 4)},
        "target": {"fraction_of_full_data": TARGET_FRACTION, "mean_dice": round(target, 4)},
        "curves": curves,
        "runs": runs,
    }


def plot(report: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in report["curves"].items():
        x, m, s = np.array(row["labels"]), np.array(row["mean_dice"]), np.array(row["std_dice"])
        ax.plot(x, m, marker="o", label=f"{name} (target at {row['labels_to_target'] or '>' + str(x[-1])})")
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.axhline(report["target"]["mean_dice"], color="k", linestyle="--", linewidth=1, label="95% of full-data Dice")
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("held-out mean Dice")
    setup = report["setup"]
    ax.set_title(f"Active learning: {len(setup['seeds'])} seeds (mean ± sd), pool {len(setup['pool'])}, {len(setup['test'])} held out")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: Dict, out: str) -> Dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, "simulation.json"), "png": os.path.join(out, "simulation.png")}
    write_result(paths["json"], report, "the random strategy, same seeds and budgets; the full-data model (every pool label) sets the target")
    plot(report, paths["png"])
    return paths


def main(args) -> int:
    import tempfile

    strategies = list(DEFAULT_STRATEGIES) if args.strategy == "all" else [s.strip() for s in args.strategy.split(",")]
    work = args.work or tempfile.mkdtemp(prefix="segloop-simulate-")
    conf = dict(kv.split("=", 1) for kv in args.conf)
    sim = Simulation(
        args.studies, args.ground_truth, work, rounds=args.rounds, per_round=args.per_round, initial=args.initial,
        test_cases=args.test_cases, first_iterations=args.first_iterations,
        round_iterations=args.round_iterations, full_iterations=args.full_iterations, conf=conf,
        progress=lambda line: print(line, flush=True),
    )
    print(f"Simulating {strategies} x seeds {list(range(args.seeds))} in {work} ...", flush=True)
    os.makedirs(args.out, exist_ok=True)
    partial = os.path.join(args.out, "simulation.partial.json")
    report = sim.run(strategies, list(range(args.seeds)), checkpoint=partial)
    paths = write_report(report, args.out)
    os.unlink(partial)
    print(f"full-data mean Dice {report['full_data']['mean_dice']}; target {report['target']['mean_dice']}")
    for name, row in report["curves"].items():
        print(f"{name:>10}: labels-to-target {row['labels_to_target']} (x random: {row['labels_vs_random']}), "
              f"curve {row['mean_dice']}")
    print(f"wrote {paths['json']} and {paths['png']}")
    print(json.dumps({k: v["labels_to_target"] for k, v in report["curves"].items()}))
    return 0
