"""Model sources: a registered family, a user's own module (``factory = "package.module:function"``), each
optionally with a checkpoint of trained weights, or an ONNX file (:mod:`edgematrix.core.onnx_io`).

A checkpoint is a state dict saved with ``torch.save`` and loaded with ``torch.load(weights_only=True)``:
tensors and plain containers only, never pickled code. The common wrappers are unwrapped
(``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict": ...}``, Lightning's ``"model."`` prefix
is not guessed: save the module's own ``state_dict()``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from edgematrix.errors import ModelError

#: keys under which training scripts commonly nest the state dict
STATE_KEYS = ("state_dict", "model_state_dict", "model")


def build_module(model_cfg: Any) -> Any:
    """An untrained ``torch.nn.Module`` of the model's family or factory, built with its ``params`` (a factory
    that takes ``input_shape`` gets it too)."""
    from edgematrix.models import create_model

    if model_cfg.family is not None:
        return create_model(model_cfg.family, model_cfg.input_shape, **model_cfg.params)
    if model_cfg.factory is None:
        raise ModelError(f"model {model_cfg.origin!r} is an ONNX file: there is no torch module to build")
    from edgematrix.registry import load_object

    factory = load_object(model_cfg.factory, "factory")
    kwargs = dict(model_cfg.params)
    try:
        accepts = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        accepts = set()
    if "input_shape" in accepts:
        kwargs["input_shape"] = list(model_cfg.input_shape)
    try:
        module = factory(**kwargs)
    except TypeError as e:
        raise ModelError(f"factory {model_cfg.factory!r} rejected its params {sorted(model_cfg.params)}: {e}") from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"factory {model_cfg.factory!r} returned a {type(module).__name__}; it must return a torch.nn.Module"
        )
    return module


def _state_dict(obj: Any, path: Path) -> dict[str, Any]:
    import torch

    for key in STATE_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"checkpoint {path} is not a state dict (name → tensor; also accepted nested under "
            f"{', '.join(repr(k) for k in STATE_KEYS)}); save it with torch.save(model.state_dict(), path)"
        )
    return obj


def load_weights(module: Any, path: Path) -> int:
    """Load the checkpoint ``path`` into ``module`` (``weights_only=True``; every key must match). Returns the
    number of tensors loaded; a file that is not a matching state dict is a :class:`ModelError` naming the
    keys that differ."""
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything but weights, or a corrupt file
        raise ModelError(
            f"checkpoint {path} cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:300]}); it must hold tensors only: torch.save(model.state_dict(), path)"
        ) from None
    state = _state_dict(raw, path)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} of another shape (e.g. {k}: {list(state[k].shape)} in the file, "
                f"{list(own[k].shape)} in the module)"
            )
        raise ModelError(
            f"checkpoint {path} does not fit the module: {'; '.join(parts)}. Check the factory's params "
            "against the ones the checkpoint was trained with"
        )
    module.load_state_dict(state)
    module.eval()
    return len(state)


def output_count(module: Any, input_shape: list[int]) -> int:
    """How many tensors ``module`` returns for a zero input of ``input_shape``."""
    import torch

    with torch.no_grad():
        out = module.eval()(torch.zeros(*input_shape))
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, list | tuple) and all(isinstance(o, torch.Tensor) for o in out):
        return len(out)
    raise ModelError(
        f"the module returns a {type(out).__name__}; edgematrix exports modules that return a tensor or a "
        "tuple of tensors"
    )
