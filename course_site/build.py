"""Build the course website: `python course_site/build.py` (or `make site`) writes `_site/`.

Pages come from `nbs/` (the lessons, run) and `exercises/` (as students get them, not run). A lesson's
outputs are the ones the test run kept in `.cache/executed/` (see the repository's conftest.py) when that
copy has the lesson's current code; otherwise the lesson is run here. nbdev's conventions hold: `#| hide`
cells are left out, directives are stripped. Each lesson links to the source of the module it exports and to
its exercise. Math is turned into MathML when the site is built (latex2mathml), which browsers render
natively: no script and no web fonts, so the site works offline. (The MathJax 2 that PyPI ships in
jupyter-server-mathjax lacks the TeX fonts and its font loading fails in the browser; mkdocs-jupyter's
MathJax loader is therefore removed from the pages.)

mkdocs-material (with mkdocs-jupyter) builds it: it installs from PyPI, works offline with web fonts off,
and renders notebooks with their outputs; nbdev's own builder needs Quarto, which PyPI cannot install.
"""
import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / ".cache" / "executed"
DIRECTIVE = re.compile(r"^\s*#\|\s*(.*)$")
LINK = re.compile(r"\]\(([^)\s]+?\.ipynb)(#[^)]*)?\)")
CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$([^$\n]+?)\$", re.S)
MATHJAX_SCRIPTS = re.compile(r'\s*<script src="[^"]*MathJax[^"]*">\s*</script>|\s*<script type="text/x-mathjax-config">.*?</script>', re.S)


def title_of(nb, fallback):
    "The first Markdown heading of a notebook."
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return re.sub(r"[`*_]", "", m.group(1)).strip()
    return fallback


def code_sources(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


def executed(path, timeout=600):
    "The lesson with outputs: the test run's copy if it ran this code, else run it now."
    nb = nbformat.read(path, as_version=4)
    kept = EXECUTED / path.relative_to(ROOT)
    if kept.exists():
        run = nbformat.read(kept, as_version=4)
        if code_sources(run) == code_sources(nb):
            return run, "kept"
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb, "run"


def math_to_mathml(text):
    "Markdown with `$...$` and `$$...$$` replaced by MathML (code spans and blocks left alone)."
    from latex2mathml.converter import convert

    def sub(m):
        tex, display = (m.group(1), "block") if m.group(1) is not None else (m.group(2), "inline")
        return convert(tex.strip(), display=display).replace("\n", "")

    return "".join(part if CODE.fullmatch(part) else MATH.sub(sub, part) for part in CODE.split(text))


def page_name(path):
    "Site file name of a notebook: lessons by name, exercises prefixed."
    return f"exercise_{path.stem}" if path.parent.name == "exercises" else path.stem


def rewrite_links(text):
    "Links between notebooks point at their pages (`x.ipynb` -> `x.html`, `../exercises/y.ipynb` -> `exercise_y.html`)."
    def sub(m):
        target = Path(m.group(1))
        name = f"exercise_{target.stem}" if target.parent.name == "exercises" else target.stem
        return f"]({name}.html{m.group(2) or ''})"
    return LINK.sub(sub, text)


def clean(nb):
    "Drop `#| hide` cells and strip nbdev directives; returns the exported module's name, if any."
    module, cells = None, []
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines = cell.source.splitlines()
            directives = [DIRECTIVE.match(line).group(1).strip() for line in lines if DIRECTIVE.match(line)]
            for d in directives:
                if d.startswith("default_exp"):
                    module = d.split(maxsplit=1)[1].strip()
            if "hide" in directives:
                continue
            cell.source = "\n".join(line for line in lines if not DIRECTIVE.match(line)).strip("\n")
            cell.metadata.pop("jupyter", None)  # collapsed plumbing is shown folded by JupyterLab only
            if not cell.source and not cell.get("outputs"):
                continue
        elif cell.cell_type == "markdown":
            cell.source = math_to_mathml(rewrite_links(cell.source))
            # a page's title is its first heading's text: code spans in it would be dropped from the title
            cell.source = re.sub(r"^(# .*)$", lambda m: m.group(1).replace("`", ""), cell.source, count=1, flags=re.M)
        cells.append(cell)
    nb.cells = cells
    return module


def exercises_of(lessons, exercises):
    "Each lesson's exercises: those it links to, and unlinked ones go to the first lesson of their number."
    found = {lesson: [] for lesson in lessons}
    linked = set()
    for lesson in lessons:
        text = lesson.read_text(encoding="utf-8")
        for ex in exercises:
            if f"exercises/{ex.stem}" in text:
                found[lesson].append(ex)
                linked.add(ex)
    for ex in exercises:
        if ex in linked:
            continue
        same = [lesson for lesson in lessons if lesson.stem[:2] == ex.stem[:2]]
        if same:
            found[same[0]].append(ex)
    return found


def source_page(module, docs):
    "A page with the exported module's source."
    rel = Path("mmlab", *module.split(".")).with_suffix(".py")
    src = (ROOT / rel).read_text(encoding="utf-8")
    out = docs / "source" / f"mmlab.{module}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# `mmlab.{module}`\n\nGenerated from the lesson by nbdev: `{rel.as_posix()}`.\n\n"
                   f"```python\n{src}\n```\n", encoding="utf-8")
    return f"source/mmlab.{module}.html"


MKDOCS = """site_name: mmlab, a multimodal-learning course
site_description: Numbered notebooks that teach multimodal learning and export the mmlab package.
use_directory_urls: false
docs_dir: docs
site_dir: {site_dir}
theme:
  name: material
  font: false
  features: [navigation.sections, navigation.top]
plugins:
  - search
  - mkdocs-jupyter:
      include: ["*.ipynb"]
      execute: false
      include_requirejs: false
      ignore_h1_titles: false
markdown_extensions: [fenced_code, pymdownx.highlight, pymdownx.superfences]
nav:
{nav}
"""


def build(site_dir, work_dir, only=None):
    lessons = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if p.stem != "index")
    exercises = sorted((ROOT / "exercises").glob("*.ipynb"))
    if only:
        lessons = [p for p in lessons if p.stem in only]
        exercises = [p for p in exercises if any(p.stem in (ROOT / "nbs" / f"{o}.ipynb").read_text() for o in only)]
    docs = work_dir / "docs"
    shutil.rmtree(work_dir, ignore_errors=True)
    docs.mkdir(parents=True)

    home, _ = executed(ROOT / "nbs" / "index.ipynb")
    clean(home)
    nbformat.write(home, docs / "index.ipynb")
    nav = ["  - Home: index.ipynb", "  - Chapters:"]
    ex_nav, sources = [], []
    linked = exercises_of(lessons, exercises)
    for path in lessons:
        nb, how = executed(path)
        print(f"{path.stem:<28} outputs {how}")
        module = clean(nb)
        links = []
        if module:
            links.append(f"module [`mmlab.{module}`]({source_page(module, docs)})")
            sources.append(f"      - mmlab.{module}: source/mmlab.{module}.md")
        links += [f"exercise [{html.escape(title_of(nbformat.read(ex, 4), ex.stem))}](exercise_{ex.stem}.html)"
                  for ex in linked[path]]
        if links:
            first_md = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
            nb.cells.insert(first_md + 1, nbformat.v4.new_markdown_cell("*This lesson's " + "; ".join(links) + ".*"))
        nbformat.write(nb, docs / f"{page_name(path)}.ipynb")
        nav.append(f"      - {json.dumps(title_of(nb, path.stem))}: {page_name(path)}.ipynb")
    for ex in exercises:
        nb = nbformat.read(ex, as_version=4)
        clean(nb)
        nbformat.write(nb, docs / f"{page_name(ex)}.ipynb")
        ex_nav.append(f"      - {json.dumps(title_of(nb, ex.stem))}: {page_name(ex)}.ipynb")
    nav += ["  - Exercises:", *ex_nav] if ex_nav else []
    nav += ["  - Source:", *sources] if sources else []
    (work_dir / "mkdocs.yml").write_text(MKDOCS.format(site_dir=site_dir.resolve(), nav="\n".join(nav)), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(work_dir / "mkdocs.yml")], check=True,
                   env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    for page in site_dir.rglob("*.html"):  # the math is MathML already: no MathJax from a CDN
        text = page.read_text(encoding="utf-8")
        page.write_text(MATHJAX_SCRIPTS.sub("", text), encoding="utf-8")
    print(f"site: {site_dir}/index.html ({len(lessons)} lessons, {len(exercises)} exercises, {len(sources)} module pages)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--site-dir", type=Path, default=ROOT / "_site")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "site")
    p.add_argument("--only", nargs="*", help="build only these lessons (names without .ipynb), for a quick look")
    a = p.parse_args(argv)
    build(a.site_dir, a.work_dir, a.only)


if __name__ == "__main__":
    main()
