"""The textbook VAE: multilayer-perceptron encoder and decoder over flattened pixels.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014:

    x (B, C*H*W) -> MLP -> (mu, logvar) (B, D) -> z -> MLP -> likelihood params (B, P*H*W)

It only takes images of its configured ``image_size``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import Tensor, nn

from clearvae.errors import ConfigError
from clearvae.models.base import FlatVAE, VAEConfig


@dataclasses.dataclass(frozen=True)
class DenseVAEConfig(VAEConfig):
    kind: Literal["dense"] = "dense"
    hidden: tuple[int, ...] = (512, 256)
    latent_dim: int = 32

    def validate(self) -> None:
        super().validate()
        if self.latent_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ConfigError("latent_dim and every hidden width must be >= 1")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class DenseVAE(FlatVAE):
    config_class = DenseVAEConfig
    config: DenseVAEConfig

    def __init__(self, config: DenseVAEConfig) -> None:
        super().__init__(config)
        h, w = config.image_size
        pixels = h * w
        self.encoder = _mlp([config.image_channels * pixels, *config.hidden, 2 * config.latent_dim])
        self.decoder = _mlp([config.latent_dim, *reversed(config.hidden),
                             self.likelihood.param_channels * pixels])

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        self._check_size(size)
        return (self.config.latent_dim,)

    def _check_size(self, size: tuple[int, int]) -> None:
        if tuple(size) != tuple(self.config.image_size):
            raise ConfigError(
                f"the dense VAE was built for {self.config.image_size[0]}x"
                f"{self.config.image_size[1]} images, got {size[0]}x{size[1]}: resize the data "
                "(mode=resize) or use the convolutional VAE, which takes any size"
            )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_size(x.shape[-2:])
        mu, logvar = self.encoder((2 * x - 1).flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        self._check_size(size)
        return self.decoder(z).view(z.shape[0], -1, *self.config.image_size)
