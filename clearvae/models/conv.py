"""Convolutional VAE with residual blocks and optional self-attention at the lowest resolution.

The latent is a spatial map, so one model takes images of any size (inputs are padded to a
multiple of 2**levels and outputs cropped back):

    x (B, C, H, W) -> stem -> [ResBlock x n, down] x levels -> ResBlock (+ attention)
        -> 1x1 conv -> (mu, logvar) (B, Z, H/2^L, W/2^L) -> z
    z -> 1x1 conv -> ResBlock (+ attention) -> [up, ResBlock x n] x levels -> params (B, P, H, W)

Depth grows with ``blocks_per_level``; ``widths`` gives the channels at each resolution.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import Tensor, nn

from clearvae.errors import ConfigError
from clearvae.models.base import FlatVAE, VAEConfig
from clearvae.models.layers import ResBlock, SelfAttention, norm, pad_to_multiple


@dataclasses.dataclass(frozen=True)
class ConvVAEConfig(VAEConfig):
    kind: Literal["conv"] = "conv"
    widths: tuple[int, ...] = (32, 64, 128)  # channels at full, 1/2, 1/4 ... resolution
    blocks_per_level: int = 1
    latent_channels: int = 8
    attention: bool = True

    def validate(self) -> None:
        super().validate()
        if len(self.widths) < 1 or min(self.widths) < 1:
            raise ConfigError(f"widths must be a non-empty list of positive ints: {self.widths}")
        if self.blocks_per_level < 1 or self.latent_channels < 1:
            raise ConfigError("blocks_per_level and latent_channels must be >= 1")

    @property
    def levels(self) -> int:
        """Number of 2x downsamplings between the image and the latent."""
        return len(self.widths) - 1


class ConvVAE(FlatVAE):
    config_class = ConvVAEConfig
    config: ConvVAEConfig

    def __init__(self, config: ConvVAEConfig) -> None:
        super().__init__(config)
        w, n = config.widths, config.blocks_per_level
        enc: list[nn.Module] = [nn.Conv2d(config.image_channels, w[0], 3, padding=1)]
        for i in range(config.levels):
            enc += [ResBlock(w[i]) for _ in range(n)]
            enc.append(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1))
        enc += self._bottleneck(w[-1])
        enc += [norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], 2 * config.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(config.latent_channels, w[-1], 1)]
        dec += self._bottleneck(w[-1])
        for i in reversed(range(config.levels)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(w[i + 1], w[i], 3, padding=1)]
            dec += [ResBlock(w[i]) for _ in range(n)]
        params = self.likelihood.param_channels
        dec += [norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], params, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _bottleneck(self, channels: int) -> list[nn.Module]:
        blocks: list[nn.Module] = [ResBlock(channels)]
        if self.config.attention:
            blocks += [SelfAttention(channels), ResBlock(channels)]
        return blocks

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        f = 2**self.config.levels
        return (self.config.latent_channels, -(-size[0] // f), -(-size[1] // f))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(pad_to_multiple(2 * x - 1, 2**self.config.levels))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: Tensor, size: tuple[int, int]) -> Tensor:
        params = self.decoder(z)
        return params[..., : size[0], : size[1]]


