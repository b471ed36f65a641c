"""Image embeddings from the automatic model's encoder, for diversity-based case selection.

The whole preprocessed volume (``[1, H, W, D]``, RAS, ``target_spacing``, HU window in [0, 1]) is
resized to the network's ``roi_size`` so the encoder sees the full field of view once; its deepest
features are averaged over space (UNETR: the ViT tokens; SegResNet: the last encoder stage;
DynUNet: the bottleneck; SwinUNETR: the last Swin stage) and
scaled to unit length, so Euclidean distances between embeddings lie in [0, 2].
"""

from typing import List, Sequence

import torch
from monai.networks.nets import UNETR, DynUNet, SegResNet, SwinUNETR
from monai.transforms import Resize


def encoder_features(network: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``[B, 1, *roi] -> [B, F]`` spatially averaged deepest encoder features."""
    if isinstance(network, UNETR):
        tokens, _ = network.vit(batch)  # [B, tokens, hidden]
        return tokens.mean(dim=1)
    if isinstance(network, SegResNet):
        deepest, _ = network.encode(batch)  # [B, F, h, w, d]
        return deepest.mean(dim=(2, 3, 4))
    if isinstance(network, SwinUNETR):
        return network.swinViT(batch, network.normalize)[-1].mean(dim=(2, 3, 4))
    if isinstance(network, DynUNet):
        captured = []
        hook = network.bottleneck.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            network(batch)
        finally:
            hook.remove()
        return captured[0].mean(dim=(2, 3, 4))
    raise TypeError(f"no encoder embedding for {type(network).__name__}")


def image_embedding(network: torch.nn.Module, image: torch.Tensor, roi_size: Sequence[int], device) -> List[float]:
    """Unit-length embedding (a list of floats) of ``image [1, H, W, D]``."""
    resized = Resize(spatial_size=tuple(roi_size), mode="trilinear")(torch.as_tensor(image).float())
    network.eval()
    with torch.no_grad():
        features = encoder_features(network, torch.as_tensor(resized)[None].to(device))[0].float().cpu()
    return (features / features.norm().clamp_min(1e-8)).tolist()
