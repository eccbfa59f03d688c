"""The frontier of stage k: the cached input of target layer k, and layer k as the only trainable
part (full weights or LoRA adapters merged after the stage)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.lm.nethook import run_to_layers
from semalign_core.semalign.config import SemAlignConfig


def first_output(output) -> Tensor:
    """The hidden states of a decoder layer's output (HF layers may return tuples)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class LayerInputs:
    """For every batch: the residual stream entering layer ``index`` (0-based, no grad) and the
    arguments the model passes to each decoder layer (masks, rotary embeddings), captured once."""

    def __init__(self, model: nn.Module, batches: list[dict], index: int):
        self.model, self.index = model, index
        self.blocks = surgery.decoder_layers(model)
        self.hidden: list[Tensor] = []
        self.layer_args: list[list[tuple[tuple, dict]]] = []
        device = next(model.parameters()).device
        for batch in batches:
            calls: dict[int, tuple[tuple, dict]] = {}
            handles = [
                blk.register_forward_pre_hook(self._recorder(calls, k), with_kwargs=True)
                for k, blk in enumerate(self.blocks)
            ]
            inputs = {
                "input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device),
            }
            try:
                with torch.no_grad():
                    trace = run_to_layers(
                        model, inputs, layers=[index, len(self.blocks) - 1], points=("block_in",)
                    )
            finally:
                for h in handles:
                    h.remove()
            self.hidden.append(trace["block_in"][index])
            self.layer_args.append([calls[k] for k in range(len(self.blocks))])

    @staticmethod
    def _recorder(calls: dict, k: int):
        def hook(module, args, kwargs):
            kwargs = {n: v for n, v in kwargs.items() if n != "hidden_states"}
            calls[k] = (tuple(args[1:]), kwargs)

        return hook

    def run_layer(self, k0: int, hidden: Tensor, i: int) -> Tensor:
        """Layer ``k0`` (0-based) on ``hidden`` with batch i's captured arguments."""
        args, kwargs = self.layer_args[i][k0]
        return first_output(self.blocks[k0](hidden, *args, **kwargs))

    def advance(self) -> None:
        """After layer ``index`` is trained: its outputs become the inputs of the next layer."""
        with torch.no_grad():
            self.hidden = [self.run_layer(self.index, h, i) for i, h in enumerate(self.hidden)]
        self.index += 1


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


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
