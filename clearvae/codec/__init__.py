"""Learned image compression, in three layers: transforms (``networks``); entropy models that
give likelihoods (``entropy_models``, and the optional channel-wise ``context``) and the
variable-rate hyperprior codec with its loss (``model``); then the integer entropy coder
(``coder``) and the ``.cvae`` file (``container``), which use numpy and bytes only."""

from clearvae.codec.entropy_models import (
    SCALES,
    FactorizedPrior,
    GaussianConditional,
    round_around,
    scale_from_index,
)
from clearvae.codec.model import (
    CodecOutput,
    HyperpriorCodec,
    HyperpriorCodecConfig,
    estimated_bits,
    rd_loss,
)
from clearvae.codec.networks import (
    GDN,
    AnalysisTransform,
    HyperAnalysis,
    HyperSynthesis,
    SynthesisTransform,
)

__all__ = [
    "SCALES", "FactorizedPrior", "GaussianConditional", "round_around", "scale_from_index",
    "CodecOutput", "HyperpriorCodec", "HyperpriorCodecConfig", "estimated_bits", "rd_loss",
    "GDN", "AnalysisTransform", "HyperAnalysis", "HyperSynthesis", "SynthesisTransform",
]
