"""Per-image uncertainty and embedding of the automatic model, at the model's working grid.

Shapes: an image is ``[1, H, W, D]`` (one CT channel, RAS, ``target_spacing``); probabilities are
``[C, H, W, D]`` with channel 0 = background; samples are ``[N, C, H, W, D]``.

* **Monte-Carlo dropout** (Gal & Ghahramani): the network's dropout layers stay active at
  inference; ``N`` stochastic forward passes sample the weight posterior.
* **Test-time augmentation** (Wang et al.): the image flipped along a set of axes (MONAI's
  ``Flip``), each prediction flipped back onto the image grid. The ``N`` flip sets are taken in
  turn from the seven non-trivial ones, starting at ``seed``: no random draw, so a volume gets the
  same samples in any process (MONAI's ``TestTimeAugmentation`` draws its flips from a generator
  its DataLoader re-seeds, which gave a process's and a Ray worker's scores different samples).
* From the samples: **predictive entropy** of the mean prediction, **mutual information** (BALD:
  entropy of the mean minus mean entropy, the epistemic part) and the per-voxel **variance**
  summed over channels. Entropies are divided by ``log C`` so they lie in [0, 1].

Volume scores average a voxel map over the *region of interest*: the voxels any sample labels as
foreground (background dominates a CT volume and would drown every case in the same near-zero
score). A model that finds nothing anywhere scores the whole volume.
"""

import contextlib
import math
from typing import Callable, Dict, Iterator

import torch
from monai.transforms import Flip

EPS = 1e-6


@contextlib.contextmanager
def mc_dropout(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluation mode with every dropout layer sampling (restored to plain eval on exit)."""
    network.eval()
    dropouts = [m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    try:
        for m in dropouts:
            m.train()
        yield network
    finally:
        network.eval()


def has_dropout(network: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in network.modules())


def softmax_predictor(network: torch.nn.Module, inferer: Callable, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``batch [B, 1, H, W, D] -> probabilities [B, C, H, W, D]`` (on the CPU)."""

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = inferer(torch.as_tensor(batch).to(device), network)
        return torch.softmax(torch.as_tensor(logits).float(), dim=1).cpu()

    return predict


def mc_dropout_samples(network, image: torch.Tensor, inferer, device, samples: int) -> torch.Tensor:
    """``[N, C, H, W, D]`` probabilities from ``samples`` dropout-sampled passes over ``image [1, H, W, D]``."""
    predict = softmax_predictor(network, inferer, device)
    with mc_dropout(network):
        return torch.cat([predict(image[None]) for _ in range(samples)])


FLIP_SETS = ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))  # spatial axes of each TTA sample


def tta_samples(network, item: Dict, inferer, device, samples: int, seed: int = 0) -> torch.Tensor:
    """``[N, C, H, W, D]`` probabilities of ``item["image"]`` flipped along ``FLIP_SETS[(seed + k) % 7]``
    for sample k, each flipped back onto the image's grid."""
    network.eval()
    predict = softmax_predictor(network, inferer, device)
    image = torch.as_tensor(item["image"])
    out = []
    for k in range(samples):
        flip = Flip(spatial_axis=FLIP_SETS[(seed + k) % len(FLIP_SETS)])
        out.append(torch.as_tensor(flip(predict(torch.as_tensor(flip(image))[None])[0])))
    return torch.stack(out).float()


def entropy(probs: torch.Tensor, dim: int) -> torch.Tensor:
    """Shannon entropy along ``dim`` divided by ``log C``: 0 = certain, 1 = uniform."""
    channels = probs.shape[dim]
    return -(probs * torch.log(probs.clamp_min(EPS))).sum(dim) / math.log(channels)


def entropy_map(probs: torch.Tensor) -> torch.Tensor:
    """``[C, H, W, D]`` probabilities -> ``[H, W, D]`` normalised predictive entropy."""
    return entropy(probs, dim=0)


def region_of_interest(samples: torch.Tensor) -> torch.Tensor:
    """Voxels (``[H, W, D]`` bool) that any sample labels as foreground; everything if none does."""
    foreground = (samples.argmax(dim=1) > 0).any(dim=0)
    return foreground if foreground.any() else torch.ones_like(foreground)


def summarize_samples(samples: torch.Tensor) -> Dict[str, float]:
    """Volume scores of ``[N, C, H, W, D]`` samples: mean over the region of interest of predictive
    ``entropy``, ``mutual_information`` and ``variance``, plus ``foreground_voxels`` (model grid) and
    ``class_voxels``: voxels of each class (channel order, background first) in the mean prediction."""
    mean = samples.mean(dim=0)
    predictive = entropy(mean, dim=0)
    expected = entropy(samples, dim=1).mean(dim=0)
    variance = samples.var(dim=0, unbiased=False).sum(dim=0) if samples.shape[0] > 1 else torch.zeros_like(predictive)
    roi = region_of_interest(samples)
    return {
        "entropy": float(predictive[roi].mean()),
        "mutual_information": float((predictive - expected).clamp_min(0)[roi].mean()),
        "variance": float(variance[roi].mean()),
        "foreground_voxels": int((samples.argmax(dim=1) > 0).any(dim=0).sum()),
        "class_voxels": torch.bincount(mean.argmax(dim=0).flatten(), minlength=mean.shape[0]).tolist(),
    }
