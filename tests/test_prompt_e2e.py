"""The prompt model end to end: it learns from the datastore's labels, clicks improve its answer
on held-out cases, and the real server answers the upstream MONAI Label Slicer plugin's own
client (its DeepGrow click requests, unchanged), boxes, text, a previous mask, bad prompts, and
retrains itself from a submitted correction.
"""

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import requests

from segloop.data.sample import write_sample_data
from segloop.evaluation.interactive import build_pipeline, evaluate_interactive, held_out_cases, write_report
from segloop.evaluation.metrics import dice
from segloop.evaluation.server import running_server, wait_for
from segloop.labels import DEFAULT_LABELS
from segloop.prompts.simulation import largest_component, next_click, region_centre

pytestmark = pytest.mark.slow

TRAIN_SECONDS = 180  # CPU budget of the one training run the tests below share
HELD_OUT = ["case_008", "case_009"]


def upstream_slicer_client():
    """The MONAI Label Slicer plugin's own client class, as the monailabel wheel installs it."""
    folder = os.path.join(sys.prefix, "monailabel", "plugins", "slicer", "MONAILabel")
    assert os.path.isdir(os.path.join(folder, "MONAILabelLib")), f"upstream Slicer plugin not found in {folder}"
    sys.path.insert(0, folder)
    from MONAILabelLib import MONAILabelClient  # noqa: E402

    return MONAILabelClient


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from segloop.evaluation.training import train

    root = str(tmp_path_factory.mktemp("prompt"))
    write_sample_data(root, cases=10, seed=7, labelled=8, progress=None)
    run = train(
        f"{root}/studies", {"max_epochs": 100000, "max_seconds": TRAIN_SECONDS, "val_split": 0.0, "seed": 0}, name="prompt"
    )
    print(f"\nprompt model: {run['stats']['current_iteration']} iterations in {run['seconds']} s")
    return root


def truth_of(root, case_id):
    return np.asarray(nib.load(f"{root}/ground_truth/{case_id}.nii.gz").dataobj)


def test_clicks_improve_the_prompt_model_on_held_out_cases(trained, capsys, tmp_path):
    pipeline, matcher, labels = build_pipeline(f"{trained}/studies")
    cases = held_out_cases(f"{trained}/studies", f"{trained}/ground_truth", labels)
    assert [c["id"] for c in cases] == HELD_OUT
    report = evaluate_interactive(pipeline, matcher, cases, labels, clicks=3)
    with capsys.disabled():
        for name, row in report["labels"].items():
            print(f"{name}: Dice after 1..3 clicks {row['dice_after_clicks']}, box {row['box_dice']}, text {row['text_dice']}")
    # A few CPU minutes of training (about 200 steps in float32, more on a CPU with native bfloat16)
    # give a weak but real model: an organ fills 1-4% of these volumes, so chance-level masks score
    # well under 0.1. The benchmark trains longer. How well it does varies from run to run on CPU
    # (mean organ Dice after one click 0.07-0.30, after three 0.18-0.47, in five runs of 288-304
    # steps of an earlier recipe; 0.49 and 0.67 after 360 s of a later one, 0.40-0.61 and 0.59-0.76
    # in two runs of 270 s; 0.58 and 0.68 in CI with bfloat16 training and 48^3 zoom-in windows;
    # 0.68 and 0.80 in a 270 s run of commit 2dfadd7, 0.51 and 0.65 in the first CI run of 180 s),
    # so the bar is "clearly above chance after three clicks, and clicks help", not a quality target.
    organs = ("liver", "spleen", "kidney")
    first = np.mean([report["labels"][k]["dice_after_clicks"][0] for k in organs])
    third = np.mean([report["labels"][k]["dice_after_clicks"][2] for k in organs])
    assert third > 0.12, third  # three clicks (with the label name, as the plugin sends it) on unseen cases
    # Correction clicks help: they take away at least a tenth of the error left after one click.
    assert 1 - third < 0.9 * (1 - first), (first, third)
    paths = write_report(report, str(tmp_path))  # what `segloop eval interactive` writes
    with open(paths["json"]) as f:
        assert json.load(f)["labels"]["liver"]["noc@90_per_case"] == report["labels"]["liver"]["noc@90_per_case"]
    assert os.path.getsize(paths["png"]) > 10_000


def test_latency_bench_times_each_cpu_path_on_the_trained_model(trained, tmp_path):
    from segloop.cli import build_parser

    out = tmp_path / "latency"
    args = build_parser().parse_args(
        ["bench", "latency", "--studies", f"{trained}/studies", "--ground-truth", f"{trained}/ground_truth",
         "--cases", HELD_OUT[0], "--clicks", "2", "--out", str(out)]
    )
    assert args.func(args) == 0
    report = json.loads((out / "latency.json").read_text())
    assert (out / "latency.png").stat().st_size > 0
    native, onednn = report["paths"]["float32_native"], report["paths"]["float32_onednn"]
    assert native["interactions"] == onednn["interactions"] > 0
    for name, row in native["labels"].items():
        # The same float32 arithmetic on other kernels: the same masks, click for click.
        assert np.allclose(row["dice_after_clicks"], onednn["labels"][name]["dice_after_clicks"], atol=2e-3), name
        assert 0 < row["latency_s_median"] <= row["latency_s_max"]
    assert report["speedup_of_median_vs_float32_native"]["float32_onednn"] > 0


def test_upstream_plugin_requests_through_the_real_server(trained, tmp_path):
    Client = upstream_slicer_client()
    studies = f"{trained}/studies"
    conf = {"models": "prompt", "auto_train": "true", "retrain_max_seconds": "5", "retrain_debounce_s": "0"}
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server.log")) as server:
        client = Client(server.url, tmpdir=str(tmp_path))
        info = client.info()
        assert info["models"]["prompt"]["type"] == "deepgrow"  # the plugin shows its point tools
        assert info["models"]["prompt"]["dimension"] == 3

        truth = truth_of(trained, "case_008")
        image = nib.load(f"{studies}/case_008.nii.gz")
        liver = truth == DEFAULT_LABELS["liver"]
        click = [int(v) for v in region_centre(largest_component(liver))]
        sessions, results = {}, {}
        for name in ("liver", "spleen"):
            target = truth == DEFAULT_LABELS[name]
            # Exactly what MONAILabel.py's onClickDeepgrow sends for a 3-D model; it resends every point.
            request = {"label": name, "foreground": [[int(v) for v in region_centre(largest_component(target))]], "background": []}
            scores = []
            for k in range(3):
                if k:  # the clinician clicks where the result is most wrong
                    (voxel, positive) = next_click(np.asarray(nib.load(results[name]).dataobj) > 0, target)
                    request["foreground" if positive else "background"].append([int(v) for v in voxel])
                results[name], params = client.infer("prompt", "case_008", request)
                out = nib.load(results[name])
                assert out.shape == image.shape and np.allclose(out.affine, image.affine, atol=1e-4)
                assert params["target"] == name and params["label_names"] == {name: 1} and params["model_version"] == 1
                assert params["previous_mask"] == ("remembered" if k else None)  # resent clicks refine the last answer
                scores.append(dice(np.asarray(out.dataobj) > 0, target))
            sessions[name] = scores
        print(f"Dice after 1..3 clicks through the server: {sessions}")
        first, last = (np.mean([s[k] for s in sessions.values()]) for k in (0, -1))
        assert last > 0.15 and last > first, sessions  # well above chance after three clicks, and clicks help

        # A box alone (the plugin's ROI form), a phrase alone, and a previous mask to refine are
        # accepted and answered on the input grid. Their quality after six CPU minutes varies from
        # run to run (box-only spleen Dice 0.20-0.83 in four runs), so it is reported, not asserted.
        spleen = truth == DEFAULT_LABELS["spleen"]
        lo, hi = np.argwhere(spleen).min(0), np.argwhere(spleen).max(0)
        roi = [int(v) for pair in zip(lo, hi) for v in pair]
        answers = {}
        boxed, params = client.infer("prompt", "case_008", {"roi": roi})
        answers["box"] = (boxed, params, spleen)
        assert params["target"] is None and params["roi_mm"] is not None
        texted, params = client.infer("prompt", "case_008", {"text": "hepar"})
        answers["text"] = (texted, params, liver)
        assert params["text_matched"] == "liver" and params["target"] == "liver"
        refined, params = client.infer("prompt", "case_008", {"text": "liver", "foreground": [click]}, label_in=results["liver"])
        answers["refined"] = (refined, params, liver)
        for kind, (path, params, structure) in answers.items():
            out = nib.load(path)
            assert out.shape == image.shape and np.allclose(out.affine, image.affine, atol=1e-4), kind
            print(f"{kind}: Dice {dice(np.asarray(out.dataobj) > 0, structure):.3f}")

        url = server.url
        bad = [
            ({"text": "pancreas"}, 422, "known labels"),
            ({"label": "liver", "foreground": [[9999, 0, 0]]}, 422, "outside the image"),
            ({"foreground": [[1, 2]]}, 400, "[i, j, k]"),
            ({"background": [click]}, 400, "foreground click"),
        ]
        for params_, status, words in bad:
            r = requests.post(f"{url}/infer/prompt", params={"image": "case_008"}, data={"params": json.dumps(params_)})
            assert r.status_code == status and words in r.text, (params_, r.status_code, r.text)
        r = requests.post(f"{url}/infer/prompt", params={"image": "../etc/passwd"}, data={"params": "{}"})
        assert r.status_code in (400, 404)

        # A submitted correction retrains the prompt model in the background: version 2 appears.
        with open(f"{trained}/ground_truth/case_009.nii.gz", "rb") as f:
            r = requests.put(f"{url}/datastore/label", params={"image": "case_009", "tag": "final"}, files={"label": ("case_009.nii.gz", f)})
        assert r.status_code == 200, r.text

        def second_version():
            versions = requests.get(f"{url}/segloop/models/prompt", timeout=30).json()["versions"]
            return versions if len(versions) >= 2 and versions[-1]["status"] in ("promoted", "kept") else None

        versions = wait_for(second_version, timeout=420, every=3, what="a second prompt model version")
        assert "case_009" in versions[-1]["new_labels"]
