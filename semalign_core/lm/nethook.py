"""Capture hidden states of decoder blocks with forward hooks (a small baukit ``nethook``).

One context manager, :func:`capture_hidden`, hooks the decoder blocks found by
:mod:`semalign_core.lm.surgery` and records, per layer k (0-based):

``block_in``   the residual stream entering block k (pre-hook on the block);
``block_out``  the residual stream leaving block k (first item when the block returns a tuple);
``attn_out``   what block k adds to the residual for attention, before the add;
``mlp_out``    what block k adds to the residual for the MLP, before the add;
``embed``      the embedding as layer 0 sees it = ``block_in`` of layer 0 (stored under key 0).
               For Gemma this includes the sqrt(hidden_size) scaling, which is why it is not
               taken from the embedding module.

``attn_out``/``mlp_out`` per architecture (see ``surgery.attention_residual_module``):
llama/mistral/qwen2: ``self_attn``/``mlp`` outputs; gemma2/gemma3: outputs of the post-sublayer
norms ``post_attention_layernorm``/``post_feedforward_layernorm``; gpt2: ``attn``/``mlp``
outputs; gpt_neox: ``post_attention_dropout``/``post_mlp_dropout`` outputs. With these,
``block_out == block_in + attn_out + mlp_out`` holds in every supported architecture, sequential
or parallel residual (GPT-NeoX's ``use_parallel_residual``).

Relation to ``output_hidden_states=True`` (transformers 4.57, all supported architectures):
``hidden_states[0] == block_in[0]`` and ``hidden_states[k+1] == block_out[k]`` for k < L-1, but
``hidden_states[L]`` is the *final-normed* last state, not ``block_out[L-1]``.

Hooks are always removed on exit, exceptions included. A module called twice in one forward
(weight sharing, gradient-checkpoint recomputation) keeps the last call's tensor.

:class:`record_block_calls` records instead the arguments each block receives (masks, rotary
embeddings, positions) without running the blocks; :mod:`semalign_core.lm.replay` replays them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from semalign_core.errors import InvalidParameterError
from semalign_core.lm import surgery

POINTS = ("embed", "block_in", "block_out", "attn_out", "mlp_out")


class StopForward(Exception):
    """Raised by a hook after the deepest requested layer, to skip the rest of the forward pass."""


def first_tensor(output) -> torch.Tensor:
    """The hidden state in a block's or sublayer's output (a tuple in some architectures)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class Trace:
    """Captured states: ``trace[point][k]`` is the (batch, seq, d) tensor of layer k."""

    def __init__(self, points: Sequence[str], layers: Sequence[int], n_layers: int):
        self.points = tuple(points)
        self.layers = tuple(layers)
        self.n_layers = n_layers
        self._states: dict[str, dict[int, torch.Tensor]] = {p: {} for p in self.points}

    def __getitem__(self, point: str) -> dict[int, torch.Tensor]:
        if point not in self._states:
            raise InvalidParameterError(
                f"point {point!r} was not captured; captured: {', '.join(self.points)}"
            )
        return self._states[point]

    def __contains__(self, point: str) -> bool:
        return point in self._states

    def stack(self, point: str) -> torch.Tensor:
        """(n_layers_captured, batch, seq, d) in layer order."""
        states = self[point]
        if not states:
            raise InvalidParameterError(
                f"nothing captured for point {point!r} (did the forward run?)"
            )
        return torch.stack([states[k] for k in sorted(states)])

    def latent_states(self) -> torch.Tensor:
        """The L+1 latent spaces (L+1, batch, seq, d): block_in of layer 0, then every block_out."""
        outs = self._states.get("block_out", {})
        first = self._states.get("block_in", {}).get(0)
        if first is None:
            first = self._states.get("embed", {}).get(0)
        if first is None or sorted(outs) != list(range(self.n_layers)):
            raise InvalidParameterError(
                "latent_states needs block_in (or embed) of layer 0 and block_out of every layer: "
                "capture with layers=None and points=('block_in', 'block_out')"
            )
        return torch.stack([first] + [outs[k] for k in range(self.n_layers)])

    def __repr__(self) -> str:
        counts = {p: len(s) for p, s in self._states.items()}
        return f"Trace(layers={list(self.layers)}, captured={counts})"


def _normalise_layers(layers: Iterable[int] | int | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    resolved = []
    for k in layers:
        if not -n_layers <= k < n_layers:
            raise InvalidParameterError(f"layer {k} out of range for a {n_layers}-layer model")
        resolved.append(k % n_layers)
    return sorted(set(resolved))


def _check_points(points: Iterable[str] | str) -> tuple[str, ...]:
    points = (points,) if isinstance(points, str) else tuple(points)
    unknown = [p for p in points if p not in POINTS]
    if unknown or not points:
        raise InvalidParameterError(
            f"unknown capture point(s) {unknown}; choose from {', '.join(POINTS)}"
        )
    return points


class capture_hidden:  # noqa: N801 - used as a function-style context manager
    """Record hidden states at ``points`` of decoder ``layers`` (None = all) during forwards.

    ::

        with capture_hidden(model, layers=[3], points=("block_out",)) as trace:
            model(**inputs)
        h = trace["block_out"][3]

    ``stop_after_deepest=True`` aborts the forward pass right after the deepest requested layer
    (deeper layers and the LM head never run); the abort is swallowed on exit. ``detach=False``
    keeps the autograd graph of captured tensors (attribution, training).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Iterable[int] | int | None = None,
        points: Iterable[str] | str = ("block_out",),
        stop_after_deepest: bool = False,
        detach: bool = True,
    ):
        self.model = model
        self.blocks = surgery.decoder_layers(model)
        self.points = _check_points(points)
        self.layers = _normalise_layers(layers, len(self.blocks))
        self.stop_after_deepest = stop_after_deepest
        self.detach = detach
        self.trace = Trace(self.points, self.layers, len(self.blocks))
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- hook factories ---------------------------------------------------------------------
    def _store(self, point: str, k: int, tensor: torch.Tensor) -> None:
        self.trace[point][k] = tensor.detach() if self.detach else tensor

    def _input_hook(self, points: list[str], k: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            for point in points:
                self._store(point, k, hidden)

        return hook

    def _output_hook(self, point: str, k: int):
        def hook(module, args, output):
            self._store(point, k, first_tensor(output))

        return hook

    @staticmethod
    def _stop_hook(module, args, output):
        raise StopForward

    def _register(self) -> None:
        sublayer = {
            "attn_out": surgery.attention_residual_module,
            "mlp_out": surgery.mlp_residual_module,
        }
        hooked = set(self.layers) | ({0} if "embed" in self.points else set())
        for k in sorted(hooked):
            block = self.blocks[k]
            input_points = ["block_in"] if "block_in" in self.points and k in self.layers else []
            if "embed" in self.points and k == 0:
                input_points.append("embed")
            if input_points:
                hook = self._input_hook(input_points, k)
                self._handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
            if k not in self.layers:
                continue
            for point, find in sublayer.items():
                if point in self.points:
                    hook = self._output_hook(point, k)
                    self._handles.append(find(block).register_forward_hook(hook))
            if "block_out" in self.points:
                self._handles.append(block.register_forward_hook(self._output_hook("block_out", k)))
        if self.stop_after_deepest and hooked:
            # Registered last, so it runs after every capture hook of the deepest block.
            self._handles.append(self.blocks[max(hooked)].register_forward_hook(self._stop_hook))

    # -- context protocol ---------------------------------------------------------------------
    def __enter__(self) -> Trace:
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        return self.trace

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._remove()
        if exc_type is not None:
            # transformers' @check_model_inputs (output_hidden_states / output_attentions)
            # monkey-patches module.forward and restores it only when the forward returns; an
            # aborted forward (StopForward or any error) would leave capture wrappers behind.
            restore_patched_forwards(self.model)
        return exc_type is not None and issubclass(exc_type, StopForward)

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def restore_patched_forwards(model: nn.Module) -> None:
    """Undo the forward wrappers transformers leaves behind when a forward is aborted."""
    for module in model.modules():
        patched = forward = vars(module).get("forward")
        while _is_transformers_capture_wrapper(forward):
            forward = forward.__wrapped__
        if forward is not patched:
            module.forward = forward  # what transformers itself restores after a clean forward


def _is_transformers_capture_wrapper(forward) -> bool:
    """True for the ``wrapped_forward`` closures that ``@check_model_inputs`` installs."""
    code = getattr(forward, "__code__", None)
    return (
        hasattr(forward, "__wrapped__")
        and getattr(code, "co_name", "") == "wrapped_forward"
        and "transformers" in getattr(code, "co_filename", "")
    )


class BlockCall(NamedTuple):
    """The arguments a model passed to one decoder block, the hidden state taken out."""

    args: tuple
    kwargs: dict


@dataclass
class BlockCalls:
    """What :class:`record_block_calls` saw: the state entering block 0 and every block's call."""

    embedding_output: torch.Tensor | None = None
    calls: list[BlockCall] = field(default_factory=list)


class record_block_calls:  # noqa: N801 - used as a function-style context manager
    """Record the arguments the model passes to decoder blocks 0..stop−1, without running them::

        with record_block_calls(model) as recorded:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        h0, (args, kwargs) = recorded.embedding_output, recorded.calls[2]

    Each block's ``forward`` is swapped for a recorder that hands the hidden state on unchanged,
    and the forward ends after block ``stop − 1`` (the abort is swallowed on exit): the pass costs
    the embedding and the mask preparation only. The original forwards are always put back.
    """

    def __init__(self, model: nn.Module, stop: int | None = None):
        self.model = model
        self.blocks = surgery.decoder_layers(model)
        n = len(self.blocks)
        self.stop = n if stop is None else stop
        if not 1 <= self.stop <= n:
            raise InvalidParameterError(f"stop={stop} out of range for a {n}-layer model (1..{n})")
        self.recorded = BlockCalls()
        self._own_forwards: dict[int, object] = {}  # instance-level forwards found (accelerate's)

    def _recorder(self, k: int):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            # The previous recorder returned a tuple; tensor-passing backbones hand it on as is.
            hidden = first_tensor(hidden)
            if k == 0:
                self.recorded.embedding_output = hidden
            self.recorded.calls.append(BlockCall(tuple(args[1:]), kwargs))
            if k == self.stop - 1:
                raise StopForward
            return (hidden,)  # backbones that expect tuples take item 0, the others pass it on

        return forward

    def __enter__(self) -> BlockCalls:
        for k in range(self.stop):
            block = self.blocks[k]
            if "forward" in vars(block):
                self._own_forwards[k] = vars(block)["forward"]
            block.forward = self._recorder(k)
        return self.recorded

    def __exit__(self, exc_type, exc, tb) -> bool:
        for k in range(self.stop):
            if k in self._own_forwards:
                self.blocks[k].forward = self._own_forwards[k]
            else:
                vars(self.blocks[k]).pop("forward", None)
        if exc_type is not None:
            restore_patched_forwards(self.model)
        return exc_type is not None and issubclass(exc_type, StopForward)


def run_to_layers(
    model: nn.Module,
    inputs: dict,
    layers: Iterable[int] | int | None,
    points: Iterable[str] | str = ("block_out",),
    detach: bool = False,
) -> Trace:
    """Run ``model(**inputs)`` only as deep as the deepest of ``layers`` and return the trace.

    Runs under the caller's grad mode (wrap in ``torch.no_grad()`` for inference); with grad
    enabled and ``detach=False`` the captured tensors keep their graph. KV caching is off.
    """
    inputs = {"use_cache": False, **inputs}
    with capture_hidden(model, layers, points, stop_after_deepest=True, detach=detach) as trace:
        model(**inputs)
    return trace
