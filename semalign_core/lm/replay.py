"""Replay decoder blocks on any hidden state with exactly the arguments the model passes them.

SALF trains a suffix of the blocks on cached prefix states and SemAlign trains one block at a
time; both must run blocks as ``model(input_ids, attention_mask)`` runs them: each block's
attention mask for its layer type (causal or sliding window), the rotary embeddings (Gemma 3 has
a local and a global one), position ids and cache position. These are recorded from the model's
own forward (:class:`semalign_core.lm.nethook.record_block_calls`), never rebuilt from
transformers internals, so every supported architecture replays the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import nethook, surgery


class BlockReplay:
    """Blocks ``start..stop−1`` of ``model`` on any state shaped like one batch's hidden states::

        replay = BlockReplay(model, input_ids, attention_mask)
        h = replay.run(replay.embedding_output, stop=3)  # the state entering block 3
        logits = surgery.Unembed(model)(replay.run(h, start=3))  # == model(...).logits

    Construction runs only the embedding and the mask preparation, under the caller's grad mode
    (with grad, ``embedding_output`` keeps the embeddings' graph). ``stop`` limits the recorded
    blocks; ``forward_kwargs`` go to the model's forward (e.g. ``position_ids``); KV caching is
    off. States given to :meth:`run` must have the batch and sequence shape of ``input_ids``.
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stop: int | None = None,
        **forward_kwargs,
    ):
        self.blocks = surgery.decoder_layers(model)
        inputs = {**forward_kwargs, "input_ids": input_ids, "attention_mask": attention_mask}
        # Through the backbone, not the LM's own call: the recording never reaches the head,
        # and under FSDP (``salf/finetune.py``) the LM's call is the root unit's, made once per
        # step around all of it.
        with nethook.record_block_calls(model, stop) as recorded:
            surgery.backbone(model)(**inputs, use_cache=False)
        self.embedding_output: torch.Tensor = recorded.embedding_output
        self.calls: list[nethook.BlockCall] = recorded.calls

    @property
    def num_blocks(self) -> int:
        """How many blocks can be replayed (the model's depth unless ``stop`` was given)."""
        return len(self.calls)

    def run_block(self, k: int, hidden: torch.Tensor) -> torch.Tensor:
        """Block ``k`` (0-based) on ``hidden``, the state entering it: the state leaving it."""
        args, kwargs = self.calls[k]
        return nethook.first_tensor(self.blocks[k](hidden, *args, **kwargs))

    def run(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start..stop−1`` on ``hidden``, the state entering block ``start``."""
        stop = self.num_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.num_blocks:
            raise InvalidParameterError(
                f"blocks {start}..{stop} are outside the {self.num_blocks} recorded blocks"
            )
        for k in range(start, stop):
            hidden = self.run_block(k, hidden)
        return hidden
