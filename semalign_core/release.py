"""Where the artifact is published, and what follows from it: each notebook's install cell and the
README's Colab badges.

    python -m semalign_core.release    # after setting REPOSITORY_URL (or a new version)

writes the constants into ``notebooks/_bootstrap_cell.py`` and that template into the first code
cell of every notebook (nothing else in a notebook changes), then prints the README's badge lines.
A notebook opened alone (Colab badge, upload, JupyterHub) runs that cell: it clones
``REPOSITORY_URL`` at ``RELEASE_TAG`` (``SEMALIGN_REPO_URL`` / ``SEMALIGN_REPO_REV`` override
them) next to itself or under ``SEMALIGN_HOME``, installs it with pyproject's dependency ranges and
fetches the data. The cell cannot import this module: the package is not installed yet.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import semalign_core
from semalign_core.paths import REPO_ROOT
from semalign_core.records import atomic_write

# The one thing to set when the repository is published (README, "Notebooks").
REPOSITORY_URL = "https://github.com/OWNER/REPO"
RELEASE_TAG = f"v{semalign_core.__version__}"

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
BOOTSTRAP_TEMPLATE = NOTEBOOK_DIR / "_bootstrap_cell.py"
_CONSTANTS_LINE = re.compile(r"^REPOSITORY_URL, RELEASE_TAG = .*$", re.MULTILINE)
_GITHUB = re.compile(r"^https://github\.com/(?P<slug>[^/]+/[^/]+?)(\.git)?/?$")


def bootstrap_cell() -> str:
    """The install cell's source: the template with this module's constants written in."""
    constants = f"REPOSITORY_URL, RELEASE_TAG = {json.dumps(REPOSITORY_URL)}, "
    constants += json.dumps(RELEASE_TAG)
    template = BOOTSTRAP_TEMPLATE.read_text()
    if len(_CONSTANTS_LINE.findall(template)) != 1:
        raise ValueError(f"{BOOTSTRAP_TEMPLATE} must hold one `REPOSITORY_URL, RELEASE_TAG =` line")
    return _CONSTANTS_LINE.sub(lambda _: constants, template)


def write_bootstrap_cells() -> list[Path]:
    """Write :func:`bootstrap_cell` into its template and every notebook's first code cell; return
    the files changed."""
    source = bootstrap_cell()
    changed = []
    if BOOTSTRAP_TEMPLATE.read_text() != source:
        atomic_write(BOOTSTRAP_TEMPLATE, lambda tmp: Path(tmp).write_text(source))
        changed.append(BOOTSTRAP_TEMPLATE)
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        if write_first_code_cell(path, source.rstrip("\n")):
            changed.append(path)
    return changed


def write_first_code_cell(path: Path, source: str) -> bool:
    """Set the first code cell of notebook ``path`` to ``source``, keeping every other byte of the
    file (nbformat's layout: indent 1, keys in file order); False when it already held it."""
    raw = path.read_text(encoding="utf-8")
    notebook = json.loads(raw)
    if _dump(notebook) != raw:  # a rewrite would reformat the other cells too: refuse
        raise ValueError(f"{path} is not in nbformat's layout (indent 1); save it from Jupyter")
    cell = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    lines = source.splitlines(keepends=True)
    if cell["source"] == lines:
        return False
    cell["source"] = lines
    atomic_write(path, lambda tmp: Path(tmp).write_text(_dump(notebook), encoding="utf-8"))
    return True


def _dump(notebook: dict) -> str:
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def colab_url(notebook: str) -> str:
    """Colab's address for ``notebooks/<notebook>`` at the release tag."""
    match = _GITHUB.match(REPOSITORY_URL)
    if match is None:
        raise ValueError(f"Colab opens GitHub repositories only; REPOSITORY_URL={REPOSITORY_URL}")
    return (
        f"https://colab.research.google.com/github/{match['slug']}/blob/{RELEASE_TAG}"
        f"/notebooks/{notebook}"
    )


def colab_badge(notebook: str) -> str:
    """The README's badge for one notebook (markdown)."""
    image = "https://colab.research.google.com/assets/colab-badge.svg"
    return f"[![Open In Colab]({image})]({colab_url(notebook)})"


def main() -> int:
    for path in write_bootstrap_cells():
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        print(f"{path.name}: {colab_badge(path.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
