"""Fine-tuned teachers and the classification transfer setting (SemAlign Table 2), at smoke scale:
the teacher cache is keyed by its recipe and reused, classification records are the evaluation's
own text and tokens, the training pool never holds an evaluation sentence, Table 2 cells (teacher
and target evaluated once, methods per seed) and its Markdown, and one-line parameter errors."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap

import pytest

from semalign_core.data import build_sft_example
from semalign_core.data.cls_transfer import eval_split, load_cls_transfer
from semalign_core.errors import ArtifactError, InvalidParameterError
from semalign_core.experiments import teachers
from semalign_core.experiments import transfer_tables as transfer_table
from semalign_core.models import teachers as teacher_store
from semalign_core.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    """Made teachers go to a temporary folder (the repo's model cache is left alone)."""
    root = tmp_path_factory.mktemp("teachers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(teacher_store, "teacher_dir", lambda recipe: root / recipe.cache_name())
        yield root


@pytest.fixture(scope="module")
def tokenizer():
    from semalign_core.models.registry import load_tokenizer

    return load_tokenizer("tiny-target")


# --------------------------------------------------------------------------- data


def test_training_pool_is_disjoint_from_the_evaluation_split():
    from semalign_core.data import load_classification
    from semalign_core.data.cls_transfer import _norm

    train, extract = load_cls_transfer("sst2", "train"), load_cls_transfer("sst2", "extract")
    held_out = load_classification("sst2", eval_split("sst2"))
    assert eval_split("sst2") == "dev_subsample" and len(held_out) == 256
    assert len(train) + len(extract) == 872 - 256 and len(extract) == 64
    pool = {_norm(r["text"]) for r in train.records} | {_norm(r["text"]) for r in extract.records}
    assert not pool & {_norm(r["text"]) for r in held_out.records}
    assert not {r["text"] for r in train.records} & {r["text"] for r in extract.records}
    assert (
        load_cls_transfer("sst2", "train", limit=8, seed=3).records
        == load_cls_transfer("sst2", "train", limit=8, seed=3).records
    )


def test_classification_records_are_the_evaluation_text_and_tokens(tokenizer):
    """A training example is lm-eval's (context, continuation) for the gold choice: the same text,
    the same token ids (BOS as the evaluator adds it), the loss exactly on the continuation."""
    from semalign_core.data.cls_transfer import cls_record
    from semalign_core.evaluation.harness import _tokenizer_adds_bos
    from semalign_core.evaluation.tasks.utils import build_docs

    split, docs = build_docs(
        "semalign_cls_sst2",
        {"options": {"semalign_cls_sst2": {"split": "dev_subsample"}}, "limit": 6, "seed": 0},
    )
    assert _tokenizer_adds_bos(tokenizer) == (
        tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    )
    for rec, doc in zip(split.records, docs):
        train_rec = cls_record("sst2", rec)
        assert train_rec["prompt"] == doc["prompt"]
        assert train_rec["completion"] == doc["choices"][doc["gold"]]
        ex = build_sft_example(tokenizer, train_rec["messages"], style="plain", max_length=256)
        # HFLM._encode_pair: whole = tok(context + " " + choice), context = tok(context)
        whole = tokenizer(doc["prompt"] + " " + doc["choices"][doc["gold"]])["input_ids"]
        context = tokenizer(doc["prompt"])["input_ids"]
        assert ex["input_ids"] == whole
        supervised = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        assert supervised == whole[len(context) :] and ex["labels"][: len(context)] == [-100] * len(
            context
        )


def test_plain_style_is_one_of_the_prompt_styles(tokenizer):
    msgs = [
        {"role": "user", "content": "Review: good\nSentiment:"},
        {"role": "assistant", "content": "positive"},
    ]
    assert (
        build_sft_example(tokenizer, msgs, style="plain")["input_ids"][-1] != tokenizer.eos_token_id
    )
    with pytest.raises(InvalidParameterError, match="valid: transfer, model, plain"):
        build_sft_example(tokenizer, msgs, style="chat")


# --------------------------------------------------------------------------- teachers


def test_recipe_key_changes_with_every_field():
    base = teachers.teacher_recipe("smoke", "sst2")
    assert (
        base.base == "tiny-source"
        and teachers.teacher_recipe("cpu", "sst2").base == "smollm2-135m-instruct"
    )
    keys = {base.key()} | {
        teachers.teacher_recipe("smoke", "sst2", **{f: v}).key()
        for f, v in (("lr", 3e-3), ("n_train", 8), ("seed", 1), ("epochs", 2), ("eval_limit", 4))
    }
    assert len(keys) == 6
    assert base.key() == teachers.teacher_recipe("smoke", "sst2").key()  # stable


@pytest.mark.parametrize("profile", sorted(teachers.TEACHER_RECIPES))
def test_recipe_evaluates_like_the_table(profile):
    """Same evaluation protocol as Table 2's cells: the teacher row reuses its evaluation."""
    recipe = teachers.teacher_recipe(profile, "sst2")
    budget = transfer_table.transfer_budget(get_profile(profile), "sst2")
    assert (recipe.eval_limit, recipe.eval_batch_size, 0) == (
        budget.eval_limit,
        budget.eval_batch_size,
        budget.eval_seed,
    )
    assert (
        recipe.base == get_profile(profile).semalign_source
        and recipe.dtype == get_profile(profile).dtype
    )


def test_teacher_is_made_once_and_keyed_by_recipe(teacher_cache, monkeypatch):
    recipe = teachers.teacher_recipe("smoke", "sst2")
    path = teachers.ensure_teacher(recipe, verbose=False)
    info = json.loads((path / teacher_store.MARKER).read_text())
    rep = info["report"]
    assert (
        path.parent == teacher_cache
        and info["key"] == recipe.key()
        and info["recipe"]["lr"] == recipe.lr
    )
    assert rep["steps"] == recipe.n_train // recipe.batch_size and rep["n_train"] == recipe.n_train
    assert (
        rep["before"]["n"] == rep["after"]["n"] == recipe.eval_limit
        and rep["after"]["split"] == "dev_subsample"
    )
    assert rep["data"]["benchmark"] == "classification-transfer/sst2" and rep["data"]["sources"]
    assert (path / "model.safetensors").is_file()

    def no_training(*a, **k):
        raise AssertionError("a cached teacher was fine-tuned again")

    monkeypatch.setattr(teachers, "finetune", no_training)
    assert teachers.ensure_teacher(recipe, verbose=False) == path  # reused
    loaded, report = teachers.load_profile_teacher("smoke", "sst2")
    assert loaded.origin == "finetuned" and report["key"] == recipe.key()
    other = teachers.teacher_recipe("smoke", "sst2", lr=2e-3)
    with pytest.raises(AssertionError, match="fine-tuned again"):
        teachers.ensure_teacher(other, verbose=False)  # another recipe is another teacher
    assert teacher_store.teacher_dir(other) != path
    assert not [p for p in teacher_cache.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_fine_tuning_changes_the_weights(teacher_cache):
    import torch

    from semalign_core.models.registry import load_model

    base = load_model("tiny-source", verbose=False).model
    tuned, _ = teachers.load_profile_teacher("smoke", "sst2")
    blocks = lambda m: {n: p for n, p in m.named_parameters() if ".layers." in n}  # noqa: E731
    assert any(not torch.equal(p, blocks(tuned.model)[n]) for n, p in blocks(base).items())
    emb = "model.embed_tokens.weight"  # trainable="layers": embeddings (and the tied head) stay
    assert torch.equal(
        dict(base.named_parameters())[emb], dict(tuned.model.named_parameters())[emb]
    )


def test_truncate_vocab_keeps_the_first_rows():
    import torch

    from semalign_core.models.registry import load_model

    model = load_model("tiny-target", verbose=False).model
    before = model.get_input_embeddings().weight[:100].clone()
    teacher_store.truncate_vocab(model, 49000)
    assert (
        model.get_input_embeddings().weight.shape[0]
        == 49000
        == model.get_output_embeddings().weight.shape[0]
    )
    assert torch.equal(model.get_input_embeddings().weight[:100], before)


# --------------------------------------------------------------------------- Table 2 cells


@pytest.fixture(scope="module")
def table2(teacher_cache, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEMALIGN_RESULTS_DIR", str(results))
        records = transfer_table.run_table(
            get_profile("smoke"),
            ["semalign", "sft"],
            None,
            [0, 1],
            setting="finetuned",
            verbose=False,
        )
        yield results, records


def test_table2_records(table2):
    results, records = table2
    folder = results / "semalign_finetuned_teacher" / "smoke"
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(
        ["ft-source__teacher__sst2.json", "ft-source__target__sst2.json"]
        + [f"ft-source__{m}__sst2__seed{s}.json" for m in ("semalign", "sft") for s in (0, 1)]
    )
    by_run = {r["run"]: r for r in records}
    teacher = by_run["ft-source__teacher__sst2"]
    assert teacher["seed"] is None and "reused" not in teacher["metrics"]  # evaluated as a row
    # every row holds its per-item scores on the same fixed items (a paired test needs them)
    ids = [item["doc_id"] for item in teacher["metrics"]["items"]]
    assert len(ids) == teacher["metrics"]["n"] == 8
    for record in records:
        assert [item["doc_id"] for item in record["metrics"]["items"]] == ids, record["run"]
    assert (
        teacher["config"]["teacher"]["recipe_key"] == teachers.teacher_recipe("smoke", "sst2").key()
    )
    assert teacher["metrics"]["teacher"]["before"]["n"] == 8
    cell = by_run["ft-source__semalign__sst2__seed1"]
    assert cell["config"]["eval"] == {
        "limit": 8,
        "seed": 0,
        "split": "dev_subsample",
        "decoding": "loglikelihood",
        "prompt_style": "plain",
        "batch_size": 8,
    }
    assert cell["config"]["transfer"]["method_config"]["prompt_style"] == "plain"
    assert cell["metrics"]["metric"] == "acc" and cell["metrics"]["n"] == 8
    assert len(cell["metrics"]["transfer"]["plan"]) == 4  # one source mix per target layer
    seeds = {r["config"]["seed"] for r in records if r["method"] == "sft"}
    assert seeds == {0, 1}


def test_table2_reuses_records_and_renders(table2, tmp_path, monkeypatch):
    from semalign_core.report import teacher_table

    results, _ = table2
    monkeypatch.setenv("SEMALIGN_RESULTS_DIR", str(results))
    folder = results / "semalign_finetuned_teacher" / "smoke"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    transfer_table.run_table(
        get_profile("smoke"), ["semalign", "sft"], None, [0, 1], setting="finetuned", verbose=False
    )
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == before
    frame = teacher_table.table("smoke")
    assert list(frame.index) == ["teacher", "target", "semalign", "sft"] and list(
        frame.columns
    ) == ["SST-2", "SST-2 macro-F1"]
    assert "2 seeds" in frame.loc["sft", "SST-2"] and "seeds" not in frame.loc["teacher", "SST-2"]
    notes = frame.attrs["notes"]
    assert any("SST-2 items: majority-label rate" in n for n in notes)
    assert any("leads the target" in n for n in notes)
    paths = teacher_table.teacher_table_figures(tmp_path)
    text = paths[0].read_text()
    assert paths[0].name == "semalign_table2_finetuned_teacher.md"
    assert "profile `smoke`" in text and "## Published" in text
    assert "| CodeLlama-13B-Python -> SemAlign | 20.12 | 22.35 |" in text
    assert teacher_table.teacher_table_figures(tmp_path)[0].read_text() == text  # deterministic


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: teachers.teacher_names("cpu", "gsm"), "no fine-tuned teacher for task 'gsm'"),
        (lambda: teachers.teacher_recipe("elsewhere", "sst2"), "uses hub teachers"),
        (lambda: teachers.teacher_recipe("cpu", "sst2", lr_=1.0), "no field"),
        (
            lambda: teachers.load_profile_teacher("smoke", "sst2", "llama2-13b-chat"),
            "not a teacher of",
        ),
        (lambda: load_cls_transfer("agnews", "train"), "no labelled training data"),
        (lambda: load_cls_transfer("sst2", "test"), "unknown part"),
        (
            lambda: transfer_table.check_parameters(
                get_profile("cpu"), tasks=["humaneval"], setting="finetuned"
            ),
            "no fine-tuned teacher",
        ),
        (
            lambda: transfer_table.check_parameters(get_profile("smoke"), setting="table9"),
            "unknown setting",
        ),
        (
            lambda: transfer_table.check_parameters(SMOKE, tasks=["gsm"], setting="finetuned"),
            re.escape("parameter tasks has unknown value(s) ['gsm']"),
        ),
        (
            lambda: transfer_table.run_cell(get_profile("smoke"), "teacher", "sst2"),
            "unknown method 'teacher'",
        ),
    ],
)
def test_invalid_parameters_are_one_line_errors(call, match):
    with pytest.raises(ArtifactError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_paper_teachers_are_the_hub_code_teachers_beside_the_informative_setting():
    from semalign_core.models.registry import REGISTRY

    paper_tasks = transfer_table.check_parameters(get_profile("paper"), setting="finetuned")[1]
    assert paper_tasks == ("sst2", "trec", "humaneval", "mbpp")
    assert teachers.teacher_recipe("paper", "trec").base == get_profile("paper").semalign_source
    for name in teachers.teacher_names("paper", "humaneval"):
        assert REGISTRY[name].kind == "hub"
    hub_teacher = teachers.resolve_teacher("paper", "mbpp", "codellama-13b-python")
    assert teacher_store.teacher_identity(hub_teacher) == {
        "teacher": "codellama-13b-python",
        "model": "codellama-13b-python",
    }


def test_a_made_teacher_is_identified_by_its_recipe():
    recipe = teachers.resolve_teacher("smoke", "sst2")
    assert recipe == teachers.teacher_recipe("smoke", "sst2")
    assert teacher_store.teacher_identity(recipe) == {
        "teacher": "ft-source",
        "base": "tiny-source",
        "recipe": dataclasses.asdict(recipe),
        "recipe_key": recipe.key(),
    }


def test_loading_a_teacher_never_made_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_store, "teacher_dir", lambda recipe: tmp_path / recipe.cache_name())
    recipe = teachers.teacher_recipe("smoke", "sst2", lr=5e-3)
    with pytest.raises(ArtifactError, match="was never made") as info:
        teacher_store.load_teacher(recipe)
    assert "\n" not in str(info.value)


def test_recipes_import_without_torch():
    """The budgets table (read by the torch-free report) holds recipes: their module needs no
    torch."""
    code = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        from semalign_core.models.teacher_recipe import TeacherRecipe
        print(TeacherRecipe("tiny-source").cache_name())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("tiny-source-ft-sst2-"), out.stderr[-2000:]


def test_notebook_at_smoke(smoke_reproduction):
    """notebooks/04 in the session's smoke run: records, ours beside the published Table 2."""
    names = smoke_reproduction.records("semalign_finetuned_teacher")
    assert {
        "ft-source__sft__sst2__seed0.json",
        "ft-source__target__sst2.json",
        "ft-source__teacher__sst2.json",
    } <= set(names)
    outputs = smoke_reproduction.outputs("04_semalign_finetuned_teacher")
    html = "".join("".join(o.get("data", {}).get("text/html", [])) for o in outputs)
    assert "Reproduced (ours, profile smoke)" in html
    assert "Published (SemAlign paper, Table 2)" in html
