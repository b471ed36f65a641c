import pytest

from segloop.configs.options import parse_options
from segloop.labels import channel_map, parse_labels
from segloop.networks import PRESETS


def test_defaults_follow_the_network_preset():
    o = parse_options({})
    assert o.network == "unetr_cpu" and o.models == ["segmentation", "prompt"] and o.prompt_network == "prompt_cpu"
    assert o.roi_size == PRESETS["unetr_cpu"].roi_size and o.target_spacing == PRESETS["unetr_cpu"].target_spacing
    assert o.labels == {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}
    o = parse_options({"network": "segresnet", "target_spacing": "[1.5, 1.5, 3]", "roi_size": "[64, 64, 32]"})
    assert o.target_spacing == (1.5, 1.5, 3.0) and o.roi_size == (64, 64, 32)


def test_iteration_budgets_for_every_model_or_per_model():
    o = parse_options({})
    assert o.first_run_max_iterations == {"segmentation": 0, "prompt": 0}  # time budgets only
    o = parse_options({"retrain_max_iterations": "12", "first_run_max_iterations": '{"segmentation":100,"prompt":20}'})
    assert o.retrain_max_iterations == {"segmentation": 12, "prompt": 12}
    assert o.first_run_max_iterations == {"segmentation": 100, "prompt": 20}


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"network": "vnet"}, "unknown network"),
        ({"roi_size": "[60, 64, 64]"}, "multiples of 16"),
        ({"target_spacing": "[1, 2]"}, "JSON list of 3"),
        ({"target_spacing": "[0, 1, 1]"}, "positive"),
        ({"hu_window": "[300, -100]"}, "low < high"),
        ({"checkpoint": "https://example.org/model.pt"}, "never downloads"),
        ({"checkpoint": "/nonexistent/model.pt"}, "not found"),
        ({"labels": "{liver: 1}"}, "JSON object"),
        ({"labels": '{"liver": 0}'}, "1..255"),
        ({"labels": '{"liver": 1, "spleen": 1}'}, "unique"),
        ({"max_epochs": "many"}, "integer"),
        ({"retrain_every": "0"}, ">= 1"),
        ({"auto_train": "maybe"}, "true or false"),
        ({"prompt_network": "sam"}, "unknown prompt network"),
        ({"label_vocabulary": '{"pancreas": {"synonyms": []}}'}, "unknown labels"),
        ({"label_vocabulary": "{not json"}, "must be JSON"),
        ({"dropout": "1.5"}, r"\[0, 1\)"),
        ({"mc_samples": "-1"}, ">= 0"),
        ({"assignment_lock_s": "soon"}, "a number"),
        ({"amp": "fp8"}, "auto, float16, off"),
        ({"reads_per_case": "0"}, ">= 1"),
        ({"reads_per_case": "11"}, "1..10"),
        ({"review": "sometimes"}, "true or false"),
        ({"prompt_proposal": "yes"}, "prompt_proposal must be true or false"),
        ({"agreement_threshold": "1.5"}, r"\[0, 1\]"),
        ({"retrain_max_iterations": "-3"}, ">= 0"),
        ({"scoring_workers": "1000"}, "0..256"),
        ({"batch_infer_workers": "300"}, "batch_infer_workers must be 0..256"),
        ({"batch_infer_workers": "two"}, "batch_infer_workers"),
        ({"ray_address": "http://head:6379/x"}, "ray_address"),
        ({"train_nodes": "2"}, "train_rdzv"),
        ({"train_rdzv": "no port"}, "host:port"),
        ({"retrain_max_iterations": '{"segmentation":1.5}'}, "integer >= 0"),
        ({"first_run_max_iterations": '{"deepedit":10}'}, "not served models"),
        ({"first_run_max_iterations": "{oops"}, "JSON object"),
    ],
)
def test_bad_options_say_what_is_wrong(conf, message):
    with pytest.raises(ValueError, match=message):
        parse_options(conf)


def test_labels_sorted_by_index_and_channel_map_for_sparse_maps():
    labels = parse_labels('{"tumor": 4, "liver": 1}')
    assert list(labels) == ["liver", "tumor"]
    assert channel_map(labels) == {0: 0, 1: 1, 4: 2}


def test_every_option_is_documented_in_the_readme():
    import os

    from segloop.configs.options import OPTIONS

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    missing = [key for key in OPTIONS if f"| `{key}` |" not in readme]
    assert not missing, f"README's options table lacks {missing}"
