"""The infer task returns its label map on the input's exact grid, for RAS and LPS inputs.

The network here is a fixed per-voxel rule (a known function of intensity), not a trained model:
its output is predictable in the model's RAS/3 mm space, so any error in reorientation,
resampling or inversion shows up as a shifted, mirrored or resized result.
"""

import os

import nibabel as nib
import numpy as np
import pytest
import torch

from segloop.data.phantom import generate_case
from segloop.data.sample import save_nifti
from segloop.errors import ClientError
from segloop.metrics.dice import dice_per_label
from segloop.infers import SegmentationInfer
from segloop.labels import DEFAULT_LABELS


class IntensityRule(torch.nn.Module):
    """Channel 1 ('liver') wins where the normalised intensity exceeds 0.5, background elsewhere."""

    def forward(self, x):
        logits = torch.zeros((x.shape[0], 5, *x.shape[2:]), dtype=x.dtype)
        logits[:, 1] = 20 * (x[:, 0] - 0.5)
        return logits


def infer_task(tmp_path, roi=(64, 64, 64), spacing=(3.0, 3.0, 3.0), rule=IntensityRule):
    checkpoint = tmp_path / "rule.pt"
    torch.save({"model": rule().state_dict()}, checkpoint)
    return SegmentationInfer(
        path=[str(checkpoint)], network=rule(), labels=DEFAULT_LABELS,
        target_spacing=spacing, roi_size=roi, device="cpu",
    )


@pytest.mark.parametrize("orientation_index", [0, 1, 2, 3])
def test_output_has_input_shape_affine_and_unmirrored_content(tmp_path, orientation_index):
    image, label, affine, spec = generate_case("geo", seed=21, index=orientation_index)
    # Encode the liver as the only bright tissue, so the rule's answer is the true liver mask.
    liver = label == DEFAULT_LABELS["liver"]
    encoded = np.where(liver, 200, -1000).astype(np.int16)
    path = str(tmp_path / "geo.nii.gz")
    save_nifti(encoded, affine, path)

    result_file, result = infer_task(tmp_path)({"image": path})
    out = nib.load(result_file)
    pred = np.asarray(out.dataobj)
    assert out.shape == image.shape
    assert np.allclose(out.affine, affine, atol=1e-4)
    assert set(np.unique(pred)) <= {0, 1}
    dice = dice_per_label(pred, liver.astype(np.uint8), {"liver": 1})["liver"]
    mirrored = dice_per_label(pred[::-1], liver.astype(np.uint8), {"liver": 1})["liver"]
    assert dice > 0.9, (spec["orientation"], dice)
    assert mirrored < 0.5 * dice
    assert result["model"] == "segmentation"
    os.unlink(result_file)


class ConvolutionRule(torch.nn.Module):
    """IntensityRule as a 1x1x1 convolution; records whether each pass ran it on oneDNN."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 5, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1] = 20.0
            self.conv.bias[1] = -10.0
        self.on_onednn = []
        # Registered first, this hook sees the convolution's raw output, before the task's hooks.
        # A bound method, so the task's deep copy of the network records into its own list.
        self.conv.register_forward_hook(self._record)

    def _record(self, module, args, output):
        self.on_onednn.append(output.is_mkldnn)

    def forward(self, x):
        return self.conv(x)


def test_a_sheared_grid_comes_back_exactly(tmp_path):
    """A scanner's gantry tilt gives a non-orthogonal affine. The label map is written on exactly
    that grid (MONAI Label's default ITK writer coerces the direction matrix to orthogonal)."""
    image, label, affine, _ = generate_case("tilt", seed=21, index=0)
    sheared = affine.copy()
    sheared[1, 2] += 0.2 * affine[2, 2]  # y moves with the slice index: a tilted gantry
    liver = label == DEFAULT_LABELS["liver"]
    path = str(tmp_path / "tilt.nii.gz")
    save_nifti(np.where(liver, 200, -1000).astype(np.int16), sheared, path)

    result_file, _ = infer_task(tmp_path)({"image": path})
    out = nib.load(result_file)
    assert out.shape == image.shape
    assert np.allclose(out.affine, sheared, atol=1e-4), out.affine - sheared
    assert dice_per_label(np.asarray(out.dataobj), liver.astype(np.uint8), {"liver": 1})["liver"] > 0.9


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_cpu_inference_runs_the_convolutions_on_onednn_with_the_same_answer(tmp_path):
    image, label, affine, _ = generate_case("geo", seed=21, index=1)
    liver = label == DEFAULT_LABELS["liver"]
    path = str(tmp_path / "geo.nii.gz")
    save_nifti(np.where(liver, 200, -1000).astype(np.int16), affine, path)
    task = infer_task(tmp_path, rule=ConvolutionRule)
    result_file, _ = task({"image": path})
    served = task._networks["cpu"][0]
    assert served.on_onednn and all(served.on_onednn)
    pred = np.asarray(nib.load(result_file).dataobj)
    assert dice_per_label(pred, liver.astype(np.uint8), {"liver": 1})["liver"] > 0.9
    os.unlink(result_file)


def test_orientations_covered_by_the_cases_above():
    assert {generate_case("g", 21, i)[3]["orientation"] for i in range(4)} == {"RAS", "LPS"}


def test_untrained_model_answers_409(tmp_path):
    task = SegmentationInfer(
        path=[str(tmp_path / "missing.pt")], network=IntensityRule(), labels=DEFAULT_LABELS,
        target_spacing=(3, 3, 3), roi_size=(64, 64, 64), device="cpu",
    )
    with pytest.raises(ClientError) as e:
        task({"image": "whatever.nii.gz"})
    assert e.value.status_code == 409 and "not trained yet" in e.value.message


def test_corrupt_upload_answers_400(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(ClientError) as e:
        infer_task(tmp_path)({"image": str(bad)})
    assert e.value.status_code == 400 and "NIfTI" in e.value.message


def test_channels_innermost_keeps_values_and_metadata_and_the_same_argmax():
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from segloop.transforms import ChannelsInnermostd

    torch.manual_seed(0)
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    probs = MetaTensor(torch.rand(5, 12, 10, 7), affine=affine)
    moved = ChannelsInnermostd(keys="pred")({"pred": probs})["pred"]
    assert moved.stride()[0] == 1 and moved.shape == probs.shape  # channels innermost in memory
    assert torch.equal(moved.as_tensor(), probs.as_tensor()) and torch.equal(moved.affine, affine)
    argmax = lambda t: AsDiscreted(keys="pred", argmax=True)({"pred": t})["pred"]  # noqa: E731
    assert torch.equal(argmax(moved).as_tensor(), argmax(probs).as_tensor())
