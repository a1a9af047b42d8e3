"""An example facerec plugin: a tiny convolutional backbone and a `facerec tiny-info` command.

Install it with `pip install -e examples/facerec-example-plugin`, then:

    facerec plugins
    facerec embed face.png --backbone tiny --pretrained none --detector none
"""

from __future__ import annotations

import click
import torch
from torch import nn
from torch.nn import functional

from facerec.plugin import InputRecipe, WeightFile, hookimpl


class TinyNet(nn.Module):
    """Three strided convolutions and a linear layer: 64x64 face in, 128-d unit vector out."""

    def __init__(self, embedding_size: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embedding = nn.Linear(64, embedding_size)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return functional.normalize(self.embedding(self.features(faces)), dim=1)


class TinyBackbone:
    """What facerec needs to know about the network (see facerec.contract.parts.Backbone)."""

    # How a detected face becomes this network's input: facerec's `box` aligner cuts the box with 8
    # pixels of margin at 64x64; the core then orders channels BGR and standardizes each with its own
    # mean and std (Caffe's ImageNet values), so `forward` receives ready numbers.
    recipe = InputRecipe(
        size=64,
        aligner="box",
        aligner_options={"margin": 8},
        mean=(104.0, 117.0, 123.0),
        std=(58.4, 57.1, 57.4),
        channels="BGR",
    )
    embedding_size = 128

    def __init__(self) -> None:
        # Named downloadable weights, e.g. {"v1": WeightFile(url, "tiny-v1.pt", sha256)}, the name used
        # when the user names none, and each named weights' same-person distance between unit
        # embeddings (identify's default threshold). This example publishes none, so users pass
        # --weights FILE or --pretrained none, and --threshold when identifying.
        self.pretrained: dict[str, WeightFile] = {}
        self.default_pretrained: str | None = None
        self.thresholds: dict[str, float] = {}

    def build(self, state_dict=None) -> nn.Module:
        network = TinyNet(self.embedding_size)
        if state_dict is not None:
            try:
                network.load_state_dict(state_dict)
            except RuntimeError as error:
                raise ValueError(str(error).splitlines()[0]) from None
        return network

    def for_inference(self, module: nn.Module) -> nn.Module:
        return module.eval()


@hookimpl
def register_backbones(register):
    register("tiny", TinyBackbone)


@hookimpl
def register_commands(cli):
    @cli.command(name="tiny-info")
    def tiny_info():
        """Show the size of the tiny backbone."""
        parameters = sum(p.numel() for p in TinyBackbone().build().parameters())
        click.echo(f"tiny: {parameters} parameters, {TinyBackbone.recipe.size}px in, 128-d out")
