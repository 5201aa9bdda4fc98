"""PilotNet: NVIDIA's end-to-end steering CNN (Bojarski et al., 2016, "End to End Learning for Self-Driving Cars").

Input: one 66×200 frame, 3 planes (YUV in the paper; RGB works the same), pixel values 0..255.
A fixed normalization layer (x / 127.5 - 1, as the paper's hard-coded first layer), five
convolutions (24, 36, 48 filters 5×5 stride 2; 64, 64 filters 3×3 stride 1, no padding), then
fully connected layers 100-50-10 and one output: the steering command (normalised, e.g. the
Udacity simulator's [-1, 1]). At 66×200 the last convolution is 64×1×18 = 1152 features and the
network has 252,219 parameters (the paper: "about 250 thousand").

``width`` scales every layer's channel / neuron count (tests build tiny models from the same code);
``activation`` picks ReLU (default; folds into int8 zero points) or ELU (common in Keras ports);
``color`` records the colour space of the frames it takes (``yuv`` as in the paper, or ``rgb``): the
data loader converts frames to it.
"""

from __future__ import annotations

import torch
from torch import nn

#: The paper's channel counts and fully connected sizes.
CONV_CHANNELS = (24, 36, 48, 64, 64)
FC_SIZES = (100, 50, 10)
INPUT_SIZE = (66, 200)


class Normalize(nn.Module):
    """Fixed (not trained) ``x * scale + shift``: 0..255 pixels to -1..1."""

    def __init__(self, scale: float = 1 / 127.5, shift: float = -1.0) -> None:
        super().__init__()
        self.scale = scale
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    raise ValueError(f"activation {name!r} not supported; choose 'relu' or 'elu'")


class PilotNet(nn.Module):
    """PilotNet steering regressor: ``(N, 3, H, W)`` pixels 0..255 → ``(N, 1)`` steering."""

    def __init__(
        self,
        input_size: tuple[int, int] = INPUT_SIZE,
        width: float = 1.0,
        activation: str = "relu",
        color: str = "yuv",
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if color not in ("yuv", "rgb"):
            raise ValueError(f"color {color!r} not supported; choose 'yuv' or 'rgb'")
        self.color = color
        height, w = input_size
        chans = [max(1, round(c * width)) for c in CONV_CHANNELS]
        fcs = [max(1, round(n * width)) for n in FC_SIZES]
        specs = [(5, 2), (5, 2), (5, 2), (3, 1), (3, 1)]
        layers: list[nn.Module] = [Normalize()]
        cin = 3
        for cout, (k, s) in zip(chans, specs, strict=True):
            layers += [nn.Conv2d(cin, cout, k, s), _act(activation)]
            cin = cout
            height, w = (height - k) // s + 1, (w - k) // s + 1
            if height < 1 or w < 1:
                raise ValueError(f"input_size {input_size} is too small for PilotNet's five convolutions")
        self.features = nn.Sequential(*layers)
        self.flat_features = cin * height * w
        head: list[nn.Module] = [nn.Flatten()]
        fin = self.flat_features
        for n in fcs:
            head += [nn.Linear(fin, n), _act(activation)]
            fin = n
        head.append(nn.Linear(fin, 1))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
