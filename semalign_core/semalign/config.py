"""SemAlignConfig: every setting of a SemAlign run, written whole into its record."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from semalign_core.errors import InvalidParameterError


@dataclass
class SemAlignConfig:
    """Everything that defines a SemAlign run (recorded with the results).

    Attributes:
        objective: "acl" (camera-ready default: Fisher-weighted quadratic surrogate on aligned
            logits + output KL at the final stage), "v2" (1 − linear CKA of the layer's residual
            contribution + output KL), "v1" ((1 − cos(h_k, h~)) + (1 − cos(z, one-hot label)) on
            the MLP sublayer output, no output KL).
        reading: for "acl": "aligned_logits" (z~ = target head on the recomposed state, z = logit
            lens of layer k) or "vds" (z~ = source cosine coefficients, z = target cosine
            coefficients of h_k; the coefficients lie in [-1, 1], so use a small tau).
        tau: temperature of the surrogate and of the output KL.
        layer_weight, output_kl_weight: weights of the layer term and of the output-KL term.
        output_kl_every_stage: add the output KL at every stage, not only the last one.
        rescale: "none" or "source_norm" for the recomposed state h~ (see semantics.transfer_state).
        decomposition: how a source state becomes coefficients over the semantic bases and back
            (the composite map, supervision.composite_map): "cosine" (the paper's a = S_src h/‖h‖,
            h~ = S_tgtᵀ a), "dual" (exact minimum-norm coefficients a = pinv(S_srcᵀ) h/‖h‖, so
            S_srcᵀ a = h/‖h‖; not with the "vds" reading, whose coefficients are cosines) or
            "gain_folded" (cosine, with the bases of each head with its final-norm gain folded
            in, W diag(g): unchanged when a checkpoint folds the gain into its head).
        steps_per_stage: optimizer steps per frontier stage; step s uses batch s mod n_batches.
        lr, weight_decay, grad_clip: AdamW settings; grad_clip None disables clipping. The
            optimizer is rebuilt at every stage (after the trainable set is known), so no Adam
            moments carry over between layers.
        batch_size, max_length, prompt_style, loss_on: how records become SFT batches.
        micro_batch_size: examples per forward/backward of a stage step (None: ``batch_size``);
            a step accumulates the gradients of ``batch_size / micro_batch_size`` micro-batches,
            each term weighted by its share of the step's positions (examples, for v2's
            per-example CKA), so the step's loss and gradient are the whole batch's up to float
            rounding and padding length, and a step's activations and loss tensors shrink with
            the micro-batch. Must divide ``batch_size``.
        attribution_batch_size: examples per attribution forward/backward (None: ``batch_size``).
            Each example's gradient × activation is its own (the loss is a per-example sum), so
            smaller batches give the same scores up to float rounding and padding length; the
            source's activations for the backward shrink with it (the paper's 13B source at
            64 × 512 tokens needs about 160 GiB of them, at 4 × 512 about 10).
        trainable: "full" (every weight of layer k) or "lora" (rank ``lora_r`` adapters on every
            Linear of layer k, merged into the layer after its stage).
        lora_r, lora_alpha: LoRA rank and scale numerator (alpha / r).
        pairing, window: pairing strategy ("attributed", "floor", "uniform", "interpolate") and
            the widening of the attribution windows.
        attribution_aggregate, attribution_method, attribution_granularity: see attribution.py.
        max_cached_logits_bytes: the teacher's output logits (fp32, supervised positions only)
            are cached when they fit in this many bytes; otherwise its final-normed hidden states
            are cached and its LM head is re-applied at every step that needs the KL. The same
            budget decides whether a stage keeps its aligned logits z~ (constant within a stage)
            or recomputes them at each step.
        eval_batches: how many steps' batches measure the stage loss before and after the stage
            (0 disables the measurement).
        seed: seeds every stage (``seed + k``), so a resumed run repeats the same numbers.
        checkpoint_dir: where stage checkpoints and the source-state cache go (None: nowhere).
        progress: show tqdm progress bars.
    """

    objective: Literal["acl", "v2", "v1"] = "acl"
    reading: Literal["aligned_logits", "vds"] = "aligned_logits"
    tau: float = 1.0
    layer_weight: float = 1.0
    output_kl_weight: float = 1.0
    output_kl_every_stage: bool = False
    rescale: Literal["none", "source_norm"] = "none"
    decomposition: Literal["cosine", "dual", "gain_folded"] = "cosine"
    steps_per_stage: int = 4
    lr: float = 3e-5
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 4
    micro_batch_size: int | None = None
    attribution_batch_size: int | None = None
    max_length: int = 256
    prompt_style: str = "transfer"
    loss_on: str = "response"
    trainable: Literal["full", "lora"] = "full"
    lora_r: int = 16
    lora_alpha: int = 32
    pairing: Literal["attributed", "floor", "uniform", "interpolate"] = "attributed"
    window: int | None = None
    attribution_aggregate: str = "sum_abs"
    attribution_method: Literal["captum", "hooks"] = "captum"
    attribution_granularity: str = "channel"
    max_cached_logits_bytes: int = 1 << 30
    eval_batches: int = 1
    seed: int = 0
    checkpoint_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {
            "objective": ("acl", "v2", "v1"),
            "reading": ("aligned_logits", "vds"),
            "rescale": ("none", "source_norm"),
            "decomposition": ("cosine", "dual", "gain_folded"),
            "trainable": ("full", "lora"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidParameterError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.decomposition == "dual" and self.layer_readout == "vds":
            raise InvalidParameterError(
                "decomposition='dual' needs reading='aligned_logits': the vds reading compares "
                "cosine coefficients"
            )
        if self.steps_per_stage < 1 or self.batch_size < 1 or self.tau <= 0 or self.lr <= 0:
            raise InvalidParameterError(
                "steps_per_stage and batch_size must be >= 1; tau and lr positive"
            )
        if self.micro_batch_size is not None and (
            self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size
        ):
            raise InvalidParameterError(
                f"micro_batch_size must divide batch_size ({self.batch_size}), "
                f"got {self.micro_batch_size}"
            )
        if self.attribution_batch_size is not None and self.attribution_batch_size < 1:
            raise InvalidParameterError(
                f"attribution_batch_size must be >= 1 or None, got {self.attribution_batch_size}"
            )

    @property
    def micro(self) -> int:
        """Examples per forward/backward of a stage step."""
        return self.micro_batch_size or self.batch_size

    @property
    def attribution_batch(self) -> int:
        """Examples per attribution pass."""
        return self.attribution_batch_size or self.batch_size

    def identity(self) -> dict[str, Any]:
        """The fields that change the numbers (not where files go or whether bars show)."""
        d = asdict(self)
        d.pop("checkpoint_dir"), d.pop("progress")
        # The field came after records were made with the paper's decomposition: leaving the
        # default out keeps those records' config hashes (and run keys), so they stay reusable.
        if d["decomposition"] == "cosine":
            d.pop("decomposition")
        # Likewise: attributing in the training batches (the only batching before the field)
        # is one identity however it is spelled.
        if self.attribution_batch == self.batch_size:
            d.pop("attribution_batch_size")
        if self.micro == self.batch_size:
            d.pop("micro_batch_size")
        return d

    def step_batches(self, step: int, n_batches: int) -> list[int]:
        """The (micro-)batches of ``n_batches`` that optimizer step ``step`` accumulates over:
        the training batches are cut in groups of ``batch_size / micro`` in order (one whole
        batch each), and step s uses group s mod the number of groups."""
        per_step = self.batch_size // self.micro
        group = step % -(-n_batches // per_step)
        return list(range(group * per_step, min((group + 1) * per_step, n_batches)))

    def batches_used(self, n_batches: int) -> list[int]:
        """The training (micro-)batches every stage steps on: the only ones the source
        supervision is computed for."""
        steps = range(self.steps_per_stage)
        return sorted({i for s in steps for i in self.step_batches(s, n_batches)})

    def eval_groups(self, n_batches: int) -> list[list[int]]:
        """The steps' batches that measure a stage's loss before and after it: those of the
        first ``eval_batches`` steps that use distinct batches."""
        groups: list[list[int]] = []
        for s in range(self.steps_per_stage):
            ids = self.step_batches(s, n_batches)
            if len(groups) < self.eval_batches and ids not in groups:
                groups.append(ids)
        return groups

    def kl_at(self, stage: int, n_stages: int) -> bool:
        """Whether stage ``stage`` (1-based) adds the output KL."""
        if self.output_kl_every_stage:
            return True
        return stage == n_stages and self.objective in ("acl", "v2")

    @property
    def layer_readout(self) -> Literal["logits", "vds"] | None:
        """What the layer term reads off layer k's output: the logit lens ("logits": acl with
        aligned logits, v1), the target cosine coefficients ("vds") or nothing (v2: CKA)."""
        if self.objective == "v2":
            return None
        return "vds" if self.objective == "acl" and self.reading == "vds" else "logits"

    def kl_reuses_layer_logits(self, stage: int, n_stages: int) -> bool:
        """At the last stage the layer term's logit lens is the model's output: the KL reuses it."""
        return stage == n_stages and self.layer_readout == "logits"
