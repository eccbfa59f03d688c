"""Seeking (Zhong et al., ICLR 2024): post-hoc parametric knowledge transfer (PostPKT).

1. Sensitivity ``|θ ⊙ ∇θ L|`` of the source's decoder-block parameters on the seed examples
   (``attribution_records``; L = response cross-entropy), accumulated over seed batches.
2. Per-layer totals; the top-L_target source layers, kept in depth order, give one source layer
   per target layer.
3. Per weight matrix: the target-shaped contiguous block of the source matrix with maximal summed
   sensitivity, found with a summed-area table (integral image by two cumsums; every offset's
   block sum at once by slicing it — :func:`block_sums`), no loop over offsets.
4. Rank-r SVD of the extracted block → LoRA init ``B = U_r Σ_r``, ``A = V_rᵀ``; the base weight
   carries ``−BA`` so the target starts functionally unchanged (``W_base + BA = W``).
5. LoRA post-training (peft) on the train records; adapters merged into the weights at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semalign_core import costs
from semalign_core.baselines.controls import (
    TrainConfig,
    add_lora,
    begin,
    cap_steps,
    ce_per_example,
    epoch_schedule,
    merge_lora,
    pad_id,
    requires_grad_flags,
    restore_flags,
    spec_for,
    summarize,
    tokenize,
    train,
    train_flops,
)
from semalign_core.data.batching import collate
from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.semalign.pairing import Pairing
from semalign_core.semalign.result import TransferResult


@dataclass
class SeekingConfig(TrainConfig):
    """Seeking's settings (defaults: the paper's 3 epochs, batch 64, lr 3e-4, rank 16).

    Attributes:
        lora_r: rank of the SVD truncation and of the LoRA adapters.
        lora_alpha: peft's scale numerator; the init divides B by alpha/r, so the injected delta
            is exactly ``BA`` whatever alpha is (alpha only changes the adapters' step sizes).
        sensitivity_batch_size: seed examples per backward of the sensitivity pass. 1 (default)
            is the per-example ``Σ_x |θ ⊙ ∇θ L(x)|``; larger batches sum ``|θ ⊙ ∇θ L(batch)|``.
    """

    lr: float = 3e-4
    lora_r: int = 16
    lora_alpha: int = 16
    sensitivity_batch_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_r < 1 or self.sensitivity_batch_size < 1:
            raise InvalidParameterError("lora_r and sensitivity_batch_size must be >= 1")


# --------------------------------------------------------------------------- sensitivity


def sensitivity(model: nn.Module, batches: Sequence[dict]) -> list[dict[str, Tensor]]:
    """Per decoder block (0-based list), ``{param name: Σ_batches |θ ⊙ ∇θ L|}`` (fp32, CPU).

    Gradients are taken only for the blocks' parameters (embeddings and head stay frozen); the
    model's requires_grad flags are restored afterwards. Each parameter's term is added to its
    CPU sum as soon as the backward has written its gradient, which is then freed: the device
    never holds the whole model's gradients, nor the sums (at 13B: 24 and 48 GiB).
    """
    blocks = surgery.decoder_layers(model)
    flags = requires_grad_flags(model)
    for p in model.parameters():
        p.requires_grad_(False)
    named = [dict(blk.named_parameters()) for blk in blocks]
    sens = [
        {n: torch.zeros(p.shape, dtype=torch.float32, device="cpu") for n, p in d.items()}
        for d in named
    ]

    def accumulate(total: Tensor):
        def hook(p: Tensor) -> None:
            with torch.no_grad():
                total.add_((p.detach().float() * p.grad.float()).abs().cpu())
            p.grad = None

        return hook

    hooks = [
        p.requires_grad_(True).register_post_accumulate_grad_hook(accumulate(s[n]))
        for d, s in zip(named, sens)
        for n, p in d.items()
    ]
    try:
        for batch in batches:
            ce_per_example(model, batch).mean().backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        restore_flags(model, flags)
    return sens


def layer_totals(sens: list[dict[str, Tensor]]) -> list[float]:
    return [float(sum(t.sum() for t in d.values())) for d in sens]


def select_layers(totals: Sequence[float], n_target: int) -> list[int]:
    """The ``n_target`` source layers (1-based) of largest total, in depth order (ties: the
    shallower)."""
    order = sorted(range(len(totals)), key=lambda k: (-totals[k], k))
    return sorted(k + 1 for k in order[:n_target])


# --------------------------------------------------------------------------- block search


def block_sums(s: Tensor, rows: int, cols: int) -> Tensor:
    """Summed ``s`` over every ``rows × cols`` contiguous block: entry (a, b) is
    ``s[a:a+rows, b:b+cols].sum()``; shape ``(R − rows + 1, C − cols + 1)``.

    Summed-area table ``I`` (zero row and column in front, float64 so the differences of large
    partial sums keep their precision); block sum = I[a+r, b+c] − I[a, b+c] − I[a+r, b] + I[a, b],
    the four corners of every offset taken as four shifted slices of I.
    """
    R, C = s.shape
    if not (1 <= rows <= R and 1 <= cols <= C):
        raise InvalidParameterError(f"block {rows}×{cols} does not fit in a {R}×{C} matrix")
    ii = F.pad(s.detach().double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    nr, nc = R - rows + 1, C - cols + 1
    return ii[rows:, cols:] - ii[:nr, cols:] - ii[rows:, :nc] + ii[:nr, :nc]


def best_block(s: Tensor, rows: int, cols: int) -> tuple[int, int]:
    """Top-left offset of the block of maximal summed ``s`` (first in row-major order on ties)."""
    sums = block_sums(s, rows, cols)
    flat = int(torch.argmax(sums))
    return flat // sums.shape[1], flat % sums.shape[1]


def extract_block(
    weight: Tensor, sens: Tensor, shape: tuple[int, int]
) -> tuple[Tensor, tuple[int, int]]:
    """The ``shape`` block of ``weight`` with maximal summed sensitivity, and its offset.

    A target dimension larger than the source's (it happens with GQA head counts or wider FFNs)
    takes the whole source dimension, zero-padded at the end.
    """
    rows, cols = min(shape[0], weight.shape[0]), min(shape[1], weight.shape[1])
    r0, c0 = best_block(sens, rows, cols)
    block = weight.detach().float()[r0 : r0 + rows, c0 : c0 + cols]
    if (rows, cols) != tuple(shape):
        block = F.pad(block, (0, shape[1] - cols, 0, shape[0] - rows))
    return block, (r0, c0)


def lora_factors(block: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Rank-r SVD factors ``B = U_r Σ_r`` (m × r) and ``A = V_rᵀ`` (r × n); zero columns/rows pad
    the factors when the block's rank bound min(m, n) is below r."""
    u, s, vh = torch.linalg.svd(block.float(), full_matrices=False)
    k = min(r, s.shape[0])
    b = torch.zeros(block.shape[0], r)
    a = torch.zeros(r, block.shape[1])
    b[:, :k] = u[:, :k] * s[:k]
    a[:k] = vh[:k]
    return b, a


def svd_flops(m: int, n: int) -> float:
    """Thin SVD of an m × n matrix, Golub–Van Loan R-SVD estimate ``6 M N² + 20 N³`` (M ≥ N)."""
    big, small = max(m, n), min(m, n)
    return 6.0 * big * small**2 + 20.0 * small**3


def _init_adapter(
    module: nn.Module, src_weight: Tensor, src_sens: Tensor
) -> tuple[list[int], float]:
    """Set one LoRA pair (peft ``LoraLayer``) from the most sensitive block of ``src_weight`` and
    subtract ``BA`` from its base weight: the block's offset and the FLOPs spent."""
    adapter = module.active_adapters[0]
    lora_a, lora_b = module.lora_A[adapter], module.lora_B[adapter]
    # GPT-2's Conv1D stores (in, out) (peft's fan_in_fan_out): work on (out, in) views
    view = (lambda w: w.T) if getattr(module, "fan_in_fan_out", False) else (lambda w: w)
    base_w, src_w = view(module.get_base_layer().weight), view(src_weight)
    block, offset = extract_block(src_w, view(src_sens), tuple(base_w.shape))
    b, a = lora_factors(block, lora_a.weight.shape[0])
    with torch.no_grad():
        lora_a.weight.copy_(a)
        lora_b.weight.copy_(b / module.scaling[adapter])  # peft adds lora_B lora_A · scaling
        # sensitivities live on the CPU; the delta goes to the weight's device and dtype
        base_w.sub_((b @ a).to(device=base_w.device, dtype=base_w.dtype))
    return list(offset), svd_flops(*block.shape) + 4.0 * src_w.numel()  # + the table


def inject(
    peft_model: nn.Module, source: nn.Module, sens: list[dict[str, Tensor]], selected: Sequence[int]
) -> dict:
    """Set every LoRA pair of target layer j from source layer ``selected[j-1]`` and subtract
    ``BA`` from the base weight. Returns ``{"offsets": {...}, "flops": ..., "skipped": [...]}``."""
    from peft.tuners.lora import LoraLayer  # slow to import; only when adapters are injected

    src_blocks = surgery.decoder_layers(source)
    out = {"offsets": {}, "flops": 0.0, "skipped": []}
    for j, layer in enumerate(surgery.decoder_layers(peft_model), start=1):
        src_layer, src_sens = src_blocks[selected[j - 1] - 1], sens[selected[j - 1] - 1]
        for name, module in layer.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            try:
                src_mod = src_layer.get_submodule(name)
            except AttributeError:
                out["skipped"].append(f"{j}.{name}")
                continue
            offset, flops = _init_adapter(module, src_mod.weight, src_sens[f"{name}.weight"])
            out["offsets"][f"{j}.{name}"] = offset
            out["flops"] += flops
    return out


# --------------------------------------------------------------------------- entry point


def transfer(
    source: nn.Module,
    target: nn.Module,
    train_records: Sequence[dict],
    attribution_records: Sequence[dict],
    config: SeekingConfig,
    tokenizer,
    resume: bool = False,
    stop_after_stage: int | None = None,
    post_train: bool = True,
) -> TransferResult:
    """Seeking from ``source`` into ``target`` (trained in place; see module docstring).

    ``attribution_records`` are the seed examples of the sensitivity pass; ``train_records``
    the LoRA post-training data. ``stop_after_stage`` caps the optimizer steps;
    ``post_train=False`` returns right after the injection (the target unchanged in function,
    still wrapped by peft with its initialised adapters: ``result.model`` is the PeftModel).
    """
    begin("seeking", source, target, config, SeekingConfig, resume)
    t_start = time.perf_counter()
    flags = requires_grad_flags(target)
    with costs.PeakMemory() as peak:
        sens, located = _sensitivity_stage(source, target, attribution_records, config, tokenizer)
        stages = [located]
        totals, selected = located["layer_totals"], located["selected_source_layers"]
        pairing = _pairing(source, target, selected)
        t_extract = time.perf_counter()
        peft_model, params = add_lora(target, config.lora_r, config.lora_alpha)
        try:
            stages.append(_extract_stage(peft_model, source, sens, selected, t_extract))
            del sens  # a float32 copy of the source blocks; post-training does not need it
            if not post_train:
                cost = summarize(stages, time.perf_counter() - t_start, peak)
                return _result(peft_model, pairing, totals, stages, cost, config)
            stages.append(
                _post_train(peft_model, params, train_records, config, tokenizer, stop_after_stage)
            )
            merge_lora(peft_model)
        finally:
            if post_train:
                restore_flags(target, flags)
    cost = summarize(
        stages,
        time.perf_counter() - t_start,
        peak,
        train_steps=stages[-1]["steps"],
        **costs.parameter_counts(target),
    )
    return _result(target, pairing, totals, stages, cost, config)


def _sensitivity_stage(
    source: nn.Module,
    target: nn.Module,
    seed_records: Sequence[dict],
    config: SeekingConfig,
    tokenizer,
) -> tuple[list[dict[str, Tensor]], dict]:
    """Steps 1-2: the source's sensitivities on the seed examples, and the stage record with the
    layer totals and the selected source layers."""
    t0 = time.perf_counter()
    seed = tokenize(seed_records, tokenizer, config)
    sb, pad = config.sensitivity_batch_size, pad_id(tokenizer)
    seed_batches = [collate(seed[i : i + sb], pad) for i in range(0, len(seed), sb)]
    sens = sensitivity(source, seed_batches)
    totals = layer_totals(sens)
    src_shape = costs.model_shape(source)
    all_blocks = costs.TrainableSpec(trained_blocks=frozenset(range(surgery.num_layers(source))))
    record = {
        "stage": "sensitivity",
        "layer_totals": totals,
        "selected_source_layers": select_layers(totals, surgery.num_layers(target)),
        "seed_examples": len(seed),
        "wall_s": time.perf_counter() - t0,
        "tokens": sum(b["input_ids"].numel() for b in seed_batches),
        "real_tokens": sum(int(b["attention_mask"].sum()) for b in seed_batches),
        "flops": sum(train_flops(src_shape, all_blocks, b) for b in seed_batches),
    }
    return sens, record


def _pairing(source: nn.Module, target: nn.Module, selected: list[int]) -> Pairing:
    return Pairing(
        {j: s for j, s in enumerate(selected, start=1)},
        "seeking-sensitivity",
        surgery.num_layers(source),
        surgery.num_layers(target),
        ("top-L_target source layers by total |θ⊙∇θ|, in depth order",),
    )


def _extract_stage(
    peft_model: nn.Module,
    source: nn.Module,
    sens: list[dict[str, Tensor]],
    selected: list[int],
    t0: float,
) -> dict:
    """Steps 3-4: LoRA adapters initialised from the source blocks; the stage record (its wall
    time counted from ``t0``, before the adapters were added)."""
    injected = inject(peft_model, source, sens, selected)
    return {
        "stage": "extract",
        "wall_s": time.perf_counter() - t0,
        "flops": injected["flops"],
        "offsets": injected["offsets"],
        "skipped": injected["skipped"],
    }


def _post_train(
    peft_model: nn.Module,
    params: list[nn.Parameter],
    train_records: Sequence[dict],
    config: SeekingConfig,
    tokenizer,
    stop_after_stage: int | None,
) -> dict:
    """Step 5: LoRA post-training on the train records; the stage record of :func:`train`."""
    target = surgery.unwrap(peft_model)
    examples = tokenize(train_records, tokenizer, config)
    schedule = cap_steps(epoch_schedule(len(examples), config), stop_after_stage)
    shape, spec = costs.model_shape(target), spec_for(target, "lora", config.lora_r)

    def loss(batch):
        ce = ce_per_example(peft_model, batch)
        return ce, {"ce": ce}

    return train(
        [{"params": params}],
        schedule,
        examples,
        pad_id(tokenizer),
        loss,
        config,
        lambda b: train_flops(shape, spec, b),
        desc="seeking",
    )


def _result(
    model: nn.Module,
    pairing: Pairing,
    totals: list[float],
    stages: list[dict],
    cost: dict,
    config: SeekingConfig,
) -> TransferResult:
    return TransferResult(
        model=model,
        pairing=pairing,
        scores=totals,
        stages=stages,
        cost=cost,
        config={"method": "seeking", **asdict(config)},
    )


__all__ = [
    "SeekingConfig",
    "best_block",
    "block_sums",
    "extract_block",
    "inject",
    "lora_factors",
    "select_layers",
    "sensitivity",
    "transfer",
]
