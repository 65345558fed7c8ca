"""Running torch-fidelity (the peer implementation) on exactly our images and weights, for the
agreement test and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from ganpipe.evaluation.inception import read_state_dict


class ImageTensors(torch.utils.data.Dataset):
    """uint8 [N, 3, H, W] images as the map-style dataset torch-fidelity's inputs accept."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def weights_for_torch_fidelity(weights_path: str | Path, dst: str | Path) -> Path:
    """A copy of the weights that torch-fidelity's strict loader accepts: a missing classifier head is
    filled with zeros. FID, KID and PR use the 2048-d pool features before the head, so no compared
    number changes; IS would be wrong, so never compute IS with this file."""
    sd = read_state_dict(weights_path)
    sd.setdefault("fc.weight", torch.zeros(1008, 2048))
    sd.setdefault("fc.bias", torch.zeros(1008))
    torch.save(sd, dst)
    return Path(dst)
