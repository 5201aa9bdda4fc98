"""PilotNet: the paper's layer sizes, parameter count and output shape."""

from __future__ import annotations

import pytest
import torch

from edgematrix.errors import ModelError
from edgematrix.models import create_model, families
from edgematrix.models.pilotnet import PilotNet


def test_registered_and_builds_from_matrix_shape() -> None:
    assert "pilotnet" in families
    model = create_model("pilotnet", [1, 3, 66, 200])
    assert isinstance(model, PilotNet)
    assert model.color == "yuv"


def test_paper_architecture_and_parameter_count() -> None:
    model = PilotNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (24, (5, 5), (2, 2)), (36, (5, 5), (2, 2)), (48, (5, 5), (2, 2)), (64, (3, 3), (1, 1)), (64, (3, 3), (1, 1)),
    ]  # fmt: skip
    assert [f.out_features for f in fcs] == [100, 50, 10, 1]
    assert model.flat_features == 64 * 1 * 18  # the 1152 features of the paper's last conv map
    n = sum(p.numel() for p in model.parameters())
    assert n == 252_219  # the paper: "about 250 thousand parameters"


def test_forward_shape_and_normalisation() -> None:
    torch.manual_seed(0)
    model = PilotNet().eval()
    x = torch.rand(3, 3, 66, 200) * 255
    assert model(x).shape == (3, 1)
    # the fixed first layer maps 0..255 pixels to -1..1
    assert model.features[0](torch.tensor([0.0, 127.5, 255.0])).tolist() == pytest.approx([-1.0, 0.0, 1.0])


def test_width_scales_and_other_sizes() -> None:
    tiny = PilotNet(width=0.25)
    assert [m.out_channels for m in tiny.modules() if isinstance(m, torch.nn.Conv2d)] == [6, 9, 12, 16, 16]
    assert PilotNet(input_size=(80, 240))(torch.zeros(1, 3, 80, 240)).shape == (1, 1)
    assert isinstance(PilotNet(activation="elu").features[2], torch.nn.ELU)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"activation": "tanh"}, "activation"), ({"color": "hsv"}, "color"), ({"width": 0}, "width")],
)
def test_bad_params_are_refused(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PilotNet(**params)


def test_too_small_input_and_unknown_param() -> None:
    with pytest.raises(ValueError, match="too small"):
        PilotNet(input_size=(20, 20))
    with pytest.raises(ModelError, match="pilotnet"):
        create_model("pilotnet", [1, 3, 66, 200], depth=18)
