"""Content identities: sha256 of JSON-able values, files and named tensors.

One definition each, because these hashes are keys (caches, protocol fingerprints, params hashes,
weights identities) and two spellings of one key would silently stop matching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are hashed: `ganpipe prepare` never needs it
    import torch


def json_sha256(obj: object) -> str:
    """sha256 of `obj` as JSON with sorted keys: equal values, equal hash, whatever the dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_sha256() -> str:
    """sha256 of the ganpipe package's Python sources (paths and bytes, in path order): the identity of
    the code that is running, whether installed or in a checkout."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(f"{path.relative_to(package).as_posix()}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes, bytes, in name order): the identity of weights,
    independent of the file they came in (torch.save archives differ byte-wise between saves)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def state_sha256(module: torch.nn.Module) -> str:
    """The identity of a module's weights (its state_dict)."""
    return tensors_sha256(module.state_dict())
