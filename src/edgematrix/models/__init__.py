"""Model families: factories keyed by the ``family`` of a matrix model (registry:
:data:`edgematrix.core.registries.families`; plugins add families through the entry-point group
``edgematrix.families``).

Importing this package imports no torch; each factory imports its module when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgematrix.core.registries import families


def build_ufld_v2(input_shape: list[int], **params: Any) -> Any:
    from edgematrix.models.ufld import UFLDv2

    return UFLDv2(input_size=(input_shape[2], input_shape[3]), **params)


def build_pilotnet(input_shape: list[int], **params: Any) -> Any:
    from edgematrix.models.pilotnet import PilotNet

    return PilotNet(input_size=(input_shape[2], input_shape[3]), **params)


def build_multitask_seg_depth(input_shape: list[int], **params: Any) -> Any:
    from edgematrix.models.multitask import MultiTaskNet

    return MultiTaskNet(input_size=(input_shape[2], input_shape[3]), **params)


def build_ssdlite(input_shape: list[int], **params: Any) -> Any:
    from edgematrix.models.detector import Detector

    return Detector(input_size=(input_shape[2], input_shape[3]), **params)


def create_model(family: str, input_shape: list[int], **params: Any) -> Any:
    """Build an untrained ``torch.nn.Module`` of ``family``; bad params name the family and the valid ones."""
    factory: Callable[..., Any] = families.get(family)
    try:
        return factory(input_shape, **params)
    except TypeError as e:
        from edgematrix.errors import ModelError

        raise ModelError(f"model family {family!r} rejected its params {sorted(params)}: {e}") from None
    except ValueError as e:  # a value the architecture cannot take (e.g. an input size it cannot divide)
        from edgematrix.errors import ModelError

        raise ModelError(
            f"model family {family!r} with input_shape {list(input_shape)} and params {params}: {e}; "
            "fix input_shape / params in matrix/models.toml"
        ) from None
