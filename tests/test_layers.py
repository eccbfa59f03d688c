"""The package keeps its import layers (tests/layering.py; docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from layering import LAYERS, function_level_imports, violations

import semalign_core

PACKAGE = Path(semalign_core.__file__).parent


def test_every_module_belongs_to_a_layer():
    units = {u for layer in LAYERS for u in layer}
    tops = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert tops <= units, f"not in any layer: {sorted(tops - units)}"


def test_no_module_imports_a_higher_layer():
    assert violations(PACKAGE) == []


# Imports written inside functions, each for a reason; anything else belongs at module top.
LAZY_IMPORTS = {
    "baselines/controls.py": {"peft"},  # slow to import; only LoRA runs need it
    "baselines/seeking.py": {"peft.tuners.lora"},
    "salf/policies.py": {"peft"},
    "semalign/frontier.py": {"peft", "peft.tuners.lora"},
    "semalign/attribution.py": {"captum.attr"},  # only attribution_method="captum"
    "report/method_info.py": {
        "semalign_core.transfer.registry"
    },  # the report imports without torch
    "report/plots.py": {"IPython.display"},  # only inside a notebook
    "report/html.py": {"selenium"},  # only to look at the page in a browser
    "evaluation/sandbox_child.py": {"ctypes", "_sitebuiltins"},  # inside the sandboxed child
    # optional: the "vllm" extra, its own environment
    "evaluation/backends.py": {"lm_eval.models.vllm_causallms", "vllm.distributed.parallel_state"},
    # only when a launcher started several processes
    "lm/sharding.py": {"torch.distributed.fsdp", "torch.distributed.tensor"},
}


def test_imports_inside_functions_are_the_listed_ones():
    assert function_level_imports(PACKAGE) == LAZY_IMPORTS


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "semalign_core"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_catches_an_upward_import(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "lm/__init__.py": "",
            "lm/surgery.py": "from semalign_core.report import plots\n",  # lm -> report: upward
            "report/__init__.py": "",
            "report/plots.py": "from semalign_core.lm import surgery\n",  # downward: fine
            # an upward import written inside a function counts too
            "experiments/x.py": "def f():\n    import semalign_core.report.plots\n",
        },
    )
    found = violations(root)
    assert len(found) == 2
    assert any("lm/surgery.py:1 lm imports report" in v for v in found)
    assert any("experiments/x.py:2 experiments imports report" in v for v in found)


def test_checker_reads_from_package_import_sub(tmp_path):
    root = _package(tmp_path, {"errors.py": "from semalign_core import lm\n", "lm/__init__.py": ""})
    assert violations(root) == ["semalign_core/errors.py:1 errors imports lm"]


def test_report_imports_without_torch():
    """The report layer renders from results/ alone: importable where torch is not installed."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import semalign_core.report as report
        for m in pkgutil.walk_packages(report.__path__, "semalign_core.report."):
            importlib.import_module(m.name)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
