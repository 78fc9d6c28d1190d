#!/usr/bin/env python
"""Build README.md and the documentation site (_docs/) from the notebooks in nbs/, offline, without Quarto.

* Notebooks are committed with their outputs (tools/exec_nb.py), so nothing is executed: each page shows the
  pictures and tables its notebook holds.
* nbdev's own processors (front matter, `#| hide`/`echo`/`output` directives, export cells replaced by their
  documentation) prepare each notebook; the `show_doc` entries are computed from the imported modules (nbdev would
  execute every import cell of the notebook to get them). Pages are rendered by nbconvert (both on PyPI).
* Math renders offline: MathJax 2 (PyPI package `jupyter-server-mathjax`) is copied into _docs/mathjax/ with a local
  configuration (TeX input, SVG output); no page loads a script, style sheet or image from another host.
* Pages: home (nbs/index.ipynb), getting started and tutorials (nbs/tutorials/), one page per module notebook, and an
  API reference of every public name. The build ends with a link check (every local link and image resolves, no
  remote script/style/image): a problem is printed and the exit status is 1.

Usage: python tools/build_docs.py [--readme-only] [--no-readme] [--exec-readme] [--out DIR]
"""
import argparse, ast, html, importlib, inspect, re, shutil, sys, zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse
import nbformat
from nbconvert import HTMLExporter, MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
NBS, DOCS = ROOT / "nbs", ROOT / "_docs"
SITE_TITLE = "stronglens"
MATHJAX_CONFIG = """MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]], processEscapes: true},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},
  messageStyle: "none", showMathMenu: false
});
MathJax.Ajax.loadComplete("[MathJax]/config/stronglens.js");
"""
MATHJAX_QUERY = "config=TeX-AMS-MML_HTMLorMML-full,stronglens"   # the package's combined config (TeX in, HTML-CSS out), then ours
PAGE_CSS = """
body{margin:0}
#sl-nav{position:fixed;top:0;left:0;width:250px;height:100%;overflow:auto;padding:14px 12px;box-sizing:border-box;
  background:#f6f7f9;border-right:1px solid #dde;font:14px/1.4 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
#sl-nav h1{font-size:18px;margin:0 0 10px}#sl-nav h1 a{color:#123;text-decoration:none}
#sl-nav h2{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:#667;margin:14px 0 4px}
#sl-nav ul{list-style:none;padding:0;margin:0}#sl-nav li a{display:block;padding:2px 6px;color:#124;text-decoration:none;border-radius:3px}
#sl-nav li a:hover{background:#e6e9ef}#sl-nav li a.current{background:#dbe4f3;font-weight:600}
#sl-main{margin-left:260px;max-width:1100px}
.sl-api dt{font-family:monospace;font-weight:600;margin-top:10px}.sl-api dd{margin:2px 0 0 18px;color:#333}
.sl-api h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
"""


# ---------------------------------------------------------------- pages and their order
def site_pages() -> list[tuple[str, Path, str]]:
    "(section, notebook, output path relative to the site) in sidebar order."
    pages = [("", NBS / "index.ipynb", "index.html")] if (NBS / "index.ipynb").exists() else []
    tut = sorted((NBS / "tutorials").glob("*.ipynb"), key=lambda p: (p.stem != "getting_started", p.name))
    pages += [("Getting started & tutorials", p, f"tutorials/{p.stem}.html") for p in tut]
    pages += [("Modules", p, f"{p.stem}.html") for p in sorted(NBS.glob("[0-9]*.ipynb"))]
    return pages


def page_title(nb, default: str) -> str:
    "The notebook's front-matter title, else its first level-1 heading, else `default`."
    fm = getattr(nb, "frontmatter_", None) or {}
    if fm.get("title"): return str(fm["title"])
    for c in nb.cells:
        if c.cell_type == "markdown" and (m := re.search(r"^#\s+(.+)$", c.source, re.M)): return m.group(1).strip()
    return default


# ---------------------------------------------------------------- notebook processing (no execution)
def _procs():
    from nbdev import processors as P
    return [P.FrontmatterProc, P.populate_language, P.add_show_docs, P.strip_ansi, P.hide_line, P.filter_stream_,
            P.rm_header_dash, P.clean_show_doc, P.rm_export, P.clean_magics, P.hide_, P.strip_hidden_metadata]


def _module_of(path: Path):
    "The module a notebook exports to (its `#| default_exp`), imported; None for a notebook without one."
    src = path.read_text()
    m = re.search(r"#\|\s*default_exp\s+([\w.]+)", src)
    if not m: return None
    try: return importlib.import_module(f"stronglens.{m.group(1)}")
    except Exception as e:
        print(f"  {path.name}: cannot import stronglens.{m.group(1)} ({type(e).__name__}: {e}); its API entries are left out")
        return None


def _show_doc_markdown(expr: str, module) -> str:
    "The documentation nbdev's `show_doc(expr)` renders, computed from the imported module (no notebook execution)."
    from nbdev.showdoc import show_doc
    if module is None: return ""
    try: md = show_doc(eval(expr, dict(vars(module))))._repr_markdown_()
    except Exception as e: return f"*(documentation of `{expr}` unavailable: {type(e).__name__})*"
    md = re.sub(r"^\[source\]\([^)]*\)\{[^}]*\}\s*$", "", md, flags=re.M)    # links to a forge: not part of an offline site
    return md


def process_notebook(path: Path):
    "The notebook as its docs page: nbdev's processors, `show_doc` entries filled in, Quarto-only syntax removed."
    from execnb.nbio import read_nb
    from nbdev.process import NBProcessor
    nb = read_nb(path)
    proc = NBProcessor(nb=nb, procs=_procs()); proc.process()
    nb, module, cells = proc.nb, _module_of(path), []
    for c in nb.cells:
        src = c.get("source", "")
        if c.cell_type == "raw" and src.lstrip().startswith("---"): continue          # front matter: title kept aside
        if c.cell_type == "code" and re.search(r"^show_doc\((.+)\)\s*$", src, re.M):
            expr = re.search(r"^show_doc\((.+)\)\s*$", src, re.M).group(1)
            cells.append(nbformat.v4.new_markdown_cell(_show_doc_markdown(expr, module))); continue
        cells.append(_quarto_free(c))
    out = nbformat.v4.new_notebook(cells=cells, metadata=dict(nb.get("metadata", {})))
    fm = getattr(nb, "frontmatter_", {}) or {}
    if fm.get("title") and not any(c.cell_type == "markdown" and re.match(r"#\s", c.source) for c in out.cells[:2]):
        out.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {fm['title']}\n\n> {fm.get('description', '')}".rstrip("> \n")))
    out.metadata["sl_title"] = page_title(nb, path.stem)
    return out


def _quarto_free(c):
    "A cell without Quarto directives: `#| echo: false` hides the input, directive lines dropped, `{target=...}` removed."
    keep = ("cell_type", "source", "metadata", "outputs", "execution_count", "attachments")
    c = nbformat.from_dict({k: v for k, v in dict(c).items() if k in keep})
    if c.cell_type == "code":
        lines = c.source.split("\n")
        if any(re.match(r"#\|\s*(echo:\s*false|hide)", l) for l in lines): c.metadata.setdefault("tags", []).append("hide_input")
        if any(re.match(r"#\|\s*output:\s*false", l) for l in lines): c.outputs = []
        c.source = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
        for o in c.get("outputs", []):
            d = o.get("data", {})
            if isinstance(o.get("text"), list): o["text"] = "".join(o["text"])       # execnb keeps the file's line lists:
            for k, v in d.items():                                                   # nbconvert would print their repr
                if isinstance(v, list) and not k.endswith("json"): d[k] = "".join(v)
            if "text/markdown" in d:
                t = d["text/markdown"]; t = "".join(t) if isinstance(t, list) else t
                d["text/markdown"] = re.sub(r"\{(?:target|style|\.)[^}]*\}", "", t)
    elif c.cell_type == "markdown":
        c.source = re.sub(r"\{(?:target|style|\.)[^}]*\}", "", c.source)
    return c


# ---------------------------------------------------------------- rendering
def exporter() -> HTMLExporter:
    from traitlets.config import Config
    tc = Config(); tc.TagRemovePreprocessor.enabled = True; tc.TagRemovePreprocessor.remove_input_tags = ("hide_input",)
    return HTMLExporter(config=tc, template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)


def nav_html(pages, current: str, root: str) -> str:
    "The sidebar: home, then each section's pages, then the API reference."
    out, section = [f'<nav id="sl-nav"><h1><a href="{root}index.html">{SITE_TITLE}</a></h1>'], None
    for sec, rel, title in pages + [("Reference", "api.html", "API reference")]:
        if sec != section:
            out.append(("</ul>" if section is not None else "") + (f"<h2>{html.escape(sec)}</h2>" if sec else "") + "<ul>"); section = sec
        cls = ' class="current"' if rel == current else ""
        out.append(f'<li><a{cls} href="{root}{rel}">{html.escape(title)}</a></li>')
    return "".join(out) + "</ul></nav>"


def finish_page(body: str, title: str, nav: str, root: str) -> str:
    "An nbconvert page with the sidebar, local MathJax, no remote require.js, and the site title."
    body = re.sub(r'<script src="https?://[^"]*require[^"]*"></script>', "", body)
    # nbconvert's lab template imports mermaid from a CDN when a page has diagrams; ours have none: the loader goes
    body = re.sub(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>', "", body, flags=re.S)
    body = re.sub(r"<title>.*?</title>", f"<title>{SITE_TITLE} – {html.escape(title)}</title>", body, count=1, flags=re.S)
    body = body.replace("</head>", f"<style>{PAGE_CSS}</style></head>", 1)
    body = re.sub(r"<body([^>]*)>", lambda m: f"<body{m.group(1)}>{nav}<div id=\"sl-main\">", body, count=1)
    return body.replace("</body>", "</div></body>", 1)


def render_page(nb, rel: str, pages, out_dir: Path) -> Path:
    root = "../" * rel.count("/")
    ex = exporter(); ex.mathjax_url = f"{root}mathjax/MathJax.js?{MATHJAX_QUERY}"; ex.require_js_url = ""
    body, _ = ex.from_notebook_node(nb)
    body = body.replace('<script src=""></script>', "")
    out = out_dir / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(finish_page(body, nb.metadata.get("sl_title", rel), nav_html(pages, rel, root), root))
    return out


def copy_local_images(nb_path: Path, nb, rel: str, out_dir: Path):
    "Copy images that markdown cells link by relative path next to the page, keeping the relative path."
    for c in nb.cells:
        if c.cell_type != "markdown": continue
        for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", c.source) + re.findall(r'<img[^>]+src="([^"]+)"', c.source):
            if re.match(r"[a-z]+:", src): continue
            f = (nb_path.parent / unquote(src)).resolve()
            if f.is_file():
                dst = (out_dir / rel).parent / unquote(src); dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy(f, dst)


# ---------------------------------------------------------------- API reference
def api_reference(module_pages: list[tuple[str, str]], anchors: dict | None = None) -> str:
    "HTML body: every public name of every module, with its signature, first doc line and a link to its entry (`anchors`: page -> ids)."
    parts = ['<div class="sl-api"><h1>API reference</h1><p>Every public name of the package, by module. Each links to its '
             "documentation in the module's page, where it is defined, explained and checked.</p>"]
    for modname, rel in module_pages:
        try: mod = importlib.import_module(f"stronglens.{modname}")
        except Exception as e: parts.append(f"<h2>stronglens.{modname}</h2><p>not importable: {html.escape(str(e))}</p>"); continue
        doc = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
        parts.append(f'<h2 id="{modname}"><a href="{rel}">stronglens.{modname}</a></h2><p>{html.escape(doc)}</p><dl>')
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            try: sig = str(inspect.signature(obj)) if callable(obj) else ""
            except (TypeError, ValueError): sig = ""
            kind = "class " if inspect.isclass(obj) else ""
            first = (inspect.getdoc(obj) or "").strip().splitlines()[0] if (inspect.isfunction(obj) or inspect.isclass(obj)) and inspect.getdoc(obj) else ""
            anchor = f"{rel}#{name}" if name in (anchors or {}).get(rel, ()) else rel
            if len(sig) > 160: sig = sig[:157] + "...)"
            parts.append(f'<dt id="{modname}.{name}"><a href="{anchor}">{kind}{html.escape(name)}</a>{html.escape(sig)}</dt><dd>{html.escape(first)}</dd>')
        parts.append("</dl>")
    return "".join(parts) + "</div>"


def render_api(pages, module_pages, out_dir: Path):
    anchors = {rel: set(re.findall(r'\sid="([^"]+)"', (out_dir / rel).read_text())) for _, rel in module_pages if (out_dir / rel).exists()}
    body = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>x</title>"
            "<style>body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1a1a1a}#sl-main{padding:10px 30px}</style>"
            f"</head><body>{api_reference(module_pages, anchors)}</body></html>")
    (out_dir / "api.html").write_text(finish_page(body, "API reference", nav_html(pages, "api.html", ""), ""))


# ---------------------------------------------------------------- offline MathJax
def vendor_mathjax(out_dir: Path) -> Path:
    "Copy MathJax 2 (the `jupyter-server-mathjax` package: TeX input, HTML-CSS output, STIX web fonts) into out_dir/mathjax with the site's config."
    try: import jupyter_server_mathjax
    except ImportError: raise SystemExit("the docs need MathJax: pip install jupyter-server-mathjax (a dev requirement)")
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    dst = out_dir / "mathjax"
    if dst.exists(): shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d).name == "localization" and n != "en"])
    (dst / "config").mkdir(exist_ok=True); (dst / "config" / "stronglens.js").write_text(MATHJAX_CONFIG)
    return dst


# ---------------------------------------------------------------- the link check
_REF = re.compile(r'<(a|img|script|link|iframe|source)\b[^>]*?\s(href|src)="([^"]*)"', re.I)

def check_site(out_dir: Path) -> list[str]:
    "Problems of the built site: local links/images that do not resolve, anchors that do not exist, remote assets."
    problems, ids = [], {}
    pages = sorted(out_dir.rglob("*.html"))
    pages = [p for p in pages if "mathjax" not in p.relative_to(out_dir).parts]
    for p in pages: ids[p.resolve()] = set(re.findall(r'\sid="([^"]+)"', p.read_text()))
    for p in pages:
        text = p.read_text()
        for tag, attr, url in _REF.findall(text):
            if not url or url.startswith(("data:", "mailto:", "javascript:")): continue
            u = urlparse(url)
            if u.scheme in ("http", "https"):
                if tag.lower() != "a": problems.append(f"{p.relative_to(out_dir)}: remote {tag} {url} (the site must work offline)")
                continue
            if u.path == "" and u.fragment:
                if u.fragment not in ids[p.resolve()]: problems.append(f"{p.relative_to(out_dir)}: anchor #{u.fragment} not found")
                continue
            target = (p.parent / unquote(u.path)).resolve()
            if not target.exists(): problems.append(f"{p.relative_to(out_dir)}: broken {tag} {attr}={url}"); continue
            if u.fragment and target.suffix == ".html" and target in ids and u.fragment not in ids[target]:
                problems.append(f"{p.relative_to(out_dir)}: {url}: anchor not found")
    return problems


# ---------------------------------------------------------------- README and main
def build_readme(execute_nb: bool = False):
    "README.md from nbs/index.ipynb (its committed outputs; executed first with --exec-readme)."
    nb = nbformat.read(NBS / "index.ipynb", as_version=4)
    if execute_nb:
        from nbclient import NotebookClient
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NBS)}}).execute()
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    body = re.sub(r"^# (.+)\n+> (.+)\n", r"# \1\n\n\2\n", body, count=1)  # nbdev summary line -> plain paragraph
    (ROOT / "README.md").write_text(body)
    print("wrote README.md")


def build_site(out_dir: Path = DOCS, only: str | None = None) -> list[str]:
    "Render every page (or those whose notebook name matches regex `only`, for a quick look) into `out_dir`; returns the link check's problems."
    out_dir.mkdir(parents=True, exist_ok=True)
    vendor_mathjax(out_dir)
    pages, rendered, module_pages = [p for p in site_pages() if not only or re.search(only, p[1].name)], [], []
    nbs = []
    for sec, path, rel in pages:
        nb = process_notebook(path); nbs.append((sec, path, rel, nb))
        rendered.append((sec, rel, nb.metadata["sl_title"]))
        m = re.search(r"#\|\s*default_exp\s+([\w.]+)", path.read_text())
        if m: module_pages.append((m.group(1), rel))
    for sec, path, rel, nb in nbs:
        render_page(nb, rel, rendered, out_dir); copy_local_images(path, nb, rel, out_dir)
    render_api(rendered, module_pages, out_dir)
    print(f"wrote {len(nbs) + 1} pages to {out_dir}")
    return check_site(out_dir)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme-only", action="store_true", help="only README.md")
    ap.add_argument("--no-readme", action="store_true", help="only the site")
    ap.add_argument("--exec-readme", action="store_true", help="execute nbs/index.ipynb before converting it")
    ap.add_argument("--out", default=str(DOCS), help="site folder (default _docs/)")
    ap.add_argument("--only", help="regex on notebook names: render just those pages (a quick look; links to others break)")
    a = ap.parse_args()
    if not a.no_readme: build_readme(a.exec_readme)
    if a.readme_only: sys.exit(0)
    problems = build_site(Path(a.out), a.only)
    for p in problems: print("  LINK CHECK:", p)
    sys.exit(1 if problems else 0)
