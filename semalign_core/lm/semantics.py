"""Semantic bases and the SemAlign maps between two models' latent spaces (spec, Method 1, 2, 5).

Pure tensor mathematics: every function takes weights and hidden states, none loads a model
(the two gain helpers read a loaded model's final norm and head through :mod:`.surgery`).

Notation (spec): an LM head ``W`` (|V| x d) turns a hidden state into logits, ``z = W h``.
The *semantic bases* are the rows of ``S = pinv(W^T)`` (|V| x d), one per token, unit-normalised.

Why ``pinv(W^T)`` and not ``pinv(W)``: ``pinv(W)`` is d x |V| (one *column* per token), while
``pinv(W^T) = pinv(W)^T`` is |V| x d, one *row* per token, indexed like ``W``. When W has full
column rank, ``S^T W = pinv(W) W = I_d``, so ``h = S^T z = sum_v z_v s_v``: the rows of S are the
dual frame of the head's rows, and a hidden state is the logit-weighted sum of its tokens' bases.
That is what makes row v a "semantic basis" of token v, and why two models with index-aligned
vocabularies can exchange coefficients over those bases.

Decomposition (spec): ``a = S_src h / ||h||`` (cosine coefficients of h against every unit basis).
Recomposition: ``h~ = S_tgt^T a``. With identical heads this returns h's direction exactly when
the unit bases form a tight frame (``S^T S`` proportional to I) and approximately for a nearly
isotropic head; see ``decomposition_fidelity``.

Two alternatives beside that default (``SemAlignConfig.decomposition``, docs/decisions.md):

* dual: the exact, minimum-norm coefficients ``a = pinv(S_src^T) h/||h||`` (``S_src^T a =
  h/||h||``), recombined as ``S_tgt^T a``; as one d_src x d_tgt map ``(S_src^T S_src)^+ S_src^T
  S_tgt`` (``dual_map``), so a model mapped onto itself gets back h/||h||.
* gain-folded: the bases of ``W diag(g)`` (``gain_folded_head``), g the final norm's gain, so
  moving g between the norm and the head (same function) no longer moves the bases.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from semalign_core import paths
from semalign_core.errors import IncompatibleModelsError, InvalidParameterError
from semalign_core.lm import surgery
from semalign_core.records import atomic_write

EPS = 1e-12
DEFAULT_CHUNK = 8192
_LRU_SIZE = 2  # source + target heads; at paper scale each S is ~0.65 GB of fp32
_LRU: OrderedDict[str, Tensor] = OrderedDict()  # sha256 key -> raw (un-normalised) S on CPU

Rescale = Literal["none", "source_norm", "target_norm"]


# --------------------------------------------------------------------------- semantic bases


def _unit_rows(m: Tensor) -> Tensor:
    return m / m.norm(dim=-1, keepdim=True).clamp_min(EPS)


def weight_key(weight: Tensor) -> str:
    """sha256 of a weight's bytes, shape and dtype: a changed head never reuses a stale cache."""
    w = weight.detach().contiguous().cpu()
    digest = hashlib.sha256()
    digest.update(f"{tuple(w.shape)}|{w.dtype}|pinvT-v1".encode())
    digest.update(w.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _lru_get(key: str) -> Tensor | None:
    if key in _LRU:
        _LRU.move_to_end(key)
        return _LRU[key]
    return None


def _lru_put(key: str, value: Tensor) -> None:
    _LRU[key] = value
    _LRU.move_to_end(key)
    while len(_LRU) > _LRU_SIZE:
        _LRU.popitem(last=False)


def clear_bases_cache() -> None:
    """Empty the in-process cache (the disk cache is left alone)."""
    _LRU.clear()


def _load_disk(path: Path) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        return load_file(str(path))["bases"]
    except Exception:  # a truncated or foreign file: recompute rather than fail
        return None


def _save_disk(path: Path, value: Tensor, key: str) -> None:
    atomic_write(
        path,
        lambda tmp: save_file(
            {"bases": value.contiguous()}, tmp, metadata={"sha256": key, "kind": "pinv(W^T) fp32"}
        ),
    )


def semantic_bases(
    lm_head_weight: Tensor,
    cache_dir: str | os.PathLike | None = None,
    normalize: bool = True,
    disk_cache: bool = True,
) -> Tensor:
    """Semantic bases ``S = pinv(W^T)`` (|V| x d, fp32) of an LM head ``W`` (|V| x d).

    Computed once in fp32 on the weight's device and cached in-process (LRU) and on disk under
    ``cache_dir`` (default ``paths.cache_dir()/"bases"``), keyed by a sha256 of the weight's
    bytes, shape and dtype. The raw pseudo-inverse is cached; ``normalize`` (default) returns it
    with unit rows. Returns a fresh tensor on the weight's device each call.
    """
    if lm_head_weight.dim() != 2:
        raise InvalidParameterError(
            f"lm_head_weight must be 2-D (|V| x d), got shape {tuple(lm_head_weight.shape)}"
        )
    key = weight_key(lm_head_weight)
    raw = _lru_get(key)
    path = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "bases"
    path = path / f"{key}.safetensors"
    if raw is None and disk_cache:
        raw = _load_disk(path)
        if raw is not None and tuple(raw.shape) != tuple(lm_head_weight.shape):
            raw = None
    if raw is None:
        w = lm_head_weight.detach().to(torch.float32)
        raw = torch.linalg.pinv(w.T).cpu()
        if disk_cache:
            _save_disk(path, raw, key)
    _lru_put(key, raw)
    out = raw.to(lm_head_weight.device)
    return _unit_rows(out) if normalize else out.clone()


def input_side_bases(embedding_weight: Tensor) -> Tensor:
    """Unit rows of the input embedding (|V| x d, fp32): the Fig. 2 comparison bases."""
    return _unit_rows(embedding_weight.detach().to(torch.float32))


# Final norms that multiply by (1 + weight): Gemma's RMSNorm stores the gain's offset from one.
_UNIT_OFFSET_GAIN = ("gemma2", "gemma3")


def final_norm_gain(model: nn.Module) -> Tensor:
    """The per-channel gain g (d, fp32) of the model's final norm: ``final_norm(h) = g * n(h)
    (+ bias)``, n the norm without its weight; ones for a norm without a weight.

    A LayerNorm's bias is left out: through the head it adds the constant logits ``W b``, which
    do not depend on h and so play no part in the bases.
    """
    weight = getattr(surgery.final_norm(model), "weight", None)
    if weight is None:
        return torch.ones(surgery.hidden_size(model))
    gain = weight.detach().to(torch.float32).cpu()
    return gain + 1.0 if surgery.architecture(model) in _UNIT_OFFSET_GAIN else gain


def gain_folded_head(model: nn.Module) -> Tensor:
    """``W diag(g)`` (|V| x d, fp32): the LM head with the final norm's gain folded in.

    The logits are ``W (g * n(h)) = (W diag(g)) n(h)``, so this head (and its bases) is the same
    whether a checkpoint keeps g in the norm or has it folded into the head (a change that leaves
    the model's function identical); the head ``W`` alone is not.
    """
    head = surgery.unembedding(model).weight.detach().to(torch.float32)
    return head * final_norm_gain(model).to(head.device)


# --------------------------------------------------------------------------- decompose / recompose


def _compute_dtype(*ts: Tensor) -> torch.dtype:
    """fp32, or fp64 when an input already is (tests)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check_chunk(chunk_size: int) -> int:
    if chunk_size is None or chunk_size <= 0:
        raise InvalidParameterError(f"chunk_size must be a positive integer, got {chunk_size}")
    return int(chunk_size)


def _match_vocab(bases_src: Tensor, bases_tgt: Tensor, vocab_limit: int | None) -> int:
    v_src, v_tgt = bases_src.shape[0], bases_tgt.shape[0]
    if vocab_limit is None:
        if v_src != v_tgt:
            raise IncompatibleModelsError(
                f"vocabulary sizes differ: source {v_src}, target {v_tgt} "
                f"(pass vocab_limit={min(v_src, v_tgt)} to use the shared first rows)"
            )
        return v_src
    if not 0 < vocab_limit <= min(v_src, v_tgt):
        raise IncompatibleModelsError(
            f"vocab_limit={vocab_limit} is outside 1..{min(v_src, v_tgt)} "
            f"(source {v_src}, target {v_tgt} tokens)"
        )
    return int(vocab_limit)


def decompose(h: Tensor, bases_src: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Cosine coefficients ``a = S h / ||h||`` of h (..., d) against every basis row: (..., V).

    ``bases_src`` should have unit rows (``semantic_bases`` default); a zero h gives a = 0.
    """
    chunk_size = _check_chunk(chunk_size)
    if h.shape[-1] != bases_src.shape[-1]:
        raise InvalidParameterError(
            f"hidden size {h.shape[-1]} does not match bases width {bases_src.shape[-1]}"
        )
    dt = _compute_dtype(h, bases_src)
    x = h.to(dt)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)
    n_vocab = bases_src.shape[0]
    out = x.new_empty(*x.shape[:-1], n_vocab)
    for start in range(0, n_vocab, chunk_size):
        s = bases_src[start : start + chunk_size].to(device=x.device, dtype=dt)
        out[..., start : start + s.shape[0]] = x @ s.T
    return out


def recompose(a: Tensor, bases_tgt: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """``h~ = S^T a``: coefficients (..., V) recombined with the bases (V, d): (..., d)."""
    chunk_size = _check_chunk(chunk_size)
    if a.shape[-1] != bases_tgt.shape[0]:
        raise IncompatibleModelsError(
            f"vocabulary sizes differ: coefficients {a.shape[-1]}, bases {bases_tgt.shape[0]}"
        )
    dt = _compute_dtype(a, bases_tgt)
    a = a.to(dt)
    out = a.new_zeros(*a.shape[:-1], bases_tgt.shape[-1])
    for start in range(0, bases_tgt.shape[0], chunk_size):
        s = bases_tgt[start : start + chunk_size].to(device=a.device, dtype=dt)
        out += a[..., start : start + s.shape[0]] @ s
    return out


def _rescale(h_tilde: Tensor, h_src: Tensor, rescale: str, target_norm) -> Tensor:
    if rescale == "none":
        return h_tilde
    direction = h_tilde / h_tilde.norm(dim=-1, keepdim=True).clamp_min(EPS)
    if rescale == "source_norm":
        return direction * h_src.to(h_tilde.dtype).norm(dim=-1, keepdim=True)
    if rescale == "target_norm":
        if target_norm is None:
            raise InvalidParameterError(
                "rescale='target_norm' needs target_norm (a float or a tensor of norms)"
            )
        norm = torch.as_tensor(target_norm, dtype=h_tilde.dtype, device=h_tilde.device)
        if norm.dim() == h_tilde.dim() - 1 and norm.dim() > 0:
            norm = norm.unsqueeze(-1)
        return direction * norm
    raise InvalidParameterError(
        f"rescale must be 'none', 'source_norm' or 'target_norm', got {rescale!r}"
    )


def transfer_state(
    h_src: Tensor,
    bases_src: Tensor,
    bases_tgt: Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    rescale: Rescale = "none",
    target_norm: float | Tensor | None = None,
    vocab_limit: int | None = None,
) -> Tensor:
    """Map source hidden states (..., d_src) into the target space (..., d_tgt).

    ``h~ = S_tgt^T (S_src h / ||h||)``, chunked over the vocabulary: the (..., V) coefficients
    are never held whole (peak extra memory is (..., chunk_size)). ``vocab_limit`` uses only
    the first N rows of both bases (e.g. a 32,001-token teacher and a 32,000-token student).
    ``rescale``: "none" (raw Sᵀa), "source_norm" (h~ gets ||h_src||), "target_norm" (h~ gets
    ``target_norm``, a float or per-position norms of shape (...,) or (..., 1)).
    """
    chunk_size = _check_chunk(chunk_size)
    n_vocab = _match_vocab(bases_src, bases_tgt, vocab_limit)
    if h_src.shape[-1] != bases_src.shape[-1]:
        raise InvalidParameterError(
            f"hidden size {h_src.shape[-1]} does not match source bases width {bases_src.shape[-1]}"
        )
    dt = _compute_dtype(h_src, bases_src, bases_tgt)
    x = h_src.to(dt)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)
    out = x.new_zeros(*x.shape[:-1], bases_tgt.shape[-1])
    for start in range(0, n_vocab, chunk_size):
        stop = min(start + chunk_size, n_vocab)
        s_src = bases_src[start:stop].to(device=x.device, dtype=dt)
        s_tgt = bases_tgt[start:stop].to(device=x.device, dtype=dt)
        out += (x @ s_src.T) @ s_tgt
    return _rescale(out, h_src, rescale, target_norm)


def decomposition_fidelity(h: Tensor, bases: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Cosine between h (..., d) and its decompose→recompose reconstruction with the same bases.

    Returns (...) cosines (average them per layer for Fig. 2). ``a = S h/||h||`` and
    ``h~ = S^T a = (S^T S) h/||h||``, so the cosine is 1 exactly when ``S^T S`` is proportional
    to I on h (a tight frame), stays high for nearly isotropic bases (pinv of a real head), and
    drops towards 0 when the bases miss h's directions (rank < d) or are dominated by a shared
    direction (anisotropic input embeddings).
    """
    h_tilde = transfer_state(h, bases, bases, chunk_size=chunk_size)
    return F.cosine_similarity(h_tilde, h.to(h_tilde.dtype), dim=-1, eps=EPS)


def dual_map(
    bases_src: Tensor,
    bases_tgt: Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    vocab_limit: int | None = None,
) -> Tensor:
    """``M = (S_src^T S_src)^+ S_src^T S_tgt`` (d_src x d_tgt, fp32): the dual decomposition.

    The dual coefficients ``a = pinv(S_src^T) x`` (x = h/||h||) are the minimum-norm a with
    ``S_src^T a = x`` exactly, and ``pinv(S^T) = S (S^T S)^+`` for any S, so ``h~ = S_tgt^T a =
    x M`` in the row convention of ``transfer_state``. Both d x d products are the chunked sums
    of ``transfer_state`` on the identity (|V| x |V| is never formed), in fp64 because the Gram
    matrix's condition number is that of S squared; the result is rounded to fp32 once.
    With ``bases_tgt = bases_src`` of rank d_src, M is the identity.
    """
    eye = torch.eye(bases_src.shape[1], dtype=torch.float64, device=bases_src.device)
    gram = transfer_state(eye, bases_src, bases_src, chunk_size, vocab_limit=vocab_limit)
    cross = transfer_state(eye, bases_src, bases_tgt, chunk_size, vocab_limit=vocab_limit)
    return (torch.linalg.pinv(gram, hermitian=True) @ cross).to(torch.float32)


# --------------------------------------------------------------------------- logits


def aligned_logits(
    h_tilde: Tensor,
    final_norm: Callable[[Tensor], Tensor] | None,
    lm_head_weight: Tensor,
    softcap: float | None = None,
    lm_head_bias: Tensor | None = None,
) -> Tensor:
    """Target-space aligned logits ``z~ = lm_head(final_norm(h~))`` (spec reading 1).

    ``final_norm`` is the target's final norm module (or None for identity); ``softcap`` is a
    final-logit soft cap (``surgery.softcap_logits``) when the model uses one. With the target's
    own norm, head and cap this is ``surgery.Unembed(target)(h~)``.
    """
    x = final_norm(h_tilde) if final_norm is not None else h_tilde
    z = F.linear(x.to(lm_head_weight.dtype), lm_head_weight, lm_head_bias)
    return surgery.softcap_logits(z, softcap)


def vds_logits(h: Tensor, bases: Tensor, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Second reading ("VDS logits"): the cosine coefficients ``S h/||h||`` themselves."""
    return decompose(h, bases, chunk_size=chunk_size)


# --------------------------------------------------------------------------- losses


def _masked_mean(per_position: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_position.mean()
    m = mask.to(device=per_position.device, dtype=per_position.dtype).expand_as(per_position)
    return (per_position * m).sum() / m.sum().clamp_min(1.0)


def fisher_quadratic_surrogate(
    z: Tensor,
    z_tilde: Tensor,
    tau: float = 1.0,
    mask: Tensor | None = None,
    tau_squared: bool = False,
) -> Tensor:
    """Fisher-weighted quadratic surrogate of KL(p~ || softmax(z/τ)), mean over unmasked positions.

    ``p~ = softmax(z~/τ)`` and ``z~`` are detached (the source side is the teacher);
    ``δ = (z − z~)/τ`` so that ``L = ½ δᵀ(diag p~ − p~p~ᵀ)δ`` is exactly the second-order
    expansion of the τ-tempered KL around z = z~ (its Hessian in z is (diag p~ − p~p~ᵀ)/τ²).
    Computed in O(|V|) as ½ Var_{p~}(δ) = ½ Σ p~ (δ − Σ p~δ)² (the centred form of
    ½[Σ p~δ² − (Σ p~δ)²], never negative by rounding), in fp32; the V×V matrix is never formed.
    ``tau_squared=True`` multiplies by τ² (Hinton scale, same as ``output_kl``'s default), which
    is the spec's literal formula with the unscaled δ = z − z~.
    """
    if z.shape != z_tilde.shape:
        raise InvalidParameterError(
            f"logit shapes differ: {tuple(z.shape)} vs {tuple(z_tilde.shape)}"
        )
    if tau <= 0:
        raise InvalidParameterError(f"tau must be positive, got {tau}")
    dt = _compute_dtype(z, z_tilde)
    zt = z_tilde.detach().to(dt)
    p = torch.softmax(zt / tau, dim=-1)
    delta = (z.to(dt) - zt) / tau
    centred = delta - (p * delta).sum(dim=-1, keepdim=True)
    per_position = 0.5 * (p * centred.square()).sum(dim=-1)
    loss = _masked_mean(per_position, mask)
    return loss * tau**2 if tau_squared else loss


def output_kl(
    teacher_logits: Tensor,
    student_logits: Tensor,
    tau: float = 1.0,
    mask: Tensor | None = None,
    tau_squared: bool = True,
    vocab_limit: int | None = None,
) -> Tensor:
    """KL(p_teacher || p_student) of next-token distributions at temperature τ, fp32.

    Mean over unmasked positions; multiplied by τ² when ``tau_squared`` (Hinton et al. 2015:
    keeps gradient magnitudes comparable across τ). The teacher side is detached.
    ``vocab_limit`` keeps the first N logits of both (32,001- vs 32,000-token models).
    """
    if vocab_limit is not None:
        teacher_logits, student_logits = (
            teacher_logits[..., :vocab_limit],
            student_logits[..., :vocab_limit],
        )
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise IncompatibleModelsError(
            f"vocabulary sizes differ: teacher {teacher_logits.shape[-1]}, "
            f"student {student_logits.shape[-1]} "
            "(pass vocab_limit to use the shared first tokens)"
        )
    if tau <= 0:
        raise InvalidParameterError(f"tau must be positive, got {tau}")
    dt = _compute_dtype(teacher_logits, student_logits)
    log_p = torch.log_softmax(teacher_logits.detach().to(dt) / tau, dim=-1)
    log_q = torch.log_softmax(student_logits.to(dt) / tau, dim=-1)
    per_position = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    loss = _masked_mean(per_position, mask)
    return loss * tau**2 if tau_squared else loss
