"""Sphinx configuration of the documentation site, built with ``make docs``.

The pages are the Markdown files in this folder, read by MyST. The API reference is
generated from the package's docstrings with autodoc, which imports the modules, so
Airflow must be importable. The build needs no network access and no Airflow database.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
# Document the package of this checkout, even where another version is installed.
sys.path.insert(0, str(DOCS_DIR.parent))

# Importing Airflow reads, and on first use writes, airflow.cfg under AIRFLOW_HOME. A
# throwaway folder keeps the build away from a developer's own Airflow settings, so the
# generated pages do not depend on them.
_airflow_home = tempfile.mkdtemp(prefix="sepa-docs-airflow-home-")
atexit.register(shutil.rmtree, _airflow_home, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _airflow_home

from airflow_provider_sepa import __version__  # noqa: E402  (after the sys.path change)

project = "airflow-provider-sepa"
author = "airflow-provider-sepa developers"
copyright = "2026, airflow-provider-sepa developers"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Anchors for headings down to level 3, so that links such as emulator.md#fault-injection
# resolve as they do on a Git forge.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# Show default values as written in the source. Some defaults read the Airflow
# configuration, so their evaluated value would depend on the machine that builds the docs.
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
# Show only this package's docstrings, not the ones that methods such as execute() would
# inherit from Airflow's base classes.
autodoc_inherit_docstrings = False
autosummary_generate = False

html_theme = "furo"
html_title = f"airflow-provider-sepa {release}"

# Pages that a checkout may lack, because their files are written and committed apart
# from the rest of the site. Each is listed in the table of contents only when its file
# exists, so index.md can name it either way.
OPTIONAL_PAGES = ("benchmarks",)


def _drop_missing_optional_pages(app, docname: str, source: list[str]) -> None:
    if docname != root_doc:
        return
    for page in OPTIONAL_PAGES:
        if not (DOCS_DIR / f"{page}.md").exists():
            source[0] = source[0].replace(f"\n{page}\n", "\n")


def _reread_root_doc(app, env, added, changed, removed) -> list[str]:
    # An incremental build would otherwise keep the old table of contents after an
    # optional page appears or disappears.
    return [root_doc]


def setup(app) -> None:
    app.connect("source-read", _drop_missing_optional_pages)
    app.connect("env-get-outdated", _reread_root_doc)
