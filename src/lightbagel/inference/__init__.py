"""Inference: the pipeline (generate, edit, understand) and the cached CFG sampler."""

from lightbagel.inference.pipeline import LightBagelPipeline, PipelineOutput
from lightbagel.inference.sampler import Conditioning, SamplerConfig, sample

__all__ = ["Conditioning", "LightBagelPipeline", "PipelineOutput", "SamplerConfig", "sample"]
