"""SemAlign's passes in the package's one FLOP model (:func:`semalign_core.costs.step_flops`).

Analytic counts describe an uninterrupted run without on-disk caches: a resumed run or a cached
source pass costs the same FLOPs (their wall time and memory are what this process measured).
"""

from __future__ import annotations

from dataclasses import dataclass

from semalign_core import costs
from semalign_core.semalign.attribution import supervised_positions
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.objective import aligned_logits_fit


def batch_dims(batch: dict) -> tuple[int, int, int]:
    """(processed tokens, padded length, supervised positions) of a padded batch."""
    bsz, seq = batch["input_ids"].shape
    return bsz * seq, seq, int(supervised_positions(batch["labels"])[0].sum())


def stage_spec(
    config: SemAlignConfig, stage: int, n_layers: int, lora_params: int = 0
) -> costs.TrainableSpec:
    """A stage-k step: block k trains on its cached input; the head reads out after it (layer
    term) and, with the output KL, the blocks after k run and the head reads out at the top."""
    k0 = stage - 1
    kl = config.kl_at(stage, n_layers)
    readouts = (stage,) if config.layer_readout is not None else ()
    if kl and not config.kl_reuses_layer_logits(stage, n_layers):
        readouts += (n_layers,)
    trained = (
        {"lora_params": {k0: lora_params}}
        if config.trainable == "lora"
        else {"trained_blocks": frozenset({k0})}
    )
    return costs.TrainableSpec(
        **trained, cached_prefix=k0, run_blocks=n_layers if kl else stage, readouts=readouts
    )


@dataclass
class SemAlignFlops:
    """Analytic FLOPs of every pass of one SemAlign run (shapes from ``costs.model_shape``)."""

    config: SemAlignConfig
    source: costs.ModelShape
    target: costs.ModelShape
    teacher_kind: str  # Supervision.teacher_kind: "logits", "hidden" or "none"
    n_supervised: int  # supervised positions of all training batches (is z~ kept?)

    @property
    def _kept_aligned_logits(self) -> bool:
        """acl's aligned logits z~ are computed once per stage and batch (not at every step)."""
        return aligned_logits_fit(self.n_supervised, self.target.vocab, self.config)

    @property
    def _aligned_logits(self) -> bool:
        return self.config.objective == "acl" and self.config.reading == "aligned_logits"

    def step(
        self, stage: int, batch: dict, lora_params: int = 0, forward_only: bool = False
    ) -> float:
        """One optimizer step of stage ``stage`` on ``batch`` (``forward_only``: a loss
        evaluation), the no-grad read-outs it redoes at every step included."""
        tokens, seq, n_sup = batch_dims(batch)
        spec = stage_spec(self.config, stage, self.target.num_layers, lora_params)
        flops = costs.step_flops(self.target, spec, tokens, seq, n_sup)
        return flops["forward" if forward_only else "total"] + self._no_grad_readouts(stage, n_sup)

    def _no_grad_readouts(self, stage: int, n_sup: int) -> float:
        flops = 0.0
        if self._aligned_logits and not self._kept_aligned_logits:
            flops += costs.head_flops(self.target, n_sup)  # z~ recomputed at every step
        if self.config.layer_readout == "vds":
            flops += costs.head_flops(self.source, n_sup)  # decomposition of the source state
        if self.config.kl_at(stage, self.target.num_layers) and self.teacher_kind == "hidden":
            flops += costs.head_flops(self.source, n_sup)  # the teacher's head, re-applied
        return flops

    def stage_setup(
        self,
        stage: int,
        batches: list[dict],
        used: list[int],
        eval_ids: list[int],
        lora_params: int = 0,
    ) -> float:
        """Work of a stage outside its optimizer steps: kept aligned logits, the loss evaluations
        before and after, and the trained layer's advance pass (over the ``used`` batches only:
        ``frontier.LayerInputs``). The prefix cache of stage 1 is the embedding output
        (``BlockReplay`` runs no block), so it costs no matmul."""
        n_layers, flops = self.target.num_layers, 0.0
        advance = costs.TrainableSpec(cached_prefix=stage - 1, run_blocks=stage, readouts=())
        for i in used:
            batch = batches[i]
            tokens, seq, n_sup = batch_dims(batch)
            if stage < n_layers:
                flops += costs.step_flops(self.target, advance, tokens, seq, 0)["forward"]
            if self._aligned_logits and self._kept_aligned_logits:
                flops += costs.head_flops(self.target, n_sup)
            if i in eval_ids:
                flops += 2 * self.step(stage, batch, lora_params, forward_only=True)
        return flops

    def attribution(self, batches: list[dict]) -> float:
        """Gradient × activation of the source: forward, then activation gradients down to the
        first block's output (no weight gradients)."""
        if self.config.pairing != "attributed":
            return 0.0
        spec = costs.TrainableSpec(grad_outputs_from=0)
        return sum(costs.step_flops(self.source, spec, *batch_dims(b))["total"] for b in batches)

    def source_pass(self, batches: list[dict], deepest_layer: int) -> float:
        """The no-grad source pass: up to the deepest paired layer (0-based), or through every
        layer and the teacher's head when the output KL needs the teacher."""
        n_blocks = deepest_layer + 1 if self.teacher_kind == "none" else self.source.num_layers
        flops = 0.0
        for b in batches:
            tokens, seq, n_sup = batch_dims(b)
            flops += costs.prefix_forward_flops(self.source, n_blocks, tokens, seq)
            if self.teacher_kind == "logits":
                flops += costs.head_flops(self.source, n_sup)
        return flops
