"""The params each endpoint accepts: types, ranges, server settings dropped, paths refused."""

import pytest

from segloop.errors import ClientError
from segloop.server.request_params import check_batch_params, check_infer_params, check_train_params, parse_info, parse_params

LABELS = {"liver": 1, "spleen": 2}
TRAINER_CONFIG = {"max_epochs": 50, "val_split": 0.2, "incremental": False, "max_seconds": 0, "lr": 1e-4,
                  "lr_schedule": ["constant", "cosine"], "device": "cpu", "nice": 10, "dataset": ["PersistentDataset"]}


def refused(call, *args):
    with pytest.raises(ClientError) as e:
        call(*args)
    assert 400 <= e.value.status_code < 500
    return e.value.message


@pytest.mark.parametrize("raw", ["{oops", "[1]", "3", '"x"', "null"])
def test_params_must_be_a_json_object(raw):
    assert "JSON object" in refused(parse_params, raw)


def test_empty_params_are_an_empty_object_and_info_is_capped():
    assert parse_params("") == {} and parse_params(None) == {}
    assert "at most" in refused(parse_info, '{"x": "' + "a" * 70000 + '"}')


def test_infer_params_of_the_automatic_model():
    accepted, ignored = check_infer_params({"uncertainty": "true", "sw_overlap": 0.99, "device": "cuda:7", "client_id": "x"}, False, LABELS, "segmentation")
    assert accepted == {"uncertainty": True} and ignored == ["client_id", "device", "sw_overlap"]
    assert "'image'" in refused(check_infer_params, {"image": "/etc/passwd"}, False, LABELS, "segmentation")
    assert "uncertainty" in refused(check_infer_params, {"uncertainty": "maybe"}, False, LABELS, "segmentation")
    assert "'foreground'" in refused(check_infer_params, {"foreground": [[1, 2, 3]]}, False, LABELS, "segmentation")


def test_infer_params_of_the_prompt_model():
    accepted, _ = check_infer_params({"label": "liver", "foreground": [[1, 2, 3]], "spleen": [[4, 5, 6]], "reset_state": False}, True, LABELS, "prompt")
    assert accepted["label"] == "liver" and accepted["spleen"] == [[4, 5, 6]]
    for path in ("/etc/hosts", "..\\x", "mask.nii.gz"):
        assert "names a segment" in refused(check_infer_params, {"label": path}, True, LABELS, "prompt")
    assert "text" in refused(check_infer_params, {"text": "x" * 500}, True, LABELS, "prompt")
    assert "'session'" in refused(check_infer_params, {"session": {}}, True, LABELS, "prompt")
    assert check_infer_params({"label_from_click": "false"}, True, LABELS, "prompt")[0] == {"label_from_click": False}
    assert "label_from_click" in refused(check_infer_params, {"label_from_click": "maybe"}, True, LABELS, "prompt")


def test_train_params_follow_the_trainer_config():
    config = dict(TRAINER_CONFIG, name="model")
    accepted, ignored = check_train_params({"max_epochs": 3, "lr_schedule": "cosine", "seed": 0, "nice": -20, "device": "cuda", "name": "../x"}, config, "segmentation")
    assert accepted == {"max_epochs": 3, "lr_schedule": "cosine", "seed": 0} and ignored == ["device", "name", "nice"]
    assert "max_epochs" in refused(check_train_params, {"max_epochs": "x"}, TRAINER_CONFIG, "segmentation")
    assert "max_epochs" in refused(check_train_params, {"max_epochs": 1.5}, TRAINER_CONFIG, "segmentation")
    assert "lr_schedule" in refused(check_train_params, {"lr_schedule": "bogus"}, TRAINER_CONFIG, "segmentation")
    assert "val_split" in refused(check_train_params, {"val_split": 3}, TRAINER_CONFIG, "segmentation")
    assert "'train_ds'" in refused(check_train_params, {"train_ds": "/etc"}, TRAINER_CONFIG, "segmentation")
    assert "incremental" in refused(check_train_params, {"incremental": "perhaps"}, TRAINER_CONFIG, "segmentation")
    assert check_train_params({"max_seconds": 2.5}, TRAINER_CONFIG, "segmentation")[0] == {"max_seconds": 2.5}


def test_per_class_train_params_need_one_non_negative_number_per_class():
    config = dict(TRAINER_CONFIG, crop_ratios="", class_weights="")
    for value in ([1, 1, 1, 1, 4], "[1,1,1,1,4]", "1,1,1,1,4"):
        assert check_train_params({"crop_ratios": value}, config, "segmentation", 5)[0] == {"crop_ratios": "[1.0, 1.0, 1.0, 1.0, 4.0]"}
    assert check_train_params({"class_weights": ""}, config, "segmentation", 5)[0] == {"class_weights": ""}
    for bad in ([1, 1, 4], [1, 1, 1, 1, -1], [0, 0, 0, 0, 0], ["a"] * 5, [True] * 5, "[1,", {"x": 1}, 3, []):
        assert "class_weights" in refused(check_train_params, {"class_weights": bad}, config, "segmentation", 5)


def test_batch_params():
    assert check_batch_params({"label_tag": "original", "max_workers": 1}, "segmentation")[0] == {"label_tag": "original", "max_workers": 1}
    assert "label_tag" in refused(check_batch_params, {"label_tag": "../x"}, "segmentation")
