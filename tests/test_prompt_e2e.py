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

from segloop.data.phantom import NOVEL_STRUCTURES
from segloop.infers.prompt_proposal import merge_structure_masks
from segloop.labels import DEFAULT_LABELS
from segloop.metrics.dice import dice
from segloop.prompts.click_protocol import class_indices, click_session, load_case
from segloop.prompts.encoding import Prompt
from segloop.prompts.request import parse_prompt, scribble_mask_clicks
from segloop.prompts.simulation import largest_component, next_click, region_centre
from segloop_bench.interactive import build_pipeline, run as evaluate_interactive, write_report
from segloop_bench.server import running_server, wait_for

from conftest import pretrained

pytestmark = pytest.mark.slow

HELD_OUT = ["case_008", "case_009"]


def upstream_slicer_client():
    """The MONAI Label Slicer plugin's own client class, as the monailabel wheel installs it."""
    folder = os.path.join(sys.prefix, "monailabel", "plugins", "slicer", "MONAILabel")
    assert os.path.isdir(os.path.join(folder, "MONAILabelLib")), f"upstream Slicer plugin not found in {folder}"
    sys.path.insert(0, folder)
    from MONAILabelLib import MONAILabelClient  # noqa: E402

    return MONAILabelClient


@pytest.fixture(scope="module")
def trained_prompt(tmp_path_factory):
    """The prompt model trained for PROMPT_TRAIN_STEPS on 8 labelled cases (tests/pretrain.py) in the
    background since collection (conftest.py); case_008 and case_009 are held out."""
    run = pretrained("prompt", tmp_path_factory)
    print(f"\nprompt model: {run['run']['stats']['current_iteration']} iterations in {run['run']['seconds']} s")
    return run["root"]


def truth_of(root, case_id):
    return np.asarray(nib.load(f"{root}/ground_truth/{case_id}.nii.gz").dataobj)


ORGANS = ("liver", "spleen", "kidney")
MARGIN = 0.05  # Dice over the learns-nothing baseline of the same prompt
BOX_MARGIN = 0.02  # the box arm's, over the box itself: 0.05-0.09 in three runs of this test


def test_each_prompt_arm_against_a_baseline_that_learns_nothing(trained_prompt, capsys, tmp_path):
    """Every arm of ``eval interactive`` on the held-out cases, each beside the baseline that gets
    the same information and learns nothing: clicks against a ball of the organ's median training
    size at the first click, a box against the box itself; free text against the label prompt it
    resolves to. The label-only figures are printed beside the mean label (not asserted, below)."""
    report = evaluate_interactive(f"{trained_prompt}/studies", f"{trained_prompt}/ground_truth", clicks=3, segfm_clicks=1)
    assert report["cases"] == HELD_OUT
    rows = report["labels"]
    mean = lambda key: float(np.mean([key(rows[o]) for o in ORGANS]))  # noqa: E731
    arms = {
        "label_and_clicks@1": mean(lambda r: r["label_and_clicks"]["dice_after_clicks"][0]),
        "label_and_clicks@3": mean(lambda r: r["label_and_clicks"]["dice_after_clicks"][2]),
        "clicks_only@1": mean(lambda r: r["clicks_only"]["dice_after_clicks"][0]),
        "clicks_only@3": mean(lambda r: r["clicks_only"]["dice_after_clicks"][2]),
        "clicks_only_agnostic@1": mean(lambda r: r["clicks_only_agnostic"]["dice_after_clicks"][0]),
        "clicks_only_agnostic@3": mean(lambda r: r["clicks_only_agnostic"]["dice_after_clicks"][2]),
        "label_only": mean(lambda r: r["label_only_dice"]),
        "box_only": mean(lambda r: r["box_only_dice"]),
        "text": mean(lambda r: r["text_dice"]),
    }
    baselines = {
        "ball": mean(lambda r: r["baseline_ball_dice"]),
        "box_fill": mean(lambda r: r["baseline_box_fill_dice"]),
        "mean_label": {o: rows[o]["baseline_mean_label_dice"] for o in ORGANS},
    }
    with capsys.disabled():
        print(f"\nmean organ Dice on {HELD_OUT}: " + ", ".join(f"{k} {v:.3f}" for k, v in arms.items())
              + f"; baselines {json.dumps(baselines)}; label only per organ "
              + json.dumps({o: rows[o]["label_only_dice"] for o in ORGANS}))
    # The tests train the prompt model for PROMPT_TRAIN_STEPS (the benchmark trains 30 minutes). At that
    # budget three clicks with the label beat a ball at the first click, and a box beats the box.
    assert arms["label_and_clicks@3"] > baselines["ball"] + MARGIN, (arms, baselines)
    assert arms["box_only"] > baselines["box_fill"] + BOX_MARGIN, (arms, baselines)
    # Correction clicks help, with and without the label: they take away at least a tenth of the error.
    for arm in ("label_and_clicks", "clicks_only", "clicks_only_agnostic"):
        first, third = arms[f"{arm}@1"], arms[f"{arm}@3"]
        assert 1 - third < 0.9 * (1 - first), (arm, first, third)
    # Free text goes through the sentence embeddings (no phrase is a name or synonym). A phrase is
    # placed on its own label, whose answer it then gets, or refused (a 4xx, Dice 0): never placed on
    # another label. Most of each organ's phrases are placed.
    for organ in ORGANS:
        phrases = rows[organ]["text_phrases"]
        assert phrases and all(t["resolved"] in (organ, None) for t in phrases), phrases
        assert all(t["dice"] == 0.0 for t in phrases if not t["resolved"]), phrases
        placed = [t for t in phrases if t["resolved"]]
        assert len(placed) >= 0.6 * len(phrases), phrases
        # (per case: each placed phrase's Dice is the label prompt's on that case)
        mean_placed = float(np.mean([t["dice"] for t in placed]))
        assert mean_placed == pytest.approx(rows[organ]["label_only_dice"], abs=1e-3), (organ, phrases)
    # The label prompt alone is not asserted against the mean label: at PROMPT_TRAIN_STEPS it does not beat
    # it (label only 0.36-0.54 mean organ Dice in four runs against 0.51); the benchmark's 30-minute
    # model does (README, "The prompt model").
    paths = write_report(report, str(tmp_path))  # what `segloop-bench eval interactive` writes
    with open(paths["json"]) as f:
        written = json.load(f)
    assert written["labels"]["liver"]["clicks_only"] == json.loads(json.dumps(rows["liver"]["clicks_only"]))
    assert written["provenance"]["commit"] and written["provenance"]["baseline"].startswith("baseline_ball")
    # Structures nobody labelled (the generator's novel ground truth): clicks only, beside a ball of
    # each structure's own volume. Reported, not asserted at PROMPT_TRAIN_STEPS (README, "The prompt model").
    # SegFM3D's protocol (the box, then corrections; one here, five in the benchmark): Dice and NSD per step.
    segfm = written["labels"]["liver"]["box_then_clicks"]
    assert len(segfm["dice_after_box_and_clicks"]) == len(segfm["nsd_after_box_and_clicks"]) == 2
    assert segfm["dice_after_box_and_clicks"][0] == pytest.approx(rows["liver"]["box_only_dice"], abs=1e-3)
    assert 0 <= segfm["final_nsd"] <= 1 and 0 <= segfm["nsd_auc"] <= 1
    # Prompts drawn on one slice (a 2D box, a lasso) beside the cross-section extruded over the true extent.
    for organ in ORGANS:
        assert all(0 <= rows[organ][k] <= 1 for k in ("box_2d_dice", "lasso_dice", "baseline_extruded_slice_oracle_dice"))
    with capsys.disabled():
        print("one slice, mean organ Dice: 2D box {:.3f}, lasso {:.3f}, extruded slice (oracle) {:.3f}".format(
            *(mean(lambda r, k=k: r[k]) for k in ("box_2d_dice", "lasso_dice", "baseline_extruded_slice_oracle_dice"))))
    novel = written["novel_structures"]
    assert set(novel) == set(NOVEL_STRUCTURES) and all(r["cases"] == len(HELD_OUT) for r in novel.values())
    assert all(0 < r["baseline_ball_oracle_dice"] < 1 and len(r["clicks_only"]["dice_after_clicks"]) == 3 for r in novel.values())
    with capsys.disabled():
        print("novel structures, clicks only after 1/3 clicks vs oracle-size ball: " + json.dumps(
            {n: (r["clicks_only"]["dice_after_clicks"][0], r["clicks_only"]["dice_after_clicks"][2], r["baseline_ball_oracle_dice"]) for n, r in novel.items()}))
    assert os.path.getsize(paths["png"]) > 10_000


def test_latency_bench_times_http_and_each_cpu_path_on_the_trained_model(trained_prompt, tmp_path):
    from segloop_bench.cli import build_parser

    out = tmp_path / "latency"
    args = build_parser().parse_args(
        ["bench", "latency", "--studies", f"{trained_prompt}/studies", "--ground-truth", f"{trained_prompt}/ground_truth",
         "--cases", HELD_OUT[0], "--clicks", "2", "--out", str(out)]
    )
    assert args.func(args) == 0
    report = json.loads((out / "latency.json").read_text())
    assert (out / "latency.png").stat().st_size > 0
    # Through HTTP with MONAI Label's client: a round trip costs at least the server task's own time.
    http = report["http"]
    assert http["interactions"] > 0 and http["latency_s_median"] >= http["server_task_s_median"] > 0
    assert report["provenance"]["machine"]["cpu"]
    native, onednn = report["paths"]["float32_native"], report["paths"]["float32_onednn"]
    assert native["interactions"] == onednn["interactions"] > 0
    for name, row in native["labels"].items():
        # The same float32 arithmetic on other kernels: the same masks, click for click.
        assert np.allclose(row["dice_after_clicks"], onednn["labels"][name]["dice_after_clicks"], atol=2e-3), name
        assert 0 < row["latency_s_median"] <= row["latency_s_max"]
    assert report["speedup_of_median_vs_float32_native"]["float32_onednn"] > 0


def test_upstream_plugin_requests_through_the_real_server(trained_prompt, tmp_path):
    Client = upstream_slicer_client()
    studies = f"{trained_prompt}/studies"
    conf = {"models": "prompt", "auto_train": "true", "retrain_max_seconds": "5", "first_run_max_seconds": "5", "retrain_debounce_s": "0",
            "prompt_proposal": "true"}
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server.log")) as server:
        client = Client(server.url, tmpdir=str(tmp_path))
        info = client.info()
        assert info["models"]["prompt"]["type"] == "deepgrow"  # the plugin shows its point tools
        assert info["models"]["prompt"]["dimension"] == 3

        truth = truth_of(trained_prompt, "case_008")
        image = nib.load(f"{studies}/case_008.nii.gz")
        liver = truth == DEFAULT_LABELS["liver"]
        click = [int(v) for v in region_centre(largest_component(liver))]
        # The server must answer what the evaluated model answers (test above): the same prompts
        # through the in-process zoom-out-zoom-in pipeline give the same masks.
        pipeline, matcher, labels = build_pipeline(studies)
        stored_image, _ = load_case(f"{studies}/case_008.nii.gz", f"{trained_prompt}/ground_truth/case_008.nii.gz")
        classes = class_indices(labels)

        # The label-only proposal (prompt_proposal), as the plugin asks an automatic model: every
        # label's label-only answer of the in-process pipeline, merged, on the input grid.
        assert info["models"]["prompt_seg"]["type"] == "segmentation"
        proposal_file, params = client.infer("prompt_seg", "case_008", {})
        proposal = nib.load(proposal_file)
        assert proposal.shape == image.shape and np.allclose(proposal.affine, image.affine, atol=1e-4)
        assert params["label_names"] == labels and params["model_version"] == 1
        served = np.asarray(proposal.dataobj)
        expected = merge_structure_masks({labels[n]: pipeline(stored_image, Prompt(label=c))[0] for n, c in classes.items()})
        assert set(np.unique(served).tolist()) <= {0, *labels.values()}
        for name, value in labels.items():
            assert (served == value).sum() == params["voxels"][name]
            assert dice(served == value, expected == value) > 0.99, name  # (1 where both are empty)

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
            in_process = click_session(pipeline, stored_image, target, classes[name], 3)["dice"]
            assert np.allclose(scores, in_process, atol=0.01), (name, scores, in_process)
        print(f"Dice after 1..3 clicks through the server: {sessions}")
        assert np.mean([s[-1] for s in sessions.values()]) > np.mean([s[0] for s in sessions.values()]), sessions

        # A box alone (the plugin's ROI form), a phrase alone, and a previous mask to refine: each on
        # the input grid, each the in-process pipeline's answer to the same prompt; the refined
        # mask also beats a ball of the liver's median training size at the click.
        spleen = truth == DEFAULT_LABELS["spleen"]
        lo, hi = np.argwhere(spleen).min(0), np.argwhere(spleen).max(0)
        roi = [int(v) for pair in zip(lo, hi) for v in pair]
        boxed, params = client.infer("prompt", "case_008", {"roi": roi})
        assert params["target"] is None and params["roi_mm"] is not None
        texted, params = client.infer("prompt", "case_008", {"text": "hepar"})
        assert params["text_matched"] == "liver" and params["target"] == "liver"
        previous = np.asarray(nib.load(results["liver"]).dataobj).astype(np.float32)
        refined, params = client.infer("prompt", "case_008", {"text": "liver", "foreground": [click]}, label_in=results["liver"])
        assert params["previous_mask"] == "uploaded"
        expected = {
            "box": pipeline(stored_image, Prompt(box=(tuple(map(float, lo)), tuple(map(float, hi)))))[0],
            "text": pipeline(stored_image, Prompt(label=classes["liver"]))[0],
            "refined": pipeline(stored_image, Prompt(positive=[tuple(click)], label=classes["liver"]), previous)[0],
        }
        for kind, path in (("box", boxed), ("text", texted), ("refined", refined)):
            out = nib.load(path)
            assert out.shape == image.shape and np.allclose(out.affine, image.affine, atol=1e-4), kind
            answer = np.asarray(out.dataobj) > 0
            assert answer.any() and dice(answer, expected[kind]) > 0.99, kind
        # A positive click inside the liver refines the uploaded mask without making it worse: the
        # baseline that learns nothing keeps the upload.
        kept = dice(previous > 0, liver)
        score = dice(np.asarray(nib.load(refined).dataobj) > 0, liver)
        print(f"refined liver Dice {score:.3f}; uploaded mask {kept:.3f}")
        assert score >= kept - 0.01, (score, kept)

        url = server.url
        # A scribble through the spleen, and the case's label map uploaded with it (label_map): the
        # answer is the in-process pipeline's to the scribble's clicks, minus the other segments.
        line = [[int(v) for v in region_centre(largest_component(spleen))]]
        line.append([line[0][0], line[0][1], int(np.argwhere(spleen)[:, 2].max())])
        label_map_file = str(tmp_path / "label_map.nii.gz")
        other = np.where(truth == DEFAULT_LABELS["spleen"], 0, truth).astype(np.uint8)
        nib.save(nib.Nifti1Image(other, image.affine), label_map_file)
        scribbled, params = client.infer(
            "prompt", "case_008", {"text": "spleen", "foreground_scribbles": [line], "label_map": True}, label_in=label_map_file
        )
        assert params["excluded_voxels"] == int((other > 0).sum()) and params["previous_mask"] is None
        answer = np.asarray(nib.load(scribbled).dataobj) > 0
        clicks = parse_prompt({"foreground_scribbles": [line]}, truth.shape, labels, matcher)[0].positive
        wanted = pipeline(stored_image, Prompt(positive=clicks, label=classes["spleen"]))[0] & (other == 0)
        assert answer.any() and not answer[other > 0].any() and dice(answer, wanted) > 0.99
        # The plugin's scribbles panel (the prompt_scribbles task): its whole segmentation uploaded
        # with label_info; the scribble segments become clicks, the selected segment (here empty) is
        # the target and every other segment is never claimed.
        assert info["models"]["prompt_scribbles"]["type"] == "scribbles"
        segmentation = np.where(truth == DEFAULT_LABELS["liver"], 1, 0).astype(np.uint8)
        stroke = np.zeros(truth.shape, bool)
        stroke[tuple(np.argwhere(spleen)[:: max(1, int(spleen.sum()) // 20)].T)] = True  # dabs across the spleen
        segmentation[stroke] = 3
        segmentation[0:4, 0:4, 0] = 4  # a background dab in the corner
        info_segments = [{"name": "liver", "id": 1}, {"name": "spleen", "id": 2}, {"name": "foreground_scribbles", "id": 3},
                         {"name": "background_scribbles", "id": 4}]
        scribbles_file = str(tmp_path / "scribbles.nii.gz")
        nib.save(nib.Nifti1Image(segmentation, image.affine), scribbles_file)
        painted, params = client.infer(
            "prompt_scribbles", "case_008", {"roi": [], "label_info": info_segments, "selected_label_name": "spleen"},
            label_in=scribbles_file,
        )
        assert params["target"] == "spleen" and params["excluded_voxels"] == int((segmentation == 1).sum())
        prompt = Prompt(positive=scribble_mask_clicks(segmentation, 3), negative=scribble_mask_clicks(segmentation, 4),
                        label=classes["spleen"])
        assert params["scribble_clicks"] == [len(prompt.positive), len(prompt.negative)]
        wanted = pipeline(stored_image, prompt)[0] & (segmentation != 1)
        answer = np.asarray(nib.load(painted).dataobj) > 0
        assert answer.any() and not answer[segmentation == 1].any() and dice(answer, wanted) > 0.99

        # A lasso and a 2D box on one slice through the spleen (SegLoop's own forms): each the
        # in-process pipeline's answer to the same drawn prompt.
        k = int(np.argwhere(spleen)[:, 2].mean())
        cross = np.argwhere(spleen[:, :, k])
        (i0, j0), (i1, j1) = cross.min(0), cross.max(0)
        polygon = [[int(i0), int(j0), k], [int(i1), int(j0), k], [int(i1), int(j1), k], [int(i0), int(j1), k]]
        for form, request in (("lasso", {"lasso": polygon}), ("box_2d", {"box": [polygon[0], polygon[2]]})):
            drawn = parse_prompt(request, truth.shape, labels, matcher)[0]
            wanted = pipeline(stored_image, drawn)[0]
            path, params = client.infer("prompt", "case_008", request)
            answer = np.asarray(nib.load(path).dataobj) > 0
            assert params["target"] is None and params["roi_mm"] is not None, form
            assert np.array_equal(answer, wanted) or dice(answer, wanted) > 0.99, form
        bad = [
            ({"lasso": [[1, 1, 1], [5, 1, 1], [5, 5, 2]]}, 400, "one slice"),
            ({"text": "spleen", "scribbles_mask": True}, 400, "scribble mask"),
            ({"foreground_scribbles": [[[1, 2]]]}, 400, "[i, j, k]"),
            ({"text": "spleen", "label_map": True}, 400, "no label map was uploaded"),
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
        with open(f"{trained_prompt}/ground_truth/case_009.nii.gz", "rb") as f:
            r = requests.put(f"{url}/datastore/label", params={"image": "case_009", "tag": "final"}, files={"label": ("case_009.nii.gz", f)})
        assert r.status_code == 200, r.text

        def second_version():
            versions = requests.get(f"{url}/segloop/models/prompt", timeout=30).json()["versions"]
            return versions if len(versions) >= 2 and versions[-1]["status"] in ("promoted", "kept") else None

        versions = wait_for(second_version, timeout=420, every=3, what="a second prompt model version")
        assert "case_009" in versions[-1]["new_labels"]
