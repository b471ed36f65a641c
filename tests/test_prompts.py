import os
import tempfile
"""Prompt model pieces: IJK <-> model-space geometry, dense encoding, request parsing, text
matching, simulated clicks, the network and the zoom-out-zoom-in pipeline.

The pipeline tests use fixed rules instead of a trained network ("segment whatever the prompt
channel marks"): their answer is known in the model's RAS grid, so a mirrored, shifted or
resized mapping of clicks or of the result shows up as a wrong mask on the input grid.
"""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from segloop.data.phantom import generate_case
from segloop.data.sample import save_nifti
from segloop.errors import ClientError
from segloop.metrics.dice import dice
from segloop.infers.prompt import PromptInfer
from segloop.labels import DEFAULT_LABELS
from segloop.networks.prompt import PROMPT_PRESETS, PromptSegNet
from segloop.prompts.encoding import Prompt, encode_prompts, to_grid, transform_points
from segloop.prompts.memory import ClickMemory
from segloop.prompts.refine import local_update
from segloop.prompts.request import MAX_SCRIBBLE_CLICKS, parse_prompt
from segloop.prompts.simulation import jittered_box, next_click, region_centre
from segloop.prompts.text import LabelMatcher, clauses, laterality, parse_vocabulary
from segloop.prompts.zoom import Grid, ZoomOutZoomIn, click_tissue_hu, merge_overlapping, ras_grid, resample, sub_grid, world_bounds

LABELS = dict(DEFAULT_LABELS)
MATCHER = LabelMatcher(parse_vocabulary(None, list(LABELS)))
PRESET = PROMPT_PRESETS["prompt_cpu"]


class ChannelRule(torch.nn.Module):
    """Logits = +10 where prompt channel ``channel`` exceeds 0.5, -10 elsewhere (input [B, 5, ...])."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel

    def forward(self, x, label=None):
        return 20 * (x[:, 1 + self.channel : 2 + self.channel] > 0.5).float() - 10


def case(index):
    image, label, affine, spec = generate_case("p", seed=5, index=index)
    return MetaTensor(torch.as_tensor(image[None].astype(np.float32)), affine=torch.as_tensor(affine)), label, affine, spec


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_click_in_ijk_lands_on_the_same_organ_in_model_space(index):
    image, label, affine, spec = case(index)
    liver = label == LABELS["liver"]
    click = region_centre(liver)
    lo, hi = world_bounds(affine, label.shape)
    grid = ras_grid(lo, hi, PRESET.coarse_spacing)
    mapped = to_grid(Prompt(positive=[click]), affine, grid.affine)
    model_label = resample(torch.as_tensor(label[None], dtype=torch.float32), affine, grid, mode="nearest")[0]
    channels = encode_prompts(mapped, grid.shape)
    peak = np.unravel_index(int(torch.argmax(channels[0])), grid.shape)
    assert int(model_label[peak]) == LABELS["liver"], spec["orientation"]
    # and back: model voxel -> IJK is the inverse mapping
    back = transform_points(mapped.positive, grid.affine, affine)[0]
    assert np.allclose(back, click, atol=1e-6)


def test_box_corners_stay_ordered_after_an_axis_flip():
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])
    prompt = to_grid(Prompt(box=((2, 3, 4), (10, 12, 8))), lps, np.eye(4))
    lo, hi = np.asarray(prompt.box[0]), np.asarray(prompt.box[1])
    assert (lo <= hi).all()
    assert np.allclose(lo, [-20, -24, 12]) and np.allclose(hi, [-4, -6, 24])


def test_encoding_channels():
    prompt = Prompt(positive=[(5, 5, 5)], negative=[(20, 20, 20)], box=((2, 2, 2), (6, 7, 8)), label=2)
    ch = encode_prompts(prompt, (32, 32, 32), previous=torch.ones(32, 32, 32))
    assert ch.shape == (4, 32, 32, 32)
    assert float(ch[0, 5, 5, 5]) == pytest.approx(1.0) and float(ch[0, 20, 20, 20]) < 1e-3
    assert float(ch[1, 20, 20, 20]) == pytest.approx(1.0)
    assert int(ch[2].sum()) == 5 * 6 * 7 and float(ch[2, 6, 7, 8]) == 1.0 and float(ch[2, 7, 7, 8]) == 0.0
    assert float(ch[3].min()) == 1.0
    assert float(encode_prompts(Prompt(positive=[(99, 0, 0)]), (8, 8, 8))[0].sum()) == 0.0  # outside: dropped


# -- requests ------------------------------------------------------------------------------------
SHAPE = (64, 48, 20)


def test_deepgrow_request_of_the_upstream_plugin():
    prompt, notes = parse_prompt(
        {"label": "spleen", "foreground": [[10, 11, 3]], "background": [[40, 20, 5]]}, SHAPE, LABELS, MATCHER
    )
    assert prompt.positive == [(10, 11, 3)] and prompt.negative == [(40, 20, 5)]
    assert prompt.label == 2 and notes["target"] == "spleen"


def test_deepedit_request_points_keyed_by_label():
    request = {"label": "kidney", "kidney": [[5, 5, 5]], "liver": [[30, 30, 10]], "background": [[1, 1, 1]]}
    prompt, _ = parse_prompt(request, SHAPE, LABELS, MATCHER)
    assert prompt.positive == [(5, 5, 5)]
    assert sorted(prompt.negative) == [(1, 1, 1), (30, 30, 10)]
    assert prompt.label == 3


def test_box_roi_and_text():
    prompt, notes = parse_prompt({"box": [[30, 40, 10], [10, 5, 2]], "text": "renal tumour"}, SHAPE, LABELS, MATCHER)
    assert prompt.box == ((10, 5, 2), (30, 40, 10)) and prompt.label == 4 and notes["text_matched"] == "tumor"
    roi, _ = parse_prompt({"roi": [10, 30, 5, 40, 2, 10]}, SHAPE, LABELS, MATCHER)
    assert roi.box == prompt.box and roi.label == 0


def test_non_contiguous_labels_use_class_order():
    prompt, _ = parse_prompt({"text": "tumor"}, SHAPE, {"liver": 1, "tumor": 7}, LabelMatcher(parse_vocabulary(None, ["liver", "tumor"])))
    assert prompt.label == 2


@pytest.mark.parametrize(
    "request_, status, words",
    [
        ({"foreground": [[64, 0, 0]]}, 422, "outside the image"),
        ({"foreground": [[-3, 0, 0]]}, 422, "outside the image"),
        ({"foreground": [[1, 2]]}, 400, "[i, j, k]"),
        ({"foreground": "1,2,3"}, 400, "list of"),
        ({"foreground": [[1, "a", 2]]}, 400, "[i, j, k]"),
        ({"box": [[1, 2, 3]]}, 400, "two corners"),
        ({"roi": [1, 2, 3]}, 400, "i0, i1"),
        ({"background": [[1, 1, 1]]}, 400, "at least one foreground click"),
        ({}, 400, "at least one foreground click"),
        ({"label": "pancreas"}, 422, "not known"),
        ({"text": "pancreas"}, 422, "known labels"),
        ({"text": "organ"}, 422, "ambiguous"),
        ({"foreground": [[1, 1, 1]] * 101}, 400, "at most"),
        ({"lasso": [[1, 1, 1], [5, 5, 1]]}, 400, "at least 3"),
        ({"lasso": [[1, 1, 1], [5, 1, 1], [5, 5, 2]]}, 400, "one slice"),
        ({"lasso": [[1, 1, 1], [5, 1, 1], [9, 1, 1]]}, 400, "one slice"),  # a line, no area
        ({"lasso": [[1, 1, 1], [99, 1, 1], [5, 5, 1]]}, 422, "outside the image"),
        ({"lasso": "1,2,3"}, 400, "closed polygon"),
    ],
)
def test_bad_prompts_get_clear_4xx(request_, status, words):
    with pytest.raises(ClientError) as e:
        parse_prompt(request_, SHAPE, LABELS, MATCHER)
    assert e.value.status_code == status and words in e.value.message, e.value.message


def test_unknown_segment_name_with_clicks_is_ignored_not_fatal():
    prompt, notes = parse_prompt({"label": "Segment_1", "foreground": [[3, 3, 3]]}, SHAPE, LABELS, MATCHER)
    assert prompt.label == 0 and "ignored" in notes["label_prompt"]


# -- text ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, label",
    [("Liver", "liver"), ("hepar", "liver"), ("the LEFT kidney", "kidney"), ("renal tumour", "tumor"),
     ("splenic tissue", "spleen"), ("a lesion in the kidney", "tumor"), ("hepatic parenchyma", "liver")],
)
def test_text_prompts_resolve_to_labels(text, label):
    assert MATCHER.resolve(text) == label


def test_unknown_text_names_known_labels_and_closest_matches():
    with pytest.raises(ClientError) as e:
        MATCHER.resolve("brain")
    assert e.value.status_code == 422
    assert "liver" in e.value.message and "closest" in e.value.message


def test_vocabulary_from_conf():
    vocabulary = parse_vocabulary('{"liver": {"synonyms": ["foie"]}}', list(LABELS))
    assert LabelMatcher(vocabulary).resolve("Foie") == "liver"
    with pytest.raises(ValueError, match="unknown labels"):
        parse_vocabulary('{"pancreas": {"synonyms": []}}', list(LABELS))
    with pytest.raises(ValueError, match="file not found"):
        parse_vocabulary("/nonexistent/vocabulary.json", list(LABELS))
    # A description is one sentence or several; each is matched on its own.
    vocabulary = parse_vocabulary('{"tumor": {"description": "a cyst"}}', list(LABELS))
    assert vocabulary["tumor"]["description"] == ["a cyst"] and len(vocabulary["spleen"]["description"]) == 3
    matcher = LabelMatcher(parse_vocabulary('{"spleen": {"description": ["the organ that loves jazz", "x"]}}', list(LABELS)))
    assert ("spleen", "the organ that loves jazz") in matcher.phrases and ("spleen", "x") in matcher.phrases


def test_phrases_are_matched_to_description_clauses_and_the_named_side():
    """A description sentence of several facts is also matched clause by clause, and a phrase that
    names one side of the body never matches a description of the other side."""
    sentence = "the largest gland of the body, which makes bile, stores glycogen and detoxifies the blood"
    assert {"the largest gland of the body", "makes bile", "stores glycogen", "detoxifies the blood"} <= set(clauses([sentence]))
    assert laterality("soft organ under the LEFT ribs") == "left" and laterality("right-sided organ") == "right"
    assert laterality("left and right kidneys") is None and laterality("the leftover rightsizing") is None
    sides = {"liver": {"description": "the solid organ in the right upper abdomen", "synonyms": []},
             "spleen": {"description": "the solid organ in the left upper abdomen", "synonyms": []}}
    matcher = LabelMatcher(parse_vocabulary(sides, ["liver", "spleen"]))
    assert matcher.resolve("a solid organ of the left upper abdomen") == "spleen"
    assert matcher.resolve("a solid organ of the right upper abdomen") == "liver"
    with pytest.raises(ClientError, match="ambiguous"):
        matcher.resolve("a solid organ of the upper abdomen")  # no side named: the two are as close


def test_held_out_text_phrases_resolve_through_the_descriptions():
    """The eval's phrases written before the descriptions grew to several sentences: most resolve to
    their own label and none to another (a refusal is allowed: the user is asked to be clearer)."""
    from segloop_bench.interactive import TEXT_PHRASES

    resolved = {}
    for label, phrases in TEXT_PHRASES.items():
        for phrase in phrases[2:]:
            try:
                resolved[phrase] = (label, MATCHER.resolve(phrase))
            except ClientError:
                resolved[phrase] = (label, None)
    assert all(got in (label, None) for label, got in resolved.values()), resolved
    assert sum(label == got for label, got in resolved.values()) >= 0.75 * len(resolved), resolved


# -- simulation ----------------------------------------------------------------------------------
def test_next_click_goes_to_the_centre_of_the_largest_error():
    target = np.zeros((30, 30, 30), bool)
    target[5:25, 5:25, 5:25] = True
    prediction = target.copy()
    prediction[5:25, 5:25, 5:12] = False  # a large miss
    prediction[26:29, 26:29, 26:29] = True  # a small false positive
    (voxel, positive) = next_click(prediction, target)
    assert positive and target[voxel] and not prediction[voxel]
    assert 8 <= voxel[0] <= 21 and 8 <= voxel[1] <= 21  # inside the missed slab, away from its border
    prediction = target.copy()
    prediction[0:4, :, :] = True
    voxel, positive = next_click(prediction, target)
    assert not positive and prediction[voxel] and not target[voxel]
    assert next_click(target, target) is None


def test_jittered_box_stays_in_the_image():
    mask = np.zeros((20, 20, 20), bool)
    mask[0:5, 15:20, 8:12] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        lo, hi = jittered_box(mask, rng, jitter=0.3)
        assert all(0 <= a <= b <= 19 for a, b in zip(lo, hi))


# The simulation and encoding work on the region (a click's blob, a region's box) instead of the whole
# window, for speed; these compare them with the plain whole-volume computation they replace.
def _random_regions(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(int(v) for v in rng.integers(3, 28, 3))
        region = ndimage.binary_dilation(rng.random(shape) < rng.uniform(0.002, 0.05), iterations=int(rng.integers(0, 4)))
        yield shape, region, rng


def test_region_centre_is_the_whole_volume_distance_maximum():
    for shape, region, _ in _random_regions(150):
        if not region.any():
            continue
        # The voxel farthest from the border, the volume edge counting as border; ties: first in C order.
        distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
        expected = np.unravel_index(np.argmax(distance), shape)
        assert region_centre(region) == tuple(int(v) for v in expected)


def test_click_blobs_are_the_whole_grid_gaussian_blur_of_the_clicks():
    from monai.networks.layers import GaussianFilter

    for shape, _, rng in _random_regions(60, seed=1):
        clicks = [tuple(rng.uniform(-4, s + 4) for s in shape) for _ in range(int(rng.integers(1, 5)))]
        clicks.append(clicks[0])  # the same voxel twice is one click
        impulses = torch.zeros((1, 1, *shape))
        for c in clicks:
            idx = tuple(int(round(v)) for v in c)
            if all(0 <= i < s for i, s in zip(idx, shape)):
                impulses[(0, 0, *idx)] = 1.0
        expected = GaussianFilter(3, sigma=3.0)(impulses)[0, 0]
        expected = expected / expected.max() if expected.max() > 0 else expected
        got = encode_prompts(Prompt(positive=clicks), shape)[0]
        assert torch.allclose(got, expected, atol=1e-6), float((got - expected).abs().max())


def test_halved_labels_are_each_blocks_majority_class():
    from segloop.trainers.prompt_interaction import PromptInteraction, present_classes

    interaction = PromptInteraction((8, 8, 8), num_labels=4, seed=0)
    for shape, region, rng in _random_regions(100, seed=2):
        label = (rng.integers(1, 5, shape) * region).astype(np.int64)
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(label), 5).permute(3, 0, 1, 2).float()
        share = torch.nn.functional.avg_pool3d(one_hot[None], 2)[0]
        share[0] -= 1e-3  # a structure wins a tie with background
        assert np.array_equal(interaction._halve_label(label), share.argmax(0).numpy())
        assert present_classes(label) == [int(c) for c in np.unique(label) if c > 0]


# -- network -------------------------------------------------------------------------------------
def test_network_shapes_and_label_conditioning():
    torch.manual_seed(0)
    net = PromptSegNet(num_labels=4, init_filters=8, blocks_down=(1, 1, 1), feature_size=8).eval()
    x = torch.rand(2, 5, 32, 32, 16)
    with torch.no_grad():
        out = net(x, label=torch.tensor([1, 3]))
        same = net(x, label=torch.tensor([1, 1]))
    assert out.shape == (2, 1, 32, 32, 16)
    assert torch.allclose(out[0], same[0]) and not torch.allclose(out[1], same[1])


def test_network_answers_several_label_queries_from_one_pass():
    torch.manual_seed(0)
    net = PromptSegNet(num_labels=4, init_filters=8, blocks_down=(1, 1, 1), feature_size=8).eval()
    x = torch.rand(2, 5, 32, 32, 16)
    with torch.no_grad():
        every = net(x, label=torch.tensor([[1, 2, 3, 4], [2, -1, -1, -1]]))
        spleen = net(x, label=torch.tensor([2, 2]))
    assert every.shape == (2, 4, 32, 32, 16)
    assert torch.allclose(every[0, 1], spleen[0, 0], atol=1e-5) and torch.allclose(every[1, 0], spleen[1, 0], atol=1e-5)


def test_prompt_loss_leaves_padding_queries_out_and_absent_structures_to_cross_entropy():
    from monai.losses import DiceLoss

    from segloop.trainers.prompt import PromptLoss

    torch.manual_seed(0)
    pred = torch.randn(2, 3, 8, 8, 8)
    target = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    target[0, 2] = 0  # a label absent from the view
    target[1, 1:] = -1  # item 1 asked one query only
    loss = PromptLoss()(pred, target)
    used, present = [(0, 0), (0, 1), (0, 2), (1, 0)], [(0, 0), (0, 1), (1, 0)]
    pick = lambda t, items: torch.stack([t[b, k] for b, k in items])[:, None]  # noqa: E731
    expected = torch.nn.functional.binary_cross_entropy_with_logits(pick(pred, used), pick(target, used))
    expected = expected + DiceLoss(sigmoid=True, batch=False)(pick(pred, present), pick(target, present))
    assert torch.allclose(loss, expected)
    pred[1, 1:] += 100.0  # whatever the padding queries predict
    assert torch.allclose(PromptLoss()(pred, target), loss)
    pred[0, 2] = -20.0  # an absent label predicted absent costs (almost) nothing
    assert PromptLoss()(pred, target) < loss


def test_training_items_ask_for_one_structure_or_for_every_label():
    from segloop.trainers.prompt_interaction import PADDING, PromptInteraction

    label = np.zeros((24, 24, 24), np.int64)
    label[2:10, 2:10, 2:10] = 1
    label[14:20, 14:20, 14:20] = 3
    interaction = PromptInteraction((24, 24, 24), num_labels=4, seed=0)
    kinds = set()
    for _ in range(60):
        prompt, classes, targets = interaction.prompt(label)
        assert len(classes) == 4 and targets.shape == (4, 24, 24, 24)
        if classes == [1, 2, 3, 4]:  # every label at once: no spatial prompt, each its own mask
            kinds.add("all")
            assert not prompt.has_spatial
            assert all(np.array_equal(targets[c - 1], label == c) for c in classes)
        else:
            kinds.add("one")
            assert classes[1:] == [PADDING] * 3 and (targets[1:] == PADDING).all()
            assert classes[0] == prompt.label
            assert prompt.label in (0, 1, 3) and set(np.unique(targets[0])) <= {0.0, 1.0} and targets[0].any()
            if prompt.label:
                assert np.array_equal(targets[0], label == prompt.label)
    assert kinds == {"all", "one"}


def test_region_share_turns_label_free_clicks_into_image_regions():
    """With ``region_share`` a label-free click item targets a homogeneous image region outside the
    labels (SAM-style); at 0, the default, no item does and the random sequence is the old one."""
    from segloop.trainers.prompt_interaction import PromptInteraction

    label = np.zeros((32, 32, 32), np.int64)
    label[2:10, 2:10, 2:10] = 1
    image = np.full((32, 32, 32), 0.2, np.float32)
    image[14:26, 14:26, 14:26] = 0.8  # an unlabelled bright block: a structure nobody labelled
    regions = 0
    interaction = PromptInteraction((32, 32, 32), num_labels=4, seed=0, region_share=1.0)
    for _ in range(120):  # a click item 15% of the time, a block voxel drawn in about a third of those
        prompt, classes, targets = interaction.prompt(label, image)
        if classes[0] == 0 and prompt.positive and not (targets[0] * (label > 0)).any() and targets[0].sum() != (label == 1).sum():
            regions += 1
            assert targets[0][tuple(int(v) for v in prompt.positive[0])] == 1
            block = np.zeros(label.shape, bool)
            block[14:26, 14:26, 14:26] = True
            assert dice(targets[0] > 0, block) > 0.8  # the block (the background is too large a region)
    assert regions >= 2
    plain = [PromptInteraction((32, 32, 32), num_labels=4, seed=0, region_share=r) for r in (0.0, 0.0)]
    draws = [[(p.prompt(label, image)[1], p.prompt(label)[1]) for _ in range(20)] for p in plain]
    assert draws[0] == draws[1]


def test_corrections_train_clicks_with_and_without_the_previous_mask(monkeypatch):
    """Inference sends every click so far with an empty mask channel, so simulated corrections must
    train that input too, not only clicks plus the model's last answer."""
    from types import SimpleNamespace

    from segloop.trainers import prompt_interaction

    inputs = []

    def recording_encode(prompt, shape, previous=None):
        inputs.append((len(prompt.positive) + len(prompt.negative), previous is not None))
        return encode_prompts(prompt, shape, previous)

    monkeypatch.setattr(prompt_interaction, "encode_prompts", recording_encode)
    interaction = prompt_interaction.PromptInteraction((16, 16, 16), num_labels=4, max_interactions=2, seed=0)
    final = []

    def step(engine, batch):
        final.extend(inputs[-len(batch["image"]) :])  # the batch the engine trains on
        return batch

    engine = SimpleNamespace(
        state=SimpleNamespace(device=torch.device("cpu")),
        network=None,
        inferer=lambda x, network, label: torch.full((x.shape[0], 1, *x.shape[2:]), -5.0),  # misses everything
        _iteration=step,
    )
    label = torch.zeros(2, 1, 32, 32, 32)
    label[:, 0, 8:24, 8:24, 8:24] = 1
    for _ in range(40):
        interaction(engine, {"image": torch.rand(2, 1, 32, 32, 32), "label": label.clone()})
    corrected = [has_mask for clicks, has_mask in final if clicks >= 2]
    assert corrected and 0 < sum(corrected) < len(corrected)


def test_zoom_in_views_vary_in_size_around_the_window_and_keep_the_structure():
    """Zoom-in regions are as large as their structure, so training views vary: 2/3..4/3 of the
    window a side, multiples of the encoder's size factor; zoom-out views stay one window."""
    from segloop.trainers.prompt_interaction import PromptInteraction

    interaction = PromptInteraction((24, 24, 24), num_labels=4, seed=0, size_multiple=8)
    image = torch.rand(1, 48, 48, 48)
    label = torch.zeros(1, 48, 48, 48)
    label[0, 20:28, 20:28, 20:28] = 2
    sizes = set()
    for _ in range(40):
        size = interaction.view_size(zoom_out=False)
        sizes.add(size)
        assert all(s in (16, 24, 32) for s in size)
        view, target = interaction.view(image, label, size, zoom_out=False)
        assert tuple(view.shape[1:]) == size and target.shape == size and (target == 2).sum() > 0
    assert len(sizes) > 5
    assert interaction.view_size(zoom_out=True) == (24, 24, 24)
    view, target = interaction.view(image, label, (24, 24, 24), zoom_out=True)
    assert tuple(view.shape[1:]) == (24, 24, 24) and (target == 2).sum() == 4**3  # halved


def test_zoom_out_views_keep_the_label_on_the_averaged_image():
    """The halved view averages 2 x 2 x 2 blocks of the image, so its labels must describe the same
    blocks: a structure whose edges fall mid-block is labelled symmetrically, not shifted."""
    from segloop.trainers.prompt_interaction import PromptInteraction

    interaction = PromptInteraction((16, 16, 16), num_labels=4, seed=0)
    label = torch.zeros(1, 32, 32, 32)
    label[0, 5:21, 4:20, 3:19] = 3  # I: half blocks at both ends; J: whole blocks; K: half, then whole
    view, target = interaction.view(label.clone(), label, (16, 16, 16), zoom_out=True)
    labelled, image_inside = target == 3, view[0].numpy() >= 1.5  # at least half of the block is the structure
    assert np.array_equal(labelled, image_inside)
    first, last = np.argwhere(labelled).min(0), np.argwhere(labelled).max(0)
    assert first.tolist() == [2, 2, 1] and last.tolist() == [10, 9, 9]


# -- zoom-out-zoom-in ----------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1])
def test_pipeline_returns_the_prompted_region_on_the_input_grid(index):
    image, label, affine, spec = case(index)
    liver = label == LABELS["liver"]
    lo, hi = (tuple(float(v) for v in c) for c in (np.argwhere(liver).min(0), np.argwhere(liver).max(0)))
    pipeline = ZoomOutZoomIn(ChannelRule(channel=2), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    mask, details = pipeline(image, Prompt(box=(lo, hi)))
    box = np.zeros(label.shape, bool)
    box[int(lo[0]) : int(hi[0]) + 1, int(lo[1]) : int(hi[1]) + 1, int(lo[2]) : int(hi[2]) + 1] = True
    assert mask.shape == label.shape
    assert dice(mask, box) > 0.9, (spec["orientation"], dice(mask, box))
    assert dice(mask[::-1], box) < 0.9 * dice(mask, box)
    assert details["roi_mm"] is not None


def test_five_level_encoder_gets_grids_it_can_take_whole():
    """The GPU preset's encoder halves five times: every grid must be a multiple of 16 (not 8) and
    at least 32 voxels a side."""
    net = PromptSegNet(num_labels=4, init_filters=4, blocks_down=(1, 1, 1, 1, 1), feature_size=4).eval()
    assert net.size_multiple == 16
    image, label, affine, spec = case(1)
    click = region_centre(label == LABELS["liver"])
    mask, details = ZoomOutZoomIn(net, (32, 32, 32), (6.0, 6.0, 6.0), (3.0, 3.0, 3.0))(image, Prompt(positive=[click]))
    assert mask.shape == label.shape
    assert all(s % 16 == 0 for grid in details["fine_grids"] for s in grid)
    # A small region: 16 voxels a side would leave the deepest level 1 voxel, too few to normalise.
    assert ras_grid(np.zeros(3), np.full(3, 10.0), (1.5, 1.5, 1.5), 16).shape == (32, 32, 32)


def test_pipeline_click_blob_sits_on_the_click():
    image, label, affine, spec = case(1)
    click = region_centre(label == LABELS["spleen"])
    pipeline = ZoomOutZoomIn(ChannelRule(channel=0), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    mask, _ = pipeline(image, Prompt(positive=[click]))
    assert mask[click] and 0 < mask.sum() < 2000
    centroid = np.argwhere(mask).mean(0)
    spacing = np.abs(np.diag(affine))[:3]
    assert np.linalg.norm((centroid - np.asarray(click)) * spacing) < 4.0  # mm


class HalfSpaces(torch.nn.Module):
    """A stand-in for a trained prompt model that knows two structures: class 1 is the organ-bright
    voxels of the first half of the grid's first axis, class 2 those of the second half, classes 3
    and 4 nowhere; class 0 (clicks alone) is the click blobs, as ChannelRule(0). Records each
    pass's class queries."""

    num_classes = 5

    def __init__(self):
        super().__init__()
        self.queries = []

    def forward(self, x, label):
        queries = [int(c) for c in torch.as_tensor(label).reshape(-1)]
        self.queries.append(queries)
        first = (torch.arange(x.shape[2]) < x.shape[2] // 2).float().reshape(1, 1, -1, 1, 1).expand_as(x[:, :1])
        organs = ((x[:, :1] > 0.5) & (x[:, :1] < 0.6)).float()  # about 50-90 HU in the default window: liver, spleen
        masks = {0: (x[:, 1:2] > 0.5).float(), 1: first * organs, 2: (1 - first) * organs}
        return torch.cat([20 * masks.get(c, torch.zeros_like(first)) - 10 for c in queries], dim=1)


def half_of(click, affine, shape) -> int:
    """HalfSpaces' class at ``click`` (IJK of the image), read on the zoom-out grid."""
    lo, hi = world_bounds(affine, shape)
    coarse = ras_grid(lo, hi, PRESET.coarse_spacing)
    mapped = to_grid(Prompt(positive=[click]), affine, coarse.affine).positive[0]
    return 1 if round(mapped[0]) < coarse.shape[0] // 2 else 2


def test_a_click_without_a_label_takes_the_label_of_the_structure_under_it():
    """Step 0 of the zoom-out-zoom-in: one label-only zoom-out pass asks for every candidate, and
    the structure under the first positive click becomes the label prompt; a click on none of them,
    a named label, no positive click, or the step switched off leave the prompt as it was."""
    image, label, affine, spec = case(1)
    click = region_centre(label == LABELS["liver"])
    expected = half_of(click, affine, label.shape)
    other_half = next(tuple(int(v) for v in p) for p in np.argwhere(label > 0)[::97] if half_of(tuple(p), affine, label.shape) != expected)
    net = HalfSpaces()
    pipeline = ZoomOutZoomIn(net, PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    mask, details = pipeline(image, Prompt(positive=[click]))
    assert details["label_from_click"] == expected and net.queries[0] == [1, 2, 3, 4]
    assert details["label_probability_at_click"][expected] > 0.99 and details["label_probability_at_click"][3] < 0.01
    assert all(q == [expected] for q in net.queries[1:])  # zoom out and zoom in, with the label
    assert mask.sum() > 10 * pipeline(image, Prompt(positive=[click]), candidates=())[0].sum()  # a half, not a blob
    # The first positive click decides: a later click elsewhere, or a negative one, changes nothing.
    _, details = pipeline(image, Prompt(positive=[click, other_half], negative=[other_half]))
    assert details["label_from_click"] == expected
    net.queries.clear()
    _, details = pipeline(image, Prompt(positive=[click]), candidates=[3 - expected, 3, 4])  # not among the candidates
    assert details["label_from_click"] is None and net.queries[0] == [3 - expected, 3, 4] and net.queries[1] == [0]
    for prompt, options in (
        (Prompt(positive=[click], label=3), {}),  # named
        (Prompt(negative=[click]), {}),  # no positive click
        (Prompt(box=(click, tuple(v + 5 for v in click))), {}),
        (Prompt(positive=[click]), {"candidates": ()}),
    ):
        net.queries.clear()
        _, details = pipeline(image, prompt, **options)
        assert "label_from_click" not in details and len(net.queries[0]) == 1, prompt
    net.queries.clear()
    off = ZoomOutZoomIn(net, PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing, label_from_click=False)
    assert "label_from_click" not in off(image, Prompt(positive=[click]))[1] and net.queries[0] == [0]


def test_every_label_at_once_gives_each_labels_own_answer_from_one_zoom_out_pass():
    """The automatic proposal's path (``segment_labels``): one zoom-out pass with every class query,
    then each class's own zoom-in, gives each class the mask a label prompt alone gets from
    ``__call__`` (its own zoom-out pass), classes found nowhere an empty mask."""
    image, _, _, _ = case(1)
    net = HalfSpaces()
    pipeline = ZoomOutZoomIn(net, PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    masks, timings = pipeline.segment_labels(image, [1, 2, 3, 4])
    assert net.queries[0] == [1, 2, 3, 4] and [1, 2, 3, 4] not in net.queries[1:]  # one pass asked for all
    assert all(len(q) == 1 for q in net.queries[1:]) and {q[0] for q in net.queries[1:]} == {1, 2}  # zoom-ins: 1 and 2 only
    assert set(timings["fine_s"]) == {1, 2, 3, 4} and timings["coarse_s"] >= 0
    for c in (1, 2, 3, 4):
        alone, _ = pipeline(image, Prompt(label=c))
        assert masks[c].shape == alone.shape and masks[c].dtype == bool and np.array_equal(masks[c], alone), c
    assert masks[1].sum() > 100 and masks[2].sum() > 100 and not masks[3].any() and not masks[4].any()
    assert not (masks[1] & masks[2]).any()


def test_a_click_on_other_tissue_inside_a_structure_is_not_given_its_label():
    """A click on a lesion inside an organ's mask is on the mask but not on the organ's tissue: its
    HU (the median around it) is far from the median under the mask, so the organ is not its label."""

    class Block(torch.nn.Module):  # class 1: the block 4..11 of every axis of whatever grid it sees
        num_classes = 2

        def forward(self, x, label):
            mask = torch.zeros_like(x[:, :1])
            mask[:, :, 4:12, 4:12, 4:12] = 1
            return torch.cat([20 * mask - 10 for _ in torch.as_tensor(label).reshape(-1)], dim=1)

    rng = np.random.default_rng(0)
    hu = torch.as_tensor(60 + 10 * rng.standard_normal((1, 16, 16, 16)), dtype=torch.float32)  # an organ, 10 HU noise
    hu[0, 7:10, 7:10, 7:10] = 10.0  # a hypodense lesion inside it
    pipeline = ZoomOutZoomIn(Block(), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    assert pipeline._label_under_click(hu, (5, 5, 5), [1], click_tissue_hu(hu, (5, 5, 5)))[0] == 1
    label, evidence = pipeline._label_under_click(hu, (8, 8, 8), [1], click_tissue_hu(hu, (8, 8, 8)))
    assert label == 0 and evidence["probability"][1] > 0.99 and evidence["tissue_z"][1] > 3
    assert click_tissue_hu(hu, (8, 8, 8)) == 10.0 and abs(click_tissue_hu(hu, (5, 5, 5)) - 60) < 10


def test_the_infer_task_names_the_structure_a_click_was_given(tmp_path):
    """Through the infer task: the answer is named after the label the click was given; a label map
    upload takes its segments out of the candidates; ``label_from_click`` false keeps clicks alone."""
    task, path, (image, label, affine) = rule_infer_task(tmp_path, HalfSpaces())
    click = [int(v) for v in region_centre(label == LABELS["liver"])]
    names = sorted(LABELS, key=LABELS.get)  # class index k is the k-th label by storage index
    expected = names[half_of(tuple(click), affine, label.shape) - 1]
    _, result = task({"image": path, "foreground": [click], "reset_state": True})
    assert result["label_from_click"] == expected and result["label_names"] == {expected: 1}
    assert set(result["label_probability_at_click"]) == set(LABELS)
    _, result = task({"image": path, "foreground": [click], "label": "Segment_1", "reset_state": True})
    assert result["label_from_click"] == expected and result["label_names"] == {"Segment_1": 1}  # the client's segment name
    _, result = task({"image": path, "foreground": [click], "label_from_click": False, "reset_state": True})
    assert "label_from_click" not in result and result["label_names"] == {"structure": 1}
    label_map = np.zeros(image.shape, np.uint8)
    label_map[0, 0, 0] = LABELS[expected]  # the client already has that segment
    upload = upload_tempfile()
    try:
        save_nifti(label_map, affine, upload)
        _, result = task({"image": path, "label": upload, "label_map": True, "foreground": [click], "reset_state": True})
        assert result["label_from_click"] is None and expected not in result["label_probability_at_click"]
    finally:
        os.unlink(upload)


def rule_infer_task(tmp_path, network=None):
    """A PromptInfer over ``network`` (default ChannelRule(0): the mask is the click blobs) and a
    phantom saved as NIfTI: the task, the image path, the phantom (image, label, affine)."""
    image, label, affine, spec = generate_case("p", seed=5, index=1)
    path = str(tmp_path / "img.nii.gz")
    save_nifti(image, affine, path)
    checkpoint = tmp_path / "rule.pt"
    torch.save({"model": {}}, checkpoint)
    task = PromptInfer(
        path=[str(checkpoint)], network=network or ChannelRule(0), labels=LABELS, preset=PRESET, matcher=MATCHER, device="cpu"
    )
    return task, path, (image, label, affine)


def test_infer_task_writes_the_input_grid_and_reports_the_target(tmp_path):
    task, path, (image, label, affine) = rule_infer_task(tmp_path)
    click = [int(v) for v in region_centre(label == LABELS["kidney"])]
    result_file, result = task({"image": path, "label": "kidney", "foreground": [click], "background": []})
    out = nib.load(result_file)
    assert out.shape == image.shape and np.allclose(out.affine, affine, atol=1e-4)
    assert np.asarray(out.dataobj)[tuple(click)] == 1
    assert result["target"] == "kidney" and result["label_names"] == {"kidney": 1}
    with pytest.raises(ClientError) as e:
        task({"image": path, "foreground": [[999, 0, 0]]})
    assert e.value.status_code == 422
    # An uploaded mask is the temporary file MONAI Label writes it to (tmp* in the temporary folder).
    good_previous = upload_tempfile()
    save_nifti(np.asarray(out.dataobj), affine, good_previous)
    _, result = task({"image": path, "label": good_previous, "foreground": [click]})
    assert result["label_names"] == {"structure": 1}  # an uploaded mask's temp path is not a segment name
    assert result["previous_mask"] == "uploaded"
    previous = upload_tempfile()
    save_nifti(np.zeros((4, 4, 4), np.uint8), affine, previous)
    with pytest.raises(ClientError) as e:
        task({"image": path, "label": previous, "text": "kidney"})
    assert e.value.status_code == 422 and "previous mask" in e.value.message
    # Any other file on the server is never read as a previous mask.
    elsewhere = tmp_path / "elsewhere.nii.gz"
    save_nifti(np.zeros((4, 4, 4), np.uint8), affine, str(elsewhere))
    _, result = task({"image": path, "label": str(elsewhere), "text": "kidney"})
    assert result["previous_mask"] is None
    for f in (good_previous, previous):
        os.unlink(f)


def test_a_label_map_upload_keeps_other_segments_out_of_the_answer(tmp_path):
    """With ``label_map`` the uploaded file is the case's label map: the target's voxels are the
    previous mask and the voxels of every other segment are never claimed."""
    task, path, (image, label, affine) = rule_infer_task(tmp_path)  # ChannelRule(0): the answer is the click blobs
    click = [int(v) for v in region_centre(label == LABELS["kidney"])]
    plain, _ = task({"image": path, "text": "kidney", "foreground": [click], "reset_state": True})
    blob = np.asarray(nib.load(plain).dataobj) > 0
    label_map = np.zeros(image.shape, np.uint8)
    label_map[tuple(slice(c, c + 3) for c in click)] = LABELS["spleen"]  # another segment drawn over the click
    label_map[label == LABELS["kidney"]] = LABELS["kidney"]
    label_map[tuple(slice(c, c + 1) for c in click)] = LABELS["spleen"]
    upload = upload_tempfile()
    try:
        save_nifti(label_map, affine, upload)
        result_file, result = task({"image": path, "label": upload, "label_map": True, "text": "kidney", "foreground": [click], "reset_state": True})
        mask = np.asarray(nib.load(result_file).dataobj) > 0
        others = (label_map > 0) & (label_map != LABELS["kidney"])
        assert blob[others].any() and not mask[others].any()  # the blob reached the spleen voxels; the answer does not
        assert result["excluded_voxels"] == int(others.sum()) and result["previous_mask"] == "uploaded"
        assert result["target"] == "kidney" and result["label_names"] == {"kidney": 1}
        # Clicks alone (a structure the label map lacks): every segment is excluded, none is the previous mask.
        _, result = task({"image": path, "label": upload, "label_map": True, "foreground": [click], "reset_state": True})
        assert result["excluded_voxels"] == int((label_map > 0).sum()) and result["previous_mask"] is None
        save_nifti(np.full(image.shape, 9, np.uint8), affine, upload)
        assert_refused(task, {"image": path, "label": upload, "label_map": True, "text": "kidney"}, 422, "[9]")
    finally:
        os.unlink(upload)
    assert_refused(task, {"image": path, "label_map": True, "text": "kidney"}, 400, "label map")


def test_scribbles_become_clicks_along_their_lines():
    shape = (40, 40, 20)
    request = {"foreground_scribbles": [[[2, 2, 5], [12, 2, 5]], [[30, 30, 10]]], "background_scribbles": [[[5, 30, 3], [5, 30, 9]]]}
    prompt, _ = parse_prompt(request, shape, LABELS, MATCHER)
    assert prompt.positive[:11] == [(float(i), 2.0, 5.0) for i in range(2, 13)] and prompt.positive[11] == (30.0, 30.0, 10.0)
    assert prompt.negative == [(5.0, 30.0, float(k)) for k in range(3, 10)]
    long_line, _ = parse_prompt({"foreground_scribbles": [[[0, 0, 0], [39, 0, 0], [39, 39, 19]]]}, shape, LABELS, MATCHER)
    assert len(long_line.positive) == 48 and long_line.positive[0] == (0.0, 0.0, 0.0) and long_line.positive[-1] == (39.0, 39.0, 19.0)
    gaps = np.abs(np.diff(np.asarray(long_line.positive), axis=0)).max(1)
    assert gaps.max() <= 2.0 + 1e-9  # 79 samples thinned to 48: no gap a 3-voxel click blob leaves open
    for bad, status in (({"foreground_scribbles": [[[1, 2]]]}, 400), ({"foreground_scribbles": [[]]}, 400),
                        ({"foreground_scribbles": "a line"}, 400), ({"foreground_scribbles": [[[0, 0, 0], [99, 0, 0]]]}, 422)):
        with pytest.raises(ClientError) as e:
            parse_prompt(bad, shape, LABELS, MATCHER)
        assert e.value.status_code == status, bad


def assert_refused(task, request, status, words):
    """``task(request)`` raises a client error of ``status`` whose message has ``words``."""
    with pytest.raises(ClientError) as e:
        task(request)
    assert e.value.status_code == status and words in e.value.message, e.value.message


def upload_tempfile():
    return tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name


def test_an_empty_answer_says_what_to_do_next(tmp_path):
    task, path, (image, label, affine) = rule_infer_task(tmp_path)  # ChannelRule(0): no clicks, no mask
    result_file, result = task({"image": path, "text": "hepar"})
    assert not np.asarray(nib.load(result_file).dataobj).any() and result["voxels"] == 0
    assert result["message"].startswith("found no liver") and "click" in result["message"]
    click = [int(v) for v in region_centre(label == LABELS["liver"])]
    _, result = task({"image": path, "label": "liver", "foreground": [click], "background": []})
    assert result["voxels"] > 0 and "message" not in result


class FaceRule(torch.nn.Module):
    """Positive only on the last x-plane of whatever grid it sees (the window padding, here)."""

    def forward(self, x, label=None):
        logits = torch.full_like(x[:, :1], -10.0)
        logits[:, :, -1] = 10.0
        return logits


def test_false_positives_in_the_window_padding_do_not_move_the_region_off_the_image():
    # 50 voxels of 4 mm (196 mm) pad to a 40-voxel coarse grid of 6 mm: its last x-plane lies outside the image.
    image = MetaTensor(torch.zeros(1, 50, 50, 30), affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0], dtype=torch.float64)))
    pipeline = ZoomOutZoomIn(FaceRule(), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    mask, details = pipeline(image, Prompt(label=1))
    assert mask.shape == (50, 50, 30) and not mask.any() and details["roi_mm"] is None
    mask, details = pipeline(image, Prompt(positive=[(49, 25, 15)], label=1))  # a click at the very edge
    assert mask.shape == (50, 50, 30) and details["roi_mm"] is not None



def test_a_label_prompt_keeps_every_part_of_the_class_in_the_region():
    """Both kidneys are one label: a click on one with the label asks for both; without it, for one."""
    coarse = np.zeros((40, 40, 40), bool)
    coarse[5:12, 5:12, 5:12] = True  # one kidney
    coarse[28:35, 5:12, 5:12] = True  # the other
    coarse[20, 30, 30] = True  # a speck of noise
    pipeline = ZoomOutZoomIn(ChannelRule(channel=0), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    with_label = pipeline._region(coarse, Prompt(positive=[(8, 8, 8)], label=3))
    assert with_label[8, 8, 8] and with_label[31, 8, 8] and not with_label[20, 30, 30]
    clicked_only = pipeline._region(coarse, Prompt(positive=[(8, 8, 8)]))
    assert clicked_only[8, 8, 8] and not clicked_only[31, 8, 8]


def test_overlapping_boxes_merge_and_distant_ones_stay_apart():
    a, b, c = (np.zeros(3), np.full(3, 10.0)), (np.full(3, 8.0), np.full(3, 20.0)), (np.full(3, 18.0), np.full(3, 30.0))
    far = (np.full(3, 100.0), np.full(3, 110.0))
    merged = merge_overlapping([a, far, c, b])  # a touches b, b touches c: one chain, whatever the order
    assert len(merged) == 2
    chain = min(merged, key=lambda box: box[0][0])
    assert np.allclose(chain[0], 0) and np.allclose(chain[1], 30)


def test_each_distant_part_of_a_class_gets_its_own_region():
    """Both kidneys under a label prompt: two regions of about a kidney each, not one box across the
    spine; parts closer than twice the margin share one."""
    pipeline = ZoomOutZoomIn(ChannelRule(channel=0), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing, margin_mm=10)
    coarse = Grid(np.diag([6.0, 6.0, 6.0, 1.0]), (40, 40, 40))
    parts = np.zeros((40, 40, 40), int)
    parts[5:12, 5:12, 5:12] = 1  # one kidney
    parts[28:35, 5:12, 5:12] = 2  # the other, 96 mm away
    lo, hi = world_bounds(coarse.affine, coarse.shape)
    rois = pipeline._rois(parts, coarse, Prompt(positive=[(8, 8, 8)], label=3), None, coarse.affine, lo, hi)
    assert len(rois) == 2
    assert all(np.all(h - l <= 6 * 6 + 2 * 10) for l, h in rois)  # 7 voxels of 6 mm + the margins
    parts[13:27, 5:12, 5:12] = 3  # a bridge: one structure
    assert len(pipeline._rois(parts, coarse, Prompt(label=3), None, coarse.affine, lo, hi)) == 1


def test_two_distant_clicks_are_segmented_in_two_regions_on_the_input_grid():
    image, label, affine, spec = case(1)
    kidneys, count = ndimage.label(label == LABELS["kidney"])
    largest = np.argsort(np.bincount(kidneys.ravel())[1:])[-2:] + 1  # the two kidneys, not a tumour's sliver
    clicks = [region_centre(kidneys == k) for k in largest]
    pipeline = ZoomOutZoomIn(ChannelRule(channel=0), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    mask, details = pipeline(image, Prompt(positive=clicks))
    assert len(details["fine_grids"]) == 2 and len(details["roi_mm"]) == 2
    assert all(mask[c] for c in clicks)
    assert ndimage.label(mask)[1] == 2


def test_a_window_of_the_input_grid_resamples_like_the_whole_grid():
    image, label, affine, spec = case(1)  # stored LPS or oblique spacing: the window must follow the affine
    source = ras_grid(*world_bounds(affine, label.shape), (3.0, 3.0, 3.0))
    volume = resample(torch.as_tensor(label[None] == LABELS["liver"], dtype=torch.float32), affine, source)
    lo, hi = world_bounds(source.affine, source.shape)
    lo, hi = lo + 0.3 * (hi - lo), hi - 0.3 * (hi - lo)
    window, grid = sub_grid(affine, label.shape, lo, hi)
    whole = resample(volume, source.affine, Grid(affine, label.shape))[0].numpy()
    part = resample(volume, source.affine, grid)[0].numpy()
    assert part.shape == whole[window].shape and 0 < part.size < 0.5 * whole.size
    assert np.allclose(part, whole[window], atol=1e-4)


class RecordingRule(ChannelRule):
    """ChannelRule that keeps the previous-mask channel of every grid it is given."""

    def __init__(self, channel: int):
        super().__init__(channel)
        self.mask_channels = []

    def forward(self, x, label=None):
        self.mask_channels.append(x[0, 4].clone())
        return super().forward(x, label)


def test_a_previous_mask_widens_the_region_but_never_fills_the_mask_channel():
    """A refinement may take back what the previous mask covered, so the region holds it; the mask
    channel stays empty in every pass, as in training's first pass (a sent binary mask there made
    positive clicks shrink the result, the coarse probability there was copied into the answer)."""
    image, label, affine, spec = case(1)
    spleen, liver = label == LABELS["spleen"], label == LABELS["liver"]
    click = region_centre(spleen)
    network = RecordingRule(channel=0)
    pipeline = ZoomOutZoomIn(network, PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    _, alone = pipeline(image, Prompt(positive=[click]))
    _, refined = pipeline(image, Prompt(positive=[click]), previous=liver.astype(np.float32))
    fine_voxels = [sum(int(np.prod(g)) for g in d["fine_grids"]) for d in (alone, refined)]
    assert fine_voxels[1] > 2 * fine_voxels[0]  # the liver's box joined the regions
    assert len(network.mask_channels) >= 4  # zoom-out and at least one zoom-in pass, twice
    assert all(not channel.any() for channel in network.mask_channels)


# -- local refinement ----------------------------------------------------------------------------
def test_a_negative_click_removes_only_what_lies_near_it():
    """The proposal shrank the whole organ; only the part within the radius of the click goes."""
    previous = np.zeros((60, 60, 60), bool)
    previous[10:50, 10:50, 10:50] = True
    proposal = np.zeros_like(previous)
    proposal[14:46, 14:46, 14:46] = True  # a 4-voxel shell gone everywhere
    updated = local_update(previous, proposal, Prompt(negative=[(12, 30, 30)]), (1.0, 1.0, 1.0), radius_mm=10)
    assert not updated[12, 30, 30] and not updated[10, 25, 35]  # near the click: removed
    assert updated[47, 30, 30] and updated[30, 12, 30]  # far from it: the previous mask stays
    assert proposal.sum() < updated.sum() < previous.sum()


def test_a_positive_click_adds_the_part_it_touches_not_a_distant_blob():
    previous = np.zeros((60, 60, 60), bool)
    previous[10:30, 10:30, 10:30] = True
    proposal = previous.copy()
    proposal[30:36, 10:30, 10:30] = True  # the miss the click is in
    proposal[50:55, 50:55, 50:55] = True  # a false positive elsewhere
    proposal[10:12] = False  # and a shrink nobody asked for
    updated = local_update(previous, proposal, Prompt(positive=[(33, 20, 20)]), (2.0, 2.0, 2.0), radius_mm=40)
    assert updated[30:36, 10:30, 10:30].all()  # added
    assert not updated[50:55, 50:55, 50:55].any() and updated[10:12, 10:30, 10:30].all()


def test_the_pipeline_refines_a_previous_mask_locally():
    image, label, affine, spec = case(1)
    liver = label == LABELS["liver"]
    far_end = tuple(int(v) for v in np.argwhere(liver)[-1])  # the liver voxel of largest I
    # The rule network segments the click blob only: taken whole it would drop the whole liver.
    pipeline = ZoomOutZoomIn(ChannelRule(channel=0), PRESET.roi_size, PRESET.coarse_spacing, PRESET.fine_spacing)
    click = region_centre(liver)
    mask, details = pipeline(image, Prompt(positive=[click]), previous=liver.astype(np.float32))
    assert details["refinement"] == "local" and (mask == liver).all()  # the blob is inside: nothing changes
    outside = tuple(int(v) for v in np.argwhere(~liver & (label == 0))[0])
    mask, _ = pipeline(image, Prompt(positive=[outside]), previous=liver.astype(np.float32))
    assert mask[outside] and mask[far_end] and mask.sum() > liver.sum()  # added at the click, kept elsewhere


def test_click_memory_hands_back_the_mask_a_longer_click_sequence_extends():
    memory = ClickMemory(capacity=2)
    first = Prompt(positive=[(10, 10, 10)], label=2)
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 5:15] = True
    memory.remember("img", first, mask)
    longer = Prompt(positive=[(10, 10, 10)], negative=[(14, 14, 14)], label=2)
    assert (memory.previous("img", longer) == mask).all()
    assert memory.previous("img", first) is None  # the same clicks again: a fresh answer
    # Clicking again on a clicked voxel (nothing changed there) extends the sequence: the earlier
    # local corrections stay.
    again = Prompt(positive=[(10, 10, 10), (10, 10, 10)], label=2)
    assert (memory.previous("img", again) == mask).all()
    memory.remember("img", again, mask)
    assert memory.previous("img", first) is None  # one of the two clicks dropped: another sequence
    assert (memory.previous("img", Prompt(positive=[(10, 10, 10)] * 3, label=2)) == mask).all()
    memory.remember("img", first, mask)
    assert memory.previous("img", Prompt(positive=[(3, 3, 3)], label=2)) is None  # another sequence
    assert memory.previous("img", Prompt(positive=[(10, 10, 10), (3, 3, 3)], label=1)) is None  # another label
    assert memory.previous("other", longer) is None
    memory.forget("img")
    assert memory.previous("img", longer) is None
    for name in ("a", "b", "c"):  # least recently used first out
        memory.remember(name, first, mask)
    assert memory.previous("a", longer) is None and memory.previous("c", longer) is not None


def test_infer_task_refines_resent_clicks_from_its_last_answer(tmp_path):
    """The plugin resends every click and no mask: the task remembers its last answer."""
    task, path, (image, label, affine) = rule_infer_task(tmp_path)
    first = [int(v) for v in region_centre(label == LABELS["liver"])]
    second = [int(v) for v in region_centre(label == LABELS["spleen"])]
    request = {"image": path, "label": "liver", "foreground": [first], "background": []}
    _, result = task(dict(request))
    assert result["previous_mask"] is None
    _, result = task(dict(request, foreground=[first, second]))
    assert result["previous_mask"] == "remembered" and result["refinement"] == "local"
    _, result = task(dict(request, foreground=[first, second, second], reset_state=True))
    assert result["previous_mask"] is None and result["refinement"] is None


def test_a_lasso_and_a_2d_box_become_clicks_on_their_slice():
    shape = (40, 40, 20)
    prompt, _ = parse_prompt({"lasso": [[5, 5, 7], [15, 5, 7], [15, 15, 7], [5, 15, 7]]}, shape, LABELS, MATCHER)
    positive, negative = np.asarray(prompt.positive), np.asarray(prompt.negative)
    assert prompt.box is None and len(positive) == MAX_SCRIBBLE_CLICKS and len(negative) == MAX_SCRIBBLE_CLICKS
    assert (positive[:, 2] == 7).all() and positive[:, :2].min() >= 5 and positive[:, :2].max() <= 15
    assert positive[:, 0].max() - positive[:, 0].min() >= 8  # spread over the inside, not bunched in one row
    # Negatives: the ring two voxels outside the outline, on the slice.
    assert (negative[:, 2] == 7).all()
    outside = np.maximum(np.maximum(5 - negative[:, :2], negative[:, :2] - 15), 0).sum(1)  # city-block distance to the square
    assert (outside == 2).all(), outside
    # A triangle on an i-slice: clicks on i = 3 only.
    prompt, _ = parse_prompt({"lasso": [[3, 0, 0], [3, 30, 0], [3, 0, 15]]}, shape, LABELS, MATCHER)
    assert {p[0] for p in prompt.positive + prompt.negative} == {3.0}
    # A 2D box (corners equal along k): one positive at its centre and the ring around it; a 3D
    # box stays a box.
    prompt, _ = parse_prompt({"box": [[4, 6, 9], [20, 26, 9]]}, shape, LABELS, MATCHER)
    assert prompt.box is None and prompt.positive == [(12.0, 16.0, 9.0)] and len(prompt.negative) == MAX_SCRIBBLE_CLICKS
    assert all(p[2] == 9.0 and not (4 <= p[0] <= 20 and 6 <= p[1] <= 26) for p in prompt.negative)
    prompt, _ = parse_prompt({"box": [[4, 6, 9], [20, 26, 10]]}, shape, LABELS, MATCHER)
    assert prompt.box == ((4.0, 6.0, 9.0), (20.0, 26.0, 10.0)) and not prompt.positive


def test_a_scribble_mask_upload_becomes_clicks(tmp_path):
    from monailabel.interfaces.tasks.infer_v2 import InferType

    task, path, (image, label, affine) = rule_infer_task(tmp_path)  # ChannelRule(0): the answer is the positive click blobs
    kidney = label == LABELS["kidney"]
    centre = [int(v) for v in region_centre(kidney)]
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[centre[0] - 3 : centre[0] + 4, centre[1], centre[2]] = 3  # a foreground stroke, 7 voxels
    scribbles[0:60, 0, 0] = 2  # a background stroke, 60 voxels: thinned to MAX_SCRIBBLE_CLICKS
    upload = upload_tempfile()
    try:
        save_nifti(scribbles, affine, upload)
        result_file, result = task({"image": path, "label": upload, "scribbles_mask": True, "reset_state": True})
        mask = np.asarray(nib.load(result_file).dataobj) > 0
        assert result["scribble_clicks"] == [7, 48] and mask[tuple(centre)] and result["previous_mask"] is None
        # The upstream plugin's scribbles panel: its whole segmentation with label_info; the selected
        # segment is the previous mask and target, the other segments are never claimed.
        plugin = PromptInfer(path=task.path, network=ChannelRule(0), labels=LABELS, preset=PRESET, matcher=MATCHER,
                             device="cpu", infer_type=InferType.SCRIBBLES)
        segmentation = np.zeros(image.shape, np.uint8)
        segmentation[kidney] = 2
        segmentation[tuple(slice(c - 2, c - 1) for c in centre)] = 1  # a "liver" voxel right beside the stroke
        segmentation[scribbles == 3] = 3
        save_nifti(segmentation, affine, upload)
        info = [{"name": "liver", "id": 1}, {"name": "kidney", "id": 2}, {"name": "foreground_scribbles", "id": 3},
                {"name": "background_scribbles", "id": 4}]
        result_file, result = plugin({"image": path, "label": upload, "label_info": info, "selected_label_name": "kidney", "roi": []})
        mask = np.asarray(nib.load(result_file).dataobj) > 0
        assert result["target"] == "kidney" and result["previous_mask"] == "uploaded" and result["scribble_clicks"] == [7, 0]
        assert result["excluded_voxels"] == 1 and not mask[segmentation == 1].any() and mask[tuple(centre)]
        assert_refused(plugin, {"image": path, "label": upload, "label_info": info[:2], "selected_label_name": "kidney"},
                       400, "foreground_scribbles")
        save_nifti(np.zeros(image.shape, np.uint8), affine, upload)
        assert_refused(task, {"image": path, "label": upload, "scribbles_mask": True}, 422, "no foreground or background scribble")
    finally:
        os.unlink(upload)
    assert_refused(task, {"image": path, "scribbles_mask": True, "text": "kidney"}, 400, "scribble mask")
