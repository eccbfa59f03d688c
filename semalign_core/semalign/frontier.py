"""The frontier of stage k: the cached input of target layer k, and layer k as the only trainable
part (full weights or LoRA adapters merged after the stage)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from semalign_core.errors import InvalidParameterError
from semalign_core.lm.replay import BlockReplay
from semalign_core.semalign.config import SemAlignConfig


class LayerInputs:
    """For each batch a stage steps on: the residual stream entering layer ``index`` (0-based,
    no grad), and a replay of the decoder layers with the arguments the model passes them
    (masks, rotary embeddings)::

        inputs = LayerInputs(target, batches, index=0, used=[0, 1])
        h_out = inputs.run_layer(0, inputs.hidden[i], i)  # layer 0 on batch i, with grad
        inputs.advance()  # after layer 0 is trained: inputs.hidden now enter layer 1

    ``used``: the batch indices the stages use (``SemAlignConfig.batches_used``; None: all).
    Only those are kept on the device and advanced, so memory and the advance pass follow the
    steps per stage, not the size of the training split."""

    def __init__(
        self, model: nn.Module, batches: list[dict], index: int, used: Sequence[int] | None = None
    ):
        self.index = index
        self.replays: dict[int, BlockReplay] = {}
        self.hidden: dict[int, Tensor] = {}
        device = next(model.parameters()).device
        with torch.no_grad():
            for i in range(len(batches)) if used is None else used:
                batch = batches[i]
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                replay = BlockReplay(model, ids, mask)
                self.replays[i] = replay
                self.hidden[i] = replay.run(replay.embedding_output, stop=index)

    def run_layer(self, k0: int, hidden: Tensor, i: int) -> Tensor:
        """Layer ``k0`` (0-based) on ``hidden`` with batch i's arguments."""
        return self.replays[i].run_block(k0, hidden)

    def advance(self) -> None:
        """After layer ``index`` is trained: its outputs become the inputs of the next layer."""
        with torch.no_grad():
            self.hidden = {i: self.run_layer(self.index, h, i) for i, h in self.hidden.items()}
        self.index += 1


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Freeze every parameter of ``model`` for the block, then give each parameter that still
    exists (LoRA merges replace some) its ``requires_grad`` back."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        freeze_all(model)
        yield
    finally:
        for n, p in model.named_parameters():
            if n in flags:
                p.requires_grad_(flags[n])


def make_trainable(layer: nn.Module, config: SemAlignConfig) -> list[nn.Parameter]:
    """Unfreeze layer k (or give it LoRA adapters); the caller froze everything else first."""
    if config.trainable == "full":
        for p in layer.parameters():
            p.requires_grad_(True)
        return list(layer.parameters())
    from peft import LoraConfig, inject_adapter_in_model  # slow to import; only LoRA runs need it

    names = sorted(
        {n.rsplit(".", 1)[-1] for n, mod in layer.named_modules() if isinstance(mod, nn.Linear)}
    )
    if not names:
        raise InvalidParameterError(
            f"trainable='lora' needs nn.Linear modules in {type(layer).__name__}"
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=names,
        bias="none",
    )
    inject_adapter_in_model(lora, layer)  # adapters on this layer's Linears only
    params = [p for n, p in layer.named_parameters() if "lora_" in n]
    for n, p in layer.named_parameters():
        p.requires_grad_("lora_" in n)
    return params


def lora_param_count(layer: nn.Module) -> int:
    """Parameters of the LoRA adapters injected into ``layer`` (0 without adapters)."""
    return sum(p.numel() for n, p in layer.named_parameters() if "lora_" in n)


def merge_lora(layer: nn.Module) -> None:
    """Fold the LoRA adapters into the base weights and put the plain Linears back."""
    from peft.tuners.lora import LoraLayer  # slow to import; only LoRA runs need it

    for name, module in list(layer.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = layer.get_submodule(parent_name) if parent_name else layer
            setattr(parent, child, module.get_base_layer())
