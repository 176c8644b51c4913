"""Typed schema of a recipe: one dataclass per component kind.

OmegaConf merges every card and override into these structured configs, so an unknown key
or a wrong type is rejected before anything is built.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

KINDS = ("understanding", "generation", "fusion", "data", "trainer")

# torch dtype names (precision.DTYPES maps them to torch); storage dtypes come from the
# precision plan (precision.py), not from the cards.
DTYPE_NAMES = ("float32", "bfloat16", "float16")

# Each field holds its own facts, checked after merging (recipe/checks.py) so that a value that
# cannot work stops the recipe before anything is built: a value range (`positive(default)`, ...)
# or a closed set of values (`one_of(default, *others)`). `RANGES` and `CHOICES` below are derived
# from the fields. A None value of an Optional key is never checked. Names that select code
# (adapters, fusion blocks, strategies) are not closed sets here: their registries (registry.py)
# are their one list. tests/recipe/test_choices.py checks each set against the table the code reads.
Range = Tuple[str, Callable[[Any], bool]]  # (the range as the error message shows it, the test)
_UNIT: Range = ("in [0, 1]", lambda v: 0.0 <= v <= 1.0)
_UNIT_OPEN: Range = ("in [0, 1)", lambda v: 0.0 <= v < 1.0)
_POSITIVE: Range = ("> 0", lambda v: 0 < v < math.inf)  # nan and inf fail too
_NON_NEGATIVE: Range = (">= 0", lambda v: 0 <= v < math.inf)
# An image side the previews and the shapes world can render (4096^2 RGB is 50 MB a float image;
# 100000 would be ~30 GB per preview).
_IMAGE_SIDE: Range = ("in [1, 4096]", lambda v: 1 <= v <= 4096)
# `name` is one folder under outputs/ (output_dir: outputs/${name}): no separator, no "..", short
# enough for every file system (255 bytes per name, less the suffixes --fresh adds).
_FOLDER_NAME: Range = ("a folder name of at most 100 letters, digits, '.', '_' or '-', not starting with '.'",
                       lambda v: re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", str(v)) is not None)


def _ranged(rng: Range) -> Callable[..., Any]:
    def make(default: Any = None, factory: Optional[Callable[[], Any]] = None) -> Any:
        """A field whose value (each item, for a list) must lie in the range."""
        if factory is not None:
            return field(default_factory=factory, metadata={"range": rng})
        return field(default=default, metadata={"range": rng})

    return make


positive, non_negative, unit, unit_open = map(_ranged, (_POSITIVE, _NON_NEGATIVE, _UNIT, _UNIT_OPEN))
image_side, folder_name = map(_ranged, (_IMAGE_SIDE, _FOLDER_NAME))


def one_of(*choices: str, default: Optional[str] = None) -> Any:
    """A field whose value must be one of `choices`; the default is the first unless given."""
    return field(default=choices[0] if default is None else default, metadata={"choices": choices})


@dataclass
class UnderstandingConfig:
    """A vision-language model: the understanding pathway."""

    card: str = "???"
    adapter: str = "???"
    # Hub id or local directory; None builds random weights from `config` (tiny cards).
    pretrained: Optional[str] = None
    revision: Optional[str] = None
    # Backbone config kwargs (transformers config) used when `pretrained` is None,
    # or checked against the checkpoint's config when weights are loaded (a mismatch is an error).
    config: Dict[str, Any] = field(default_factory=dict)
    # False builds the architecture from `config` without reading any weights or tokenizer
    # (random init, or no memory at all on the meta device): `lightbagel-plan`, shape tests.
    load_weights: bool = True
    # Image processor settings (patch/merge sizes come from the vision config).
    min_pixels: int = positive(56 * 56)
    max_pixels: int = positive(532 * 532)
    tokenizer: Optional[str] = None
    freeze: bool = True
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"


@dataclass
class VAEConfig:
    """The latent codec of the generation pathway."""

    adapter: str = "???"
    pretrained: Optional[str] = None
    subfolder: Optional[str] = None
    config: Dict[str, Any] = field(default_factory=dict)
    freeze: bool = True
    load_weights: bool = True  # as UnderstandingConfig.load_weights


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
    load_weights: bool = True  # as UnderstandingConfig.load_weights
    # What to do with the DiT's text cross-attention (umT5 is never loaded):
    # "skip" drops the sub-layer; text reaches the DiT through fusion only.
    # No "keep": the DiT's text cross-attention needs its text encoder (umT5, T5), which is never
    # loaded; text reaches the DiT through the fusion blocks only (docs/full_size.md).
    cross_attention: str = one_of("skip")
    num_train_timesteps: int = positive(1000)
    # Wan's rotary base (None: the model's own, 10000). Only for a DiT trained from scratch on a
    # small token grid: at 10000 most rotary frequencies barely turn across 8 tokens (docs/tiny.md).
    rope_theta: Optional[float] = positive(None)


@dataclass
class FusionConfig:
    """The blocks between the towers and how they pair with the VLM layers."""

    card: str = "???"
    block: str = "double_fusion"
    # None: the understanding model's head count (docs/design.md: 28 x 128 at full size).
    num_heads: Optional[int] = positive(None)
    head_dim: Optional[int] = positive(None)
    qk_norm: bool = True
    zero_init: bool = True
    # Fraction of the VLM already run when fusion starts: 0.0 pairs DiT block i with VLM
    # block i (the paper's "0% depth"); 1.0 fuses with the final VLM output ("100% depth").
    depth_offset: float = unit(0.0)
    # Each stream rotates its own Q/K with its own rotary embedding ("per_stream"), or "none".
    positional: str = one_of("per_stream", "none")
    und_writeback: bool = True
    eps: float = positive(1e-6)
    # Order of an edit source's two splits in the mask: "vae_first" (BAGEL's: clean VAE split,
    # then [vision_start, ViT image, vision_end]) or "vit_first". The paper is silent (docs/full_size.md).
    edit_layout: str = one_of("vae_first", "vit_first")
    # How every attention (VLM, DiT, fusion) applies the generalized causal rule (docs/attention.md):
    # "auto" is compiled flex_attention on GPUs and "dense" elsewhere (torch has no flex backward on
    # CPU); "dense" is the (B, 1, L, L) boolean SDPA reference; "flex" is eager (unfused) flex.
    attention: str = one_of("auto", "dense", "per_sample", "flex", "flex_compiled")


@dataclass
class SourceConfig:
    """One webdataset source of a mixture (docs/data.md has the sample schema per task)."""

    name: str = "???"
    # Shard URLs: brace patterns ("data/t2i-{000000..000099}.tar"), globs, local paths or pipe: URLs.
    urls: List[str] = field(default_factory=list)
    weight: float = non_negative(1.0)
    # Task of samples without a `task.txt` member; it names a sample parser (data/samples.py), so a
    # typo would skip every sample.
    task: str = one_of("t2i", "edit", "und", "in_context")


@dataclass
class StageConfig:
    """From `start_step` on, the mixture uses these weights (source name -> weight)."""

    start_step: int = non_negative(0)
    weights: Dict[str, float] = field(default_factory=dict)


@dataclass
class ResolutionConfig:
    """Native aspect ratio within min/max short/long sides (docs/design.md), per image side."""

    vae_min_short: int = positive(512)
    vae_max_long: int = positive(1024)
    # Side multiple of VAE images; None: VAE factor x DiT patch of the model (32 for Wan2.2).
    vae_multiple: Optional[int] = positive(None)
    vit_min_short: int = positive(224)
    vit_max_long: int = positive(532)
    vit_multiple: int = positive(28)
    # Larger images are skipped as "oversize" before they are decoded.
    max_image_pixels: int = positive(40_000_000)


@dataclass
class PackingConfig:
    """Token budget per batch (data/buckets.py): a packed row holds images of every size, a padded
    batch same-size images, until they hold this many tokens."""

    # None: fixed `batch_size` samples per batch; otherwise `batch_size` is the cap.
    token_budget: Optional[int] = positive(None)
    # A row is sent once it holds `token_budget` tokens; a sample that would take it past this
    # many waits for the next row (BAGEL's max_num_tokens; None: the budget is also the cap).
    max_tokens: Optional[int] = positive(None)
    # A sample waiting longer than this many draws for its bucket to fill is sent in a short batch.
    max_wait: int = positive(256)
    # How a batch runs through the model (docs/data.md): "packed" puts every sample's real tokens in
    # one row, no padding and no empty source slots; "padded" pads to the longest (the reference).
    layout: str = one_of("packed", "padded")


@dataclass
class DataConfig:
    """Where samples come from and how they are batched."""

    card: str = "???"
    source: str = one_of("shapes", "webdataset")
    root: str = "data/shapes"
    num_samples: int = positive(4000)
    image_size: int = image_side(32)
    task_weights: Dict[str, float] = field(default_factory=lambda: {"t2i": 0.7, "edit": 0.3})
    seed: int = 0
    batch_size: int = positive(16)
    num_workers: int = non_negative(0)
    shuffle_buffer: int = non_negative(1000)
    # ViT side of an edit source image: its short side in pixels.
    vit_image_size: int = image_side(32)
    # Mixture (docs/data.md). With source "shapes" and no `sources`, the generated shapes shards
    # under `root` are the one source.
    sources: List[SourceConfig] = field(default_factory=list)
    stages: List[StageConfig] = field(default_factory=list)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)


@dataclass
class MLflowConfig:
    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI, else the project's store beside output_dir (outputs/mlflow.db).
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None  # None: the recipe family (the root of its base: chain)
    run_name: Optional[str] = None


@dataclass
class EMAConfig:
    """Exponential moving average of the trainable weights (exported beside the model)."""

    enabled: bool = False
    decay: float = unit(0.999)


@dataclass
class LoraConfig:
    """LoRA adapters (peft) instead of full fine-tuning: everything else is frozen."""

    enabled: bool = False
    rank: int = positive(16)
    alpha: float = positive(16.0)
    dropout: float = unit_open(0.0)
    # Per component (understanding, generation, fusion): module-name suffixes to adapt.
    targets: Dict[str, List[str]] = field(default_factory=lambda: {
        "fusion": ["to_q", "to_k", "to_v", "to_out"],
        "generation": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"],
    })


@dataclass
class TrainerConfig:
    """Lightning Trainer settings and side concerns of the loop."""

    card: str = "???"
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = positive(1)
    strategy: str = "auto"
    # Storage and compute per part follow from it (precision.py, docs/full_size.md "Precision").
    precision: str = one_of("32-true", "bf16-mixed", "bf16-true", "16-mixed")
    # bf16-true keeps trainable weights and AdamW state in bf16 (most lr 3e-5 updates round
    # away); it is refused for a model with trainable weights unless this is true.
    allow_bf16_master_weights: bool = False
    # Under bf16 compute, keep the DiT's residual stream and output head in fp32 as Wan2.2 does
    # (precision.py; the measured error and memory cost: docs/full_size.md "Precision").
    fp32_residual: bool = True
    max_steps: int = positive(300)
    log_every_n_steps: int = positive(10)
    sample_every_n_steps: int = non_negative(100)
    num_sample_images: int = non_negative(8)
    # Sampling steps of the training grids and eval; None: the sampler's per-task default
    # (inference/guidance.py TASK_DEFAULTS, the one every command uses).
    sample_steps: Optional[int] = positive(None)
    # Synthetic-world eval (evaluation/callback.py) every N steps and at the end; 0 turns it off.
    eval_every_n_steps: int = non_negative(0)
    eval_per_category: int = positive(4)
    gradient_clip_val: Optional[float] = positive(1.0)
    accumulate_grad_batches: int = positive(1)
    # Global tokens per optimizer step (every rank's micro-batches together); with a token budget
    # it fixes accumulate_grad_batches for any number of ranks (recipe/steps.py). None: not fixed.
    tokens_per_step: Optional[int] = positive(None)
    activation_checkpointing: bool = False
    enable_progress_bar: bool = True
    # CPU intra-op threads (None: torch's default). Tiny models gain nothing from more threads,
    # and on a shared machine idle OpenMP threads spin: 1 keeps a tiny run fast everywhere.
    num_threads: Optional[int] = positive(None)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    # FSDP2 (strategy: fsdp2): keep sharded parameters and optimizer state in host memory.
    cpu_offload: bool = False
    # Checkpoints under <output_dir>/checkpoints: every N optimizer steps (0: max_steps // 4),
    # the newest `keep_checkpoints` kept; sharded (one file per rank) under fsdp2.
    checkpoint_every_n_steps: int = non_negative(0)
    keep_checkpoints: int = positive(2)
    # Non-finite losses skip their step; this many in a row stop the run (with a checkpoint).
    max_nonfinite_steps: int = positive(5)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ObjectiveConfig:
    """Flow matching (docs/design.md) and condition dropout for classifier-free guidance."""

    timestep_shift: float = positive(4.0)
    logit_mean: float = 0.0
    logit_std: float = positive(1.0)
    text_dropout: float = unit(0.1)
    vae_dropout: float = unit(0.1)
    vit_dropout: float = unit(0.5)
    # Which encoders see an edit's source image (the paper's "double fusion" ablation): "both"
    # (ViT and clean VAE tokens), "vit" (ViT only) or "vae" (VAE only). Training and sampling
    # hide the other one exactly as condition dropout does.
    edit_condition: str = one_of("both", "vit", "vae")
    # What the DiT's head outputs: "velocity" (v = eps - x0, Wan and BAGEL) or "sample" (x0, read
    # as the velocity (x_t - x0) / t it implies, JiT arXiv:2511.13720); the loss is on the velocity
    # either way (docs/tiny.md measures both on the tiny model).
    prediction: str = one_of("velocity", "sample")
    # Loss weights. Flow matching trains generation on t2i/edit samples; the understanding loss
    # (next-token cross-entropy on the answer tokens of `und` samples, VLM alone) trains the VLM,
    # so it needs `understanding.freeze: false`. 0 turns an objective off and its samples are
    # skipped: und_weight 0 is the paper's run (frozen VLM), flow_weight 0 is VLM pre-training.
    flow_weight: float = non_negative(1.0)
    und_weight: float = non_negative(0.0)
    # The VAE objective (tower pre-training, recipes/pretrain/tiny_vae.yaml): L1 reconstruction of
    # the batch's images through the generation codec plus `vae_kl_weight` x the KL of its
    # posterior to N(0, 1) (mean per latent value), as latent-diffusion VAEs are trained; it needs
    # `generation.vae.freeze: false`. 0 (every other recipe) keeps the codec as loaded.
    vae_weight: float = non_negative(0.0)
    vae_kl_weight: float = non_negative(1.0e-4)


@dataclass
class OptimConfig:
    lr: float = positive(3e-5)
    betas: List[float] = unit_open(factory=lambda: [0.9, 0.95])
    weight_decay: float = non_negative(0.0)
    # torch's default; BAGEL trains with 1e-15. With fp32 second moments the two differ only for
    # entries whose gradient RMS is below ~1e-8, where 1e-15 turns AdamW into lr x sign(g)
    # (docs/full_size.md). optim.eps=1.0e-15 gives BAGEL's.
    eps: float = positive(1e-8)
    warmup_steps: int = non_negative(2000)
    # After warmup: "constant" (the paper) or "cosine" down to min_lr_ratio x lr at trainer.max_steps
    # (short runs such as the tiny default end better on a decayed rate).
    schedule: str = one_of("constant", "cosine")
    min_lr_ratio: float = unit(0.1)


@dataclass
class PretrainConfig:
    """A stage trained before this recipe (once, then reused) whose export initialises `parts`:
    off by default; recipes/tiny_pretrained.yaml pre-trains its tiny VLM (training/stages.py, README.md)."""

    recipe: Optional[str] = None  # path relative to this recipe's file; None: no stage
    output_dir: str = "outputs/pretrain"  # the stage's output_dir; its export there is reused
    parts: List[str] = field(default_factory=lambda: ["understanding"])  # understanding, generation, fusion
    overrides: List[str] = field(default_factory=list)  # KEY=VALUE overrides of the stage recipe


@dataclass
class RecipeConfig:
    name: str = folder_name("lightbagel")
    seed: int = 0
    output_dir: str = "outputs/${name}"
    # A `lightbagel-fit` export directory whose weights initialise the model (fine-tuning).
    init_from: Optional[str] = None
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    understanding: UnderstandingConfig = field(default_factory=UnderstandingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def understanding_is_random(self) -> bool:
        """Whether the VLM is random weights nothing ever trained (the tiny default's): no hub
        weights, no init_from or pretrain stage for it, frozen and without LoRA on it. Its answers
        are noise, so chat warns and eval skips the VQA score (cli/generate.py, cli/eval.py)."""
        und, lora = self.understanding, self.trainer.lora
        staged = bool(self.pretrain.recipe) and "understanding" in self.pretrain.parts
        adapted = lora.enabled and bool(lora.targets.get("understanding"))
        return und.pretrained is None and not self.init_from and not staged and und.freeze and not adapted


def _field_facts(cls: type, prefix: str = "") -> Iterator[Tuple[str, dict]]:
    """(dotted key, metadata) of every field below `cls`; "a[].b" is key b of every item of list a."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        key, kind = prefix + f.name, hints[f.name]
        if get_origin(kind) in (list, List):
            key, kind = key + "[]", get_args(kind)[0]
        elif get_origin(kind) is Union:
            kind = next(a for a in get_args(kind) if a is not type(None))
        if f.metadata:
            yield key, f.metadata
        if is_dataclass(kind):
            yield from _field_facts(kind, key + ".")


_FACTS = dict(_field_facts(RecipeConfig))
RANGES: Dict[str, Range] = {key: m["range"] for key, m in _FACTS.items() if "range" in m}
CHOICES: Dict[str, Tuple[str, ...]] = {key: m["choices"] for key, m in _FACTS.items() if "choices" in m}
