"""``segloop-bench simulate``: annotation campaigns replayed from ground truth, one per strategy and seed.

Every campaign runs the server's own code in-process: the datastore (``SegLoopDatastore``), the
scoring job (``UncertaintyScoring``, asked only for the components the strategy reads), the
strategies (SegLoop's, and MONAI Label's ``Random`` / ``First``), the booking view that keeps a
round's picks distinct, and the incremental trainer with its model registry.

Protocol, per seed:

1. ``test_cases`` images are held out (:func:`stratified_held_out`: every subpopulation trait the
   generator recorded is represented where the count allows; without ``cases.json``, the last
   ids); the rest form the pool.
2. ``initial`` pool cases (seeded random, or with ``cold_start="diversity"`` the most different
   ones by their HU histogram and body size: :func:`farthest_first`) are labelled from ground
   truth and a model is trained from scratch for ``first_iterations``; every strategy of this seed starts from that model.
3. Each of ``rounds`` rounds: score the pool, let the strategy pick ``per_round`` cases one after
   the other (each pick booked, as for concurrent annotators), save their ground truth as final
   labels, fine-tune incrementally (new labels + replay) for ``round_iterations``, and measure
   held-out Dice at the input geometry.
4. A full-data model (all pool labels, from scratch, ``full_iterations``: by default twice a
   campaign's total, since many labels need more steps to be learnt) gives the target: 95% of its
   mean Dice. It is trained once, with the first seed. *Labels-to-target* of a strategy is the
   first label count at which its seed-mean curve reaches the target.

Statistics (``summarize``): per strategy, the seed-mean curve with a 95% bootstrap interval (seeds
resampled with replacement), the area under the curve (mean Dice over the label range, trapezoid)
and labels-to-target, each with its bootstrap interval (a resample that never reaches the target
counts as "not reached"). The comparison the issue asks for is against ``foreground_random``
(nnActive's strong baseline): ``goal`` says whether the best strategy needs at most 60% of its
labels with non-overlapping intervals. When the ground truth folder has ``cases.json`` with
``population`` (``segloop sample-data --mixed``), each pick's subpopulation is recorded and counted.

Budgets are iterations, not seconds, so a busy machine changes the wall time, not the result. The
checkpoint is written after every round; a rerun with it resumes where the campaign stopped.
"""

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
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

DEFAULT_STRATEGIES = ("random", "foreground_random", "entropy", "epistemic", "diversity", "hybrid")
TARGET_FRACTION = 0.95
BASELINE = "foreground_random"
GOAL_RATIO = 0.6  # labels-to-target of the best strategy over the baseline's
BOOTSTRAP = 2000  # resamples of the seeds


def mean_dice(per_label: Mapping[str, float]) -> float:
    values = [v for v in per_label.values() if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def case_ids(folder: str) -> List[str]:
    return sorted(f[: -len(".nii.gz")] for f in os.listdir(folder) if f.endswith(".nii.gz"))


def case_populations(ground_truth: str) -> Dict[str, str]:
    """Case id -> subpopulation from the generator's ``cases.json`` ({} when it has none)."""
    path = os.path.join(ground_truth, "cases.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {c["case_id"]: c.get("population", "typical") for c in json.load(f).get("cases", [])}


COLD_STARTS = ("random", "diversity")
HISTOGRAM_HU = (-200.0, 300.0, 25)  # soft-tissue bins of the cold-start features


def image_features(path: str) -> np.ndarray:
    """What a case looks like before any model exists: the share of its body voxels (> -500 HU)
    in each of 25 soft-tissue HU bins (contrast phase moves organs between bins), and the body's
    share of the field of view (patient size)."""
    import nibabel as nib

    image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    body = image > -500
    low, high, bins = HISTOGRAM_HU
    histogram, _ = np.histogram(image[body], bins=int(bins), range=(low, high))
    return np.concatenate([histogram / max(int(body.sum()), 1), [body.mean()]])


def farthest_first(features: Mapping[str, np.ndarray], count: int, seed: int) -> List[str]:
    """A cold start by diversity: k-center greedy on standardised features. The first case is the
    one nearest the mean (seeded ties), each next the one farthest from every case chosen so far."""
    ids = sorted(features)
    x = np.stack([features[i] for i in ids])
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    order = np.random.default_rng(seed).permutation(len(ids))  # ties broken by seed
    first = min(order, key=lambda i: np.linalg.norm(x[i]))
    chosen = [first]
    distance = np.linalg.norm(x - x[first], axis=1)
    while len(chosen) < min(count, len(ids)):
        nxt = max(order, key=lambda i: distance[i])
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(x - x[nxt], axis=1))
    return [ids[i] for i in chosen]


def stratified_held_out(ids: Sequence[str], populations: Mapping[str, str], count: int) -> List[str]:
    """``count`` held-out ids that cover as many subpopulation traits (the ``+``-separated parts of
    a population name: ``native``, ``small``, ``burden-none``, ``inversus`` ...) as possible: each
    pick is the case adding the most traits not yet held out, ties going to the later id, so
    without populations (or once every trait is covered) it is the last ids. Sorted."""
    traits = {i: set(populations.get(i, "typical").split("+")) for i in ids}
    chosen: List[str] = []
    covered: set = set()
    for _ in range(count):
        rest = [i for i in reversed(ids) if i not in chosen]
        best = max(rest, key=lambda i: len(traits[i] - covered))  # max keeps the first best: the latest id
        chosen.append(best)
        covered |= traits[best]
    return sorted(chosen)


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
        cold_start: str = "random",
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
        self.populations = case_populations(ground_truth)
        self.test = stratified_held_out(ids, self.populations, test_cases)
        self.pool = [i for i in ids if i not in self.test]
        self.rounds, self.per_round, self.initial = rounds, per_round, initial
        if cold_start not in COLD_STARTS:
            raise ValueError(f"cold_start must be one of {COLD_STARTS}, got {cold_start!r}")
        self.cold_start = cold_start
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
        """Held-out Dice per label (case mean), their ``mean``, and ``cases``: each case's mean Dice."""
        per_case = evaluate(folder, self.ground_truth, self.test, self.conf, images=self.studies)
        per_label = mean_per_label(per_case)
        return dict(per_label, mean=mean_dice(per_label), cases={c: round(mean_dice(d), 4) for c, d in per_case.items()})

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
        picked = {"chosen": chosen, "scoring_s": round(scored - start, 1), "pick_s": round(time.time() - scored, 2)}
        if self.populations:
            picked["populations"] = [self.populations.get(c, "?") for c in chosen]
        return picked

    # -- campaigns ---------------------------------------------------------------------------
    def start(self, seed: int) -> Dict:
        """The seed's initial labels and round-0 model, shared by every strategy."""
        folder = os.path.join(self.work, f"seed{seed}", "start")
        shutil.rmtree(folder, ignore_errors=True)
        if self.cold_start == "diversity":
            features = {c: image_features(os.path.join(self.studies, f"{c}.nii.gz")) for c in self.pool}
            initial = sorted(farthest_first(features, self.initial, seed))
        else:
            initial = sorted(random.Random(seed).sample(self.pool, self.initial))
        self._new_datastore_folder(folder, initial)
        run = self._train(folder, self.first_iterations, seed, incremental=False)
        dice = self._evaluate(folder)
        self.progress(f"seed {seed}: {len(initial)} initial labels {initial}: held-out mean Dice {dice['mean']:.3f}")
        return {"folder": folder, "initial": initial, "point": {"labels": len(initial), "dice": dice, "train_s": run["seconds"]}}

    def _resumable(self, folder: str, points: Sequence[Dict]) -> bool:
        """Whether ``folder`` is in the state right after the last checkpointed round: as many
        labels and model versions as that round left (a round stopped half-way is not)."""
        if not points or not os.path.isdir(folder):
            return False
        labelled = self._datastore(folder).get_labeled_images()
        registry = build_task_config(folder, self.conf).registry
        return len(labelled) == points[-1]["labels"] and len(registry.history()) == len(points)

    def campaign(
        self, name: str, seed: int, start: Dict, done: Sequence[Dict] = (), on_round: Callable[[List[Dict]], None] = None
    ) -> List[Dict]:
        """The strategy's rounds; ``done`` (checkpointed points) resumes a stopped campaign when
        its folder is still in that state, and ``on_round`` is called with the points after each round."""
        folder = os.path.join(self.work, f"seed{seed}", name)
        if self._resumable(folder, done):
            points = list(done)
            self.progress(f"seed {seed} {name}: resuming after round {len(points) - 1}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(start["folder"], folder)
            points = [dict(start["point"], chosen=start["initial"])]
        for r in range(len(points), self.rounds + 1):
            picked = self.pick(folder, name, seed * 1000 + r)
            run = self._train(folder, self.round_iterations, seed * 1000 + r, incremental=True)
            dice = self._evaluate(folder)
            labels = points[-1]["labels"] + len(picked["chosen"])
            points.append({"labels": labels, "dice": dice, "train_s": run["seconds"], **picked})
            if on_round:
                on_round(points)
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
        """All campaigns. With ``checkpoint``, what was measured is saved there as JSON after every
        round (seed starts, campaign points, the full-data model), so a long simulation that is
        stopped keeps it, and a rerun with the same checkpoint resumes: finished campaigns are not
        run again, and a campaign stopped between rounds goes on from its last round."""
        unknown = [s for s in strategies if s not in STRATEGY_COMPONENTS]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {sorted(STRATEGY_COMPONENTS)}")
        start_time = time.time()
        saved: Dict = {}
        if checkpoint and os.path.exists(checkpoint):
            with open(checkpoint) as f:
                saved = json.load(f)
        done = saved.get("runs", {})
        runs: Dict[str, Dict[str, List[Dict]]] = {s: {} for s in strategies}
        starts: Dict[str, Dict] = dict(saved.get("starts", {}))
        full: Dict[str, Dict] = dict(saved.get("full", {}))

        def save() -> None:
            if checkpoint:
                state = {"runs": runs, "starts": starts, "full": full, "finished": False}
                atomic_write_json(checkpoint, json_safe(state))

        for seed in seeds:
            for name in strategies:
                points = done.get(name, {}).get(str(seed), [])
                if len(points) == self.rounds + 1:
                    runs[name][str(seed)] = points
                    self.progress(f"seed {seed} {name}: resumed from {checkpoint}")
                    continue
                start = starts.get(str(seed))
                if not start or not self._resumable(start["folder"], [start["point"]]):
                    start = starts[str(seed)] = self.start(seed)
                    save()

                def on_round(so_far: List[Dict], name=name, seed=seed) -> None:
                    runs[name][str(seed)] = so_far
                    save()

                runs[name][str(seed)] = self.campaign(name, seed, start, points, on_round)
                save()
        if str(seeds[0]) not in full:
            full[str(seeds[0])] = self.full_data(seeds[0])
            save()
        report = summarize(runs, full)
        report["setup"] = {
            "pool": self.pool, "test": self.test, "rounds": self.rounds, "per_round": self.per_round,
            "initial": self.initial, "cold_start": self.cold_start, "first_iterations": self.first_iterations,
            "round_iterations": self.round_iterations, "full_iterations": self.full_iterations, "seeds": list(seeds), "conf": self.conf,
            "wall_s": round(time.time() - start_time, 1),
        }
        if self.populations:
            report["populations"] = population_summary(runs, self.populations, self.pool, self.test)
        return report


def area_under_curve(labels: Sequence[int], dice: np.ndarray) -> np.ndarray:
    """Mean Dice over the label range (trapezoid area / width) of curves ``[..., P]`` at ``labels``."""
    x = np.asarray(labels, dtype=float)
    return np.trapz(dice, x, axis=-1) / max(float(x[-1] - x[0]), 1e-9)


def labels_to_target(labels: Sequence[int], curves: np.ndarray, target: float) -> np.ndarray:
    """First label count at which each curve ``[..., P]`` reaches ``target``; inf where none does."""
    reached = np.asarray(curves) >= target
    first = np.argmax(reached, axis=-1)
    return np.where(reached.any(axis=-1), np.asarray(labels, dtype=float)[first], np.inf)


def interval(samples: np.ndarray) -> List[Optional[float]]:
    """95% percentile interval of bootstrap ``samples`` (None for an unreached, infinite end)."""
    samples = np.asarray(samples, dtype=float)
    low = float(np.percentile(samples, 2.5, method="lower"))
    high = float(np.percentile(samples, 97.5, method="higher"))
    return [round(v, 4) if np.isfinite(v) else None for v in (low, high)]


def summarize(
    runs: Dict[str, Dict[str, List[Dict]]], full: Dict[str, Dict], baseline: str = BASELINE, resamples: int = BOOTSTRAP
) -> Dict:
    """Seed-mean curves with bootstrap intervals, area under the curve, labels-to-target, and the
    goal: the best strategy at most ``GOAL_RATIO`` of the baseline's labels, intervals apart."""
    full_mean = float(np.mean([f["dice"]["mean"] for f in full.values()]))
    target = TARGET_FRACTION * full_mean
    rng = np.random.default_rng(0)
    curves = {}
    for name, by_seed in runs.items():
        labels = [p["labels"] for p in next(iter(by_seed.values()))]
        dice = np.array([[p["dice"]["mean"] for p in points] for points in by_seed.values()])  # [seeds, points]
        resampled = dice[rng.integers(0, len(dice), size=(resamples, len(dice)))].mean(axis=1)  # [B, points]
        mean = dice.mean(axis=0)
        need = labels_to_target(labels, mean, target)
        per_label = {
            k: np.mean([[p["dice"][k] for p in points] for points in by_seed.values()], axis=0).round(4).tolist()
            for k in next(iter(by_seed.values()))[0]["dice"] if k not in ("mean", "cases")
        }
        curves[name] = {
            "labels": labels,
            "seeds": len(dice),
            "mean_dice": mean.round(4).tolist(),
            "std_dice": dice.std(axis=0).round(4).tolist(),
            "ci95_dice": [interval(resampled[:, i]) for i in range(len(labels))],
            "per_label_mean_dice": per_label,
            "area_under_curve": round(float(area_under_curve(labels, mean)), 4),
            "area_under_curve_ci95": interval(area_under_curve(labels, resampled)),
            "labels_to_target": int(need) if np.isfinite(need) else None,
            "labels_to_target_ci95": interval(labels_to_target(labels, resampled, target)),
            "final_mean_dice": round(float(mean[-1]), 4),
        }
    for row in curves.values():
        for reference in ("random", baseline):
            need, other = row["labels_to_target"], curves.get(reference, {}).get("labels_to_target")
            row[f"labels_vs_{reference}"] = round(need / other, 3) if need and other else None
    return {
        "full_data": {"per_seed": full, "mean_dice": round(full_mean, 4)},
        "target": {"fraction_of_full_data": TARGET_FRACTION, "mean_dice": round(target, 4)},
        "curves": curves,
        "goal": goal_verdict(curves, baseline),
        "runs": runs,
    }


def goal_verdict(curves: Dict[str, Dict], baseline: str) -> Dict:
    """Does the best strategy reach the target with at most ``GOAL_RATIO`` of the baseline's labels,
    with non-overlapping 95% intervals? Said in words when it cannot be decided."""
    others = {n: r for n, r in curves.items() if n not in (baseline, "random", "first")}
    verdict: Dict = {"baseline": baseline, "ratio_wanted": GOAL_RATIO, "met": False}
    if baseline not in curves or not others:
        return dict(verdict, why=f"needs the {baseline} baseline and at least one active strategy")
    reached = {n: r for n, r in others.items() if r["labels_to_target"] is not None}
    base = curves[baseline]
    if not reached:
        return dict(verdict, why="no active strategy's seed-mean curve reached the target")
    best_name = min(reached, key=lambda n: (reached[n]["labels_to_target"], -reached[n]["area_under_curve"]))
    best = reached[best_name]
    verdict.update(best=best_name, best_labels=best["labels_to_target"], baseline_labels=base["labels_to_target"])
    if base["labels_to_target"] is None:
        last = base["labels"][-1]
        return dict(verdict, why=f"the baseline did not reach the target within {last} labels, so the ratio is "
                                 f"below {best['labels_to_target']}/{last} but not measured")
    ratio = best["labels_to_target"] / base["labels_to_target"]
    best_high = best["labels_to_target_ci95"][1]
    base_low = base["labels_to_target_ci95"][0]
    apart = best_high is not None and base_low is not None and best_high < base_low
    verdict.update(ratio=round(ratio, 3), intervals_apart=bool(apart), met=bool(ratio <= GOAL_RATIO and apart))
    return verdict


def population_summary(runs: Dict[str, Dict[str, List[Dict]]], populations: Dict[str, str], pool, test) -> Dict:
    """How the pool and held-out cases split into subpopulations, what share of each strategy's
    picks (initial labels excluded) fell in each, and each held-out case's final Dice by strategy."""
    share = lambda ids: {k: round(v / max(len(ids), 1), 3) for k, v in sorted(Counter(populations.get(i, "?") for i in ids).items())}  # noqa: E731
    picks = {}
    final_by_population = {}
    for name, by_seed in runs.items():
        chosen = [c for points in by_seed.values() for p in points[1:] for c in p["chosen"]]
        picks[name] = share(chosen)
        per_case: Dict[str, List[float]] = {}
        for points in by_seed.values():
            for case, value in points[-1]["dice"].get("cases", {}).items():
                per_case.setdefault(populations.get(case, "?"), []).append(value)
        final_by_population[name] = {k: round(float(np.mean(v)), 4) for k, v in sorted(per_case.items())}
    return {"pool": share(pool), "test": share(test), "picked": picks, "final_held_out_dice": final_by_population}


def plot(report: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, row in report["curves"].items():
        x, m = np.array(row["labels"]), np.array(row["mean_dice"])
        low = np.array([c[0] if c[0] is not None else np.nan for c in row["ci95_dice"]])
        high = np.array([c[1] if c[1] is not None else np.nan for c in row["ci95_dice"]])
        ax.plot(x, m, marker="o", label=f"{name} (target at {row['labels_to_target'] or '>' + str(x[-1])})")
        ax.fill_between(x, low, high, alpha=0.12)
    ax.axhline(report["target"]["mean_dice"], color="k", linestyle="--", linewidth=1, label="95% of full-data Dice")
    ax.set_xlabel("labelled cases")
    ax.set_ylabel("held-out mean Dice")
    setup = report["setup"]
    ax.set_title(f"Active learning: {len(setup['seeds'])} seeds (mean, 95% bootstrap band), "
                 f"pool {len(setup['pool'])}, {len(setup['test'])} held out", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: Dict, out: str) -> Dict[str, str]:
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, "simulation.json"), "png": os.path.join(out, "simulation.png")}
    write_result(
        paths["json"], report,
        "random and foreground-aware random (foreground_random), same seeds, initial labels and iteration "
        "budgets; the full-data model (every pool label) sets the target",
    )
    plot(report, paths["png"])
    return paths


def main(args) -> int:
    import tempfile

    strategies = list(DEFAULT_STRATEGIES) if args.strategy == "all" else [s.strip() for s in args.strategy.split(",")]
    work = args.work or tempfile.mkdtemp(prefix="segloop-simulate-")
    conf = dict(kv.split("=", 1) for kv in args.conf)
    sim = Simulation(
        args.studies, args.ground_truth, work, rounds=args.rounds, per_round=args.per_round, initial=args.initial,
        cold_start=args.cold_start,
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
        print(f"{name:>17}: labels-to-target {row['labels_to_target']} {row['labels_to_target_ci95']} "
              f"(x {BASELINE}: {row['labels_vs_' + BASELINE]}), AUC {row['area_under_curve']} "
              f"{row['area_under_curve_ci95']}, curve {row['mean_dice']}")
    print(f"goal: {report['goal']}")
    print(f"wrote {paths['json']} and {paths['png']}")
    print(json.dumps({k: v["labels_to_target"] for k, v in report["curves"].items()}))
    return 0
