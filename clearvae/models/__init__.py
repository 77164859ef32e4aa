"""Model families, looked up by the ``kind`` stored in their config."""

from __future__ import annotations

from typing import Any

from clearvae.errors import ConfigError, ModelFileError
from clearvae.models.base import VAE, FlatVAE, LossTerms, VAEConfig, VAEOutput, vae_loss
from clearvae.models.conv import ConvVAE, ConvVAEConfig
from clearvae.models.dense import DenseVAE, DenseVAEConfig
from clearvae.models.hierarchical import HierarchicalVAE, HierarchicalVAEConfig

MODELS: dict[str, type[VAE]] = {
    "dense": DenseVAE, "conv": ConvVAE, "hierarchical": HierarchicalVAE,
}


def families() -> dict[str, Any]:
    """Every trainable model family by kind: the VAEs, the denoiser and the image codec."""
    from clearvae.codec.model import HyperpriorCodec  # here: the codec imports our layers
    from clearvae.models.denoiser import DenoisingVAE  # and the denoiser wraps our VAEs

    return {**MODELS, "denoiser": DenoisingVAE, "hyperprior": HyperpriorCodec}


def model_config_from_dict(data: dict[str, Any]) -> Any:
    """Build the config of the family named by ``data["kind"]``."""
    kind = data.get("kind")
    known = families()
    if kind not in known:
        raise ConfigError(f"model.kind must be one of {', '.join(known)}; got {kind!r}")
    return known[kind].config_class.from_dict(data)


def build_model(config: Any) -> Any:
    """A freshly initialised model of ``config``'s family."""
    return families()[config.kind](config)


__all__ = [
    "MODELS", "VAE", "FlatVAE", "VAEConfig", "VAEOutput", "LossTerms", "vae_loss",
    "DenseVAE", "DenseVAEConfig", "ConvVAE", "ConvVAEConfig",
    "HierarchicalVAE", "HierarchicalVAEConfig",
    "build_model", "families", "model_config_from_dict", "model_from_file",
]


def model_from_file(loaded: Any, source: str = "file", weights: str = "auto") -> VAE:
    """Rebuild a model from a loaded clearvae file (``checkpoint.Loaded``).

    ``weights``: "auto" uses the averaged (EMA) weights of a checkpoint, "ema" or "live" pick.
    """
    config = model_config_from_dict(loaded.model_config)
    model = build_model(config)
    try:
        model.load_state_dict(loaded.weights("live" if weights == "live" else "ema"))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise ModelFileError(
            f"{source}: its weights do not fit a {config.kind} model of this clearvae version "
            f"({detail[1].strip() if len(detail) > 1 else detail[0]})"
        ) from None
    return model.eval()
