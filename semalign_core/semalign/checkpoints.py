"""Stage checkpoints of a SemAlign run (the trained layer + progress, written atomically after
every stage) and the keys that tie checkpoints and caches to their config, models and data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from semalign_core.errors import InvalidParameterError
from semalign_core.records import atomic_write
from semalign_core.semalign.config import SemAlignConfig
from semalign_core.semalign.pairing import Pairing

PROGRESS_FILE = "progress.json"


def digest(*parts) -> str:
    """sha256 over tensors (shape, dtype and bytes) and JSON-able values, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    sd = model.state_dict()
    return digest(*[x for name in sorted(sd) for x in (name, sd[name])])


def _stage_path(config: SemAlignConfig, stage: int) -> Path:
    return Path(config.checkpoint_dir) / f"stage-{stage:03d}.safetensors"


def progress_record(
    run_key: str, stages: list[dict], scores: list[float] | None, pairing: Pairing
) -> dict:
    """What a resumed run needs besides the layers: the key, stage records, the pairing."""
    return {
        "run_key": run_key,
        "completed_stage": stages[-1]["stage"],
        "stages": stages,
        "scores": scores,
        "pairing": {str(j): s for j, s in pairing.target_to_source.items()},
        "pairing_strategy": pairing.strategy,
        "pairing_notes": list(pairing.notes),
    }


def save_stage(config: SemAlignConfig, stage: int, layer: nn.Module, progress: dict) -> None:
    sd = {k: v.detach().contiguous().clone() for k, v in layer.state_dict().items()}
    atomic_write(_stage_path(config, stage), lambda tmp: save_file(sd, tmp))
    text = json.dumps(progress, indent=1)
    path = Path(config.checkpoint_dir) / PROGRESS_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_progress(config: SemAlignConfig, run_key: str) -> dict | None:
    """The progress of the run ``run_key`` in ``config.checkpoint_dir`` (None: nothing there);
    InvalidParameterError when another run wrote it."""
    if not config.checkpoint_dir:
        return None
    path = Path(config.checkpoint_dir) / PROGRESS_FILE
    if not path.is_file():
        return None
    progress = json.loads(path.read_text())
    if progress.get("run_key") != run_key:
        raise InvalidParameterError(
            f"checkpoint in {config.checkpoint_dir} was made by a different run (config, models "
            "or data); use another checkpoint_dir or resume=False"
        )
    return progress


def saved_pairing(progress: dict, n_source: int, n_target: int) -> Pairing:
    """The pairing a checkpointed run used (attribution is not repeated on resume); a target
    deeper than its source can only have been paired many-to-one."""
    table = {int(j): s for j, s in progress["pairing"].items()}
    notes = tuple(progress["pairing_notes"])
    strategy = progress["pairing_strategy"]
    return Pairing(table, strategy, n_source, n_target, notes, n_target > n_source)


def restore_layers(config: SemAlignConfig, blocks: nn.ModuleList, done: int) -> None:
    """Load the trained layers 1..done of a resumed run into ``blocks``."""
    for k in range(1, done + 1):
        blocks[k - 1].load_state_dict(load_file(str(_stage_path(config, k))))
