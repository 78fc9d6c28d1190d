#!/usr/bin/env python3
"""Small notebook cell editor for the command line (nbs/*.ipynb are the source).

  python tools/nbcell.py list NB                 # index, type, first line of each cell
  python tools/nbcell.py show NB I [J]           # source of cells I..J
  python tools/nbcell.py get NB I > cell.py      # raw source of cell I
  python tools/nbcell.py set NB I FILE|-         # replace cell I's source (keeps type; clears outputs)
  python tools/nbcell.py insert NB I TYPE FILE|- # insert a new cell (code|markdown|raw) before index I (I=len to append)
  python tools/nbcell.py delete NB I [J]         # delete cells I..J
  python tools/nbcell.py grep NB PATTERN         # cells whose source matches PATTERN
The notebook is rewritten atomically with nbformat's 1-space JSON indent, like nbdev_clean.
"""
import json, os, re, sys, tempfile

def load(p):
    with open(p, encoding="utf-8") as f: return json.load(f)

def save(p, nb):
    d = os.path.dirname(os.path.abspath(p))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-nbcell-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False); f.write("\n")
    os.replace(tmp, p)

def src(c): return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]

def lines(s): return s.splitlines(keepends=True)

def read_arg(a): return sys.stdin.read() if a == "-" else open(a, encoding="utf-8").read()

def new_cell(kind, s):
    c = {"cell_type": kind, "metadata": {}, "source": lines(s.rstrip("\n"))}
    if kind == "code": c.update(execution_count=None, outputs=[])
    return c

def main(argv):
    if len(argv) < 2: print(__doc__); return 2
    cmd, p, *rest = argv
    nb = load(p); cells = nb["cells"]
    if cmd == "list":
        for i, c in enumerate(cells):
            first = (src(c).strip().splitlines() or [""])[0][:100]
            print(f"{i:3d} {c['cell_type'][:4]:4s} {len(lines(src(c))):4d} | {first}")
    elif cmd in ("show", "get"):
        i = int(rest[0]); j = int(rest[1]) if len(rest) > 1 else i
        for k in range(i, j + 1):
            if cmd == "show": print(f"----- [{k}] {cells[k]['cell_type']}")
            sys.stdout.write(src(cells[k]) + ("\n" if cmd == "show" else ""))
    elif cmd == "set":
        i = int(rest[0]); c = cells[i]; c["source"] = lines(read_arg(rest[1]).rstrip("\n"))
        if c["cell_type"] == "code": c["outputs"] = []; c["execution_count"] = None
        save(p, nb)
    elif cmd == "insert":
        i = int(rest[0]); cells.insert(i, new_cell(rest[1], read_arg(rest[2]))); save(p, nb)
    elif cmd == "delete":
        i = int(rest[0]); j = int(rest[1]) if len(rest) > 1 else i
        del cells[i:j + 1]; save(p, nb)
    elif cmd == "grep":
        rx = re.compile(rest[0])
        for i, c in enumerate(cells):
            if rx.search(src(c)): print(f"{i:3d} {c['cell_type'][:4]} | {(src(c).strip().splitlines() or [''])[0][:100]}")
    else: print(__doc__); return 2
    return 0

if __name__ == "__main__": sys.exit(main(sys.argv[1:]))
