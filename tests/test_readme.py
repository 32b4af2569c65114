"""Every ```python block of README.md and docs/*.md runs exactly as written.

Blocks that are not meant to run (shell commands, printed output) use other
fences.  Each block runs on its own, in a fresh namespace and a temporary
working directory.
"""

import glob
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    out = []
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        rel = os.path.relpath(path, ROOT)
        out += [(f"{rel}#{i}", code) for i, code in enumerate(FENCE.findall(text))]
    return out


BLOCKS = _blocks()


def test_readme_and_docs_have_examples():
    # A changed fence (```py, an indented block) would silently drop every example.
    files = {name.split("#")[0] for name, _ in BLOCKS}
    assert "README.md" in files and len(files) >= 5, sorted(files)


@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_example_runs(name, code, tmp_path, monkeypatch):
    if re.search(r"^\s*(import torch|import adamfast\.torch|from torch)", code, re.M) and \
            importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the [torch] extra)")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    exec(compile(code, name, "exec"), {"__name__": "__doc_example__"})


def _slug(heading):
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_relative_links_resolve(path):
    with open(path) as f:
        text = FENCE.sub("", f.read())
    broken = []
    # Image links are left out: the figures are the output of `python -m adamfast paper`
    # (*.png is not committed).
    for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an external address
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            broken.append(target)
        elif anchor and dest.endswith(".md"):
            with open(dest) as f:
                slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", f.read(), re.M)}
            if anchor not in slugs:
                broken.append(target)
    assert not broken, f"{os.path.relpath(path, ROOT)}: broken links {broken}"
