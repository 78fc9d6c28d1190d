#!/usr/bin/env python
"""Build README.md and the documentation site from the notebooks in nbs/.

* README.md: nbs/index.ipynb executed and converted to Markdown (nbconvert).
* Site: `nbdev_docs` (Quarto) when a `quarto` binary is on PATH; otherwise the same processed notebooks
  (`nbdev_proc_nbs` -> _proc/) are executed with nbclient and rendered to HTML with nbconvert (both on PyPI),
  with a sidebar in nbdev's page order, into _docs/.
Usage: python tools/build_docs.py [--readme-only] [--no-exec]
"""
import argparse, html, re, shutil, subprocess, sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter, MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC, DOCS = ROOT / "nbs", ROOT / "_proc", ROOT / "_docs"
BIN = Path(sys.executable).parent


def execute(nb, cwd, timeout=900):
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
        return None
    except Exception as e:  # keep going: a page with an error is still rendered, and reported
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def build_readme(execute_nb=True):
    nb = nbformat.read(NBS / "index.ipynb", as_version=4)
    if execute_nb:
        err = execute(nb, NBS)
        if err: print("index.ipynb:", err)
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    body = re.sub(r"^# (.+)\n+> (.+)\n", r"# \1\n\n\2\n", body, count=1)  # nbdev summary line -> plain paragraph
    (ROOT / "README.md").write_text(body)
    print("wrote README.md")


def page_title(nb, default):
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return default


def quarto_like(nb):
    """Apply what Quarto would do with a processed notebook: front matter -> title, `#| echo: false` hides the
    input, `#|` directive lines are not shown, Pandoc attribute blocks (`{target=...}`) are dropped."""
    import yaml
    cells = []
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.lstrip().startswith("---"):
            fm = yaml.safe_load(c.source.strip().strip("-")) or {}
            md = f"# {fm.get('title', '')}\n\n> {fm.get('description', '')}".rstrip("> \n")
            cells.append(nbformat.v4.new_markdown_cell(md)); continue
        if c.cell_type == "code":
            lines = c.source.split("\n")
            if any(re.match(r"#\|\s*(echo:\s*false|hide)", l) for l in lines):
                c.metadata.setdefault("tags", []).append("hide_input")
            c.source = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
            for o in c.get("outputs", []):
                d = o.get("data", {})
                if "text/markdown" in d:
                    d["text/markdown"] = re.sub(r"\{(?:target|style|\.)[^}]*\}", "", d["text/markdown"])
        cells.append(c)
    nb.cells = cells
    return nb


def build_site(execute_nb=True):
    if (ROOT / "_quarto.yml").exists(): shutil.copy(ROOT / "_quarto.yml", NBS / "_quarto.yml")
    if shutil.which("quarto"):
        subprocess.run([str(BIN / "nbdev_docs")], cwd=ROOT, check=True)
        return
    print("quarto not found: executing the notebooks (nbclient), processing them with nbdev_proc_nbs, rendering with nbconvert")
    # Quarto would render the processed notebooks with the outputs saved in them. Our notebooks are kept without
    # outputs, so they are executed first (in place, restored afterwards), then processed by nbdev, then rendered.
    srcs = sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    originals = {p: p.read_bytes() for p in srcs}
    errors = {}
    try:
        if execute_nb:
            from concurrent.futures import ThreadPoolExecutor
            def _run(p):
                nb = nbformat.read(p, as_version=4)
                err = execute(nb, p.parent)
                nbformat.write(nb, p)
                return p, err
            with ThreadPoolExecutor(2) as ex:
                for p, err in ex.map(_run, srcs):
                    if err: errors[p.name] = err
        subprocess.run([str(BIN / "nbdev_proc_nbs"), "--force"], cwd=ROOT, check=True)
    finally:
        for p, b in originals.items(): p.write_bytes(b)
    pages = sorted(p for p in PROC.rglob("*.ipynb") if not any(part.startswith((".", "_")) for part in p.relative_to(PROC).parts))
    pages.sort(key=lambda p: (p.name != "index.ipynb", len(p.relative_to(PROC).parts), str(p)))
    DOCS.mkdir(exist_ok=True)
    nbs = []
    for p in pages:
        nb = quarto_like(nbformat.read(p, as_version=4))
        rel = p.relative_to(PROC).with_suffix(".html")
        nbs.append((rel, page_title(nb, p.stem), nb))
    nav = "\n".join(f'<li><a href="{{root}}{r.as_posix()}">{html.escape(t)}</a></li>' for r, t, _ in nbs)
    from traitlets.config import Config
    tc = Config(); tc.TagRemovePreprocessor.enabled = True; tc.TagRemovePreprocessor.remove_input_tags = ("hide_input",)
    exporter = HTMLExporter(config=tc, template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    for rel, title, nb in nbs:
        body, _ = exporter.from_notebook_node(nb)
        root = "../" * (len(rel.parts) - 1)
        side = ('<nav style="position:fixed;top:0;left:0;width:230px;height:100%;overflow:auto;padding:1em;'
                'background:#f7f7f7;border-right:1px solid #ddd;font:14px sans-serif"><b>stronglens</b><ul style="padding-left:1em">'
                + nav.replace("{root}", root) + "</ul></nav>")
        body = body.replace("<body", "<body style=\"margin-left:260px\"", 1).replace("</body>", side + "</body>", 1)
        body = re.sub(r"<title>.*?</title>", f"<title>stronglens – {html.escape(title)}</title>", body, count=1, flags=re.S)
        out = DOCS / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
    print(f"wrote {len(nbs)} pages to {DOCS}")
    for k, v in errors.items(): print(f"  page executed with an error: {k}: {v}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--readme-only", action="store_true")
    ap.add_argument("--no-exec", action="store_true")
    a = ap.parse_args()
    build_readme(not a.no_exec)
    if not a.readme_only: build_site(not a.no_exec)
