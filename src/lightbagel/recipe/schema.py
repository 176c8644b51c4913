"""Typed schema of a recipe: one dataclass per component kind.

OmegaConf merges every card and override into these structured configs, so an unknown key
or a wrong type is rejected before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

KINDS = ("understanding", "generation", "fusion", "data", "trainer")

# Closed sets of values, checked after merging (recipe/compose.py). Adapter names are checked
# against the registries instead; `fusion.block` falls back to this list while none is registered.
_DTYPES = ("float32", "bfloat16", "float16")
CHOICES: Dict[str, Tuple[str, ...]] = {
    "understanding.dtype": _DTYPES,
    "generation.dtype": _DTYPES,
    "generation.cross_attention": ("skip", "keep"),
    "fusion.block": ("double_fusion",),
    "fusion.positional": ("per_stream", "none"),
    "data.source": ("shapes", "webdataset"),
    "trainer.precision": ("32-true", "bf16-mixed", "bf16-true", "16-mixed"),
    "trainer.strategy": ("auto", "fsdp2", "ddp"),
}


@dataclass
class UnderstandingConfig:
    """A vision-language model: the understanding pathway."""

    card: str = "???"
    adapter: str = "???"
    # Hub id or local directory; None builds random weights from `config` (tiny cards).
    pretrained: Optional[str] = None
    revision: Optional[str] = None
    # Backbone config kwargs (transformers config) used when `pretrained` is None,
    # or applied as overrides on top of the pretrained config.
    config: Dict[str, Any] = field(default_factory=dict)
    # Image processor settings (patch/merge sizes come from the vision config).
    min_pixels: int = 56 * 56
    max_pixels: int = 532 * 532
    tokenizer: Optional[str] = None
    freeze: bool = True
    trust_remote_code: bool = False
    dtype: str = "float32"
    attn_implementation: str = "sdpa"


@dataclass
class VAEConfig:
    """The latent codec of the generation pathway."""

    adapter: str = "???"
    pretrained: Optional[str] = None
    subfolder: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)
    freeze: bool = True


@dataclass
class GenerationConfig:
    """A diffusion transformer plus its VAE: the generation pathway."""

    card: str = "???"
    adapter: str = "???"
    pretrained: Optional[str] = None
    subfolder: Optional[str] = None
    revision: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)
    vae: VAEConfig = field(default_factory=VAEConfig)
    freeze: bool = False
    # What to do with the DiT's text cross-attention (umT5 is never loaded):
    # "skip" drops the sub-layer; text reaches the DiT through fusion only.
    cross_attention: str = "skip"
    num_train_timesteps: int = 1000
    dtype: str = "float32"


@dataclass
class FusionConfig:
    """The blocks between the towers and how they pair with the VLM layers."""

    card: str = "???"
    block: str = "double_fusion"
    # None: the understanding model's head count (DESIGN.md: 28 x 128 at full size).
    num_heads: Optional[int] = None
    head_dim: Optional[int] = None
    qk_norm: bool = True
    zero_init: bool = True
    # Fraction of the VLM already run when fusion starts: 0.0 pairs DiT block i with VLM
    # block i (the paper's "0% depth"); 1.0 fuses with the final VLM output ("100% depth").
    depth_offset: float = 0.0
    # Each stream rotates its own Q/K with its own rotary embedding ("per_stream"), or "none".
    positional: str = "per_stream"
    und_writeback: bool = True
    eps: float = 1e-6


@dataclass
class DataConfig:
    """Where samples come from and how they are batched."""

    card: str = "???"
    source: str = "shapes"
    root: str = "data/shapes"
    num_samples: int = 4000
    image_size: int = 32
    task_weights: Dict[str, float] = field(default_factory=lambda: {"t2i": 0.7, "edit": 0.3})
    seed: int = 0
    batch_size: int = 16
    num_workers: int = 0
    shuffle_buffer: int = 1000
    # ViT side of an edit source image: its short side in pixels.
    vit_image_size: int = 32


@dataclass
class MLflowConfig:
    enabled: bool = True
    tracking_uri: Optional[str] = None  # None: a local store under output_dir
    experiment: str = "lightbagel"
    run_name: Optional[str] = None


@dataclass
class TrainerConfig:
    """Lightning Trainer settings and side concerns of the loop."""

    card: str = "???"
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 300
    log_every_n_steps: int = 10
    sample_every_n_steps: int = 100
    num_sample_images: int = 8
    sample_steps: int = 20
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    activation_checkpointing: bool = False
    enable_progress_bar: bool = True
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)


@dataclass
class ObjectiveConfig:
    """Flow matching (DESIGN.md §1) and condition dropout for classifier-free guidance."""

    timestep_shift: float = 4.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_dropout: float = 0.1
    vae_dropout: float = 0.1
    vit_dropout: float = 0.5


@dataclass
class OptimConfig:
    lr: float = 3e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 2000


@dataclass
class RecipeConfig:
    name: str = "lightbagel"
    seed: int = 0
    output_dir: str = "outputs/${name}"
    understanding: UnderstandingConfig = field(default_factory=UnderstandingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
