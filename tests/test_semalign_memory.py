"""SemAlign's source supervision holds only the batches the stages train on (its size does not grow
with the training split), and the change left every number of a run bit-identical.

The golden fingerprints below were captured from the code before the change (commit e63e781, one
CPU thread): losses as float.hex, final weights as a sha256 of their bytes. If a torch upgrade
alone changes them, recapture with ``python tests/test_semalign_memory.py`` on the old code.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace

import pytest
import torch

from semalign_core.lm import surgery
from semalign_core.semalign import supervision
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.transfer import transfer

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = SemAlignConfig(steps_per_stage=3, lr=1e-3, batch_size=2, max_length=40, progress=False)
CONFIGS = {
    "acl": BASE,  # attributed pairing, output KL at the last stage, teacher logits cached
    "v2_hidden_teacher": replace(
        BASE, objective="v2", output_kl_every_stage=True, max_cached_logits_bytes=0
    ),
}
GOLDEN = {  # sha256 of the old code's fingerprints (see the module docstring)
    "acl": "bc1f7e10506dd010c08a26df65c586267dcfe52b89422b417e3f83ff6ecb344d",
    "v2_hidden_teacher": "f5e2864508252fff685ae729d7162b07fa700ddae4c6ab55b5101f21ff6592d0",
}


def fingerprint(result) -> dict:
    """Every number a run records that the change must keep: attribution scores, the pairing,
    each stage's losses, and a hash of the trained weights."""
    weights = hashlib.sha256()
    for name, p in sorted(result.model.state_dict().items()):
        weights.update(name.encode())
        weights.update(p.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    keys = ("losses", "layer_losses", "kl_losses", "loss_before", "loss_after")

    def hexed(v):
        return [hexed(x) for x in v] if isinstance(v, list) else (None if v is None else v.hex())

    return {
        "scores": hexed(result.scores),
        "pairing": sorted(result.pairing.target_to_source.items()),
        "stages": [{k: hexed(rec[k]) for k in keys} for rec in result.stages],
        "weights": weights.hexdigest(),
    }


def digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def _run(pair, config):
    src, tgt, tok, train, extract = pair
    return transfer(src, copy.deepcopy(tgt), train, extract, config, tok)


@pytest.fixture(scope="module")
def pair(tiny_transfer_pair):
    return tiny_transfer_pair(n_train=8, n_extract=2)  # 4 batches of 2: batch 3 is never used


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_numbers_are_bit_identical_to_the_code_before_the_change(pair, name):
    got = fingerprint(_run(pair, CONFIGS[name]))
    assert digest(got) == GOLDEN[name], got


def _supervision_bytes(monkeypatch) -> list[int]:
    """Bytes of every Supervision built from now on (states and teacher, wherever they live)."""
    sizes: list[int] = []
    init = supervision.Supervision.__init__

    def spy(self, states, teacher, kind):
        init(self, states, teacher, kind)
        tensors = [t for per in states.values() for t in _values(per)] + _values(teacher or [])
        sizes.append(sum(t.numel() * t.element_size() for t in tensors))

    monkeypatch.setattr(supervision.Supervision, "__init__", spy)
    return sizes


def _values(container) -> list:
    return list(container.values() if isinstance(container, dict) else container)


def test_supervision_does_not_grow_with_the_training_batches(tiny_transfer_pair, monkeypatch):
    """4 and 64 training batches (batch size 1, 2 steps per stage): the same supervision bytes,
    the size of the 2 batches a stage trains on, for every target layer."""
    config = replace(BASE, batch_size=1, steps_per_stage=2, max_length=24, pairing="floor")
    sizes = _supervision_bytes(monkeypatch)
    src, tgt, tok, train, extract = tiny_transfer_pair(n_train=64, n_extract=1)
    for n in (4, 64):
        transfer(src, copy.deepcopy(tgt), train[:n], extract, config, tok)
    assert len(sizes) == 2 and sizes[0] == sizes[1] > 0, sizes
    # An independent bound: the 2 used batches' fp32 states for every target layer plus the
    # teacher's fp32 logits at their supervised positions.
    d, n_layers = surgery.unembedding(tgt).weight.shape[1], surgery.num_layers(tgt)
    vocab = surgery.vocab_size(src)
    bound = 2 * config.max_length * (n_layers * d + vocab) * 4
    assert sizes[1] <= bound, (sizes, bound)


if __name__ == "__main__":  # capture GOLDEN from the code checked out now
    from semalign_core.data import load_transfer
    from semalign_core.models.registry import load_model

    torch.set_num_threads(1)
    s, t = load_model("tiny-source", verbose=False), load_model("tiny-target", verbose=False)
    records = (
        load_transfer("gsm", split, limit=n).records for split, n in (("align", 8), ("extract", 2))
    )
    smoke = (s.model, t.model, s.tokenizer, *records)
    for key, cfg in sorted(CONFIGS.items()):
        print(f'    "{key}": "{digest(fingerprint(_run(smoke, cfg)))}",')
