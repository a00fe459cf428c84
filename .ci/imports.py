#!/usr/bin/env python3
"""Which top-level folders of src/ import which (from `crate::` paths, grouped `use
crate::{..}` included), and the pairs that import each other. docs/ARCHITECTURE.md shows
its output; run it as `python3 .ci/imports.py` from the repository root."""
import collections
import os
import re
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
root = args[0] if args else "src"
edges = collections.defaultdict(set)


def top(path):
    first = os.path.relpath(path, root).split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def targets(src):
    for m in re.finditer(r"crate::([a-z_]+)", src):
        yield m.group(1)
    for m in re.finditer(r"crate::\{([^}]*)\}", src):
        for part in m.group(1).split(","):
            name = part.strip().split("::")[0]
            if re.fullmatch(r"[a-z_]+", name):
                yield name


for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        me = top(path)
        if me in ("lib", "main"):
            continue
        with open(path, encoding="utf-8") as fh:
            # Comments name modules without importing them.
            code = "\n".join(
                line for line in fh.read().splitlines() if not line.lstrip().startswith("//")
            )
            for t in targets(code):
                if t != me and t != "self":
                    edges[me].add(t)

for m in sorted(set(edges) | {t for s in edges.values() for t in s}):
    print(f"{m} -> {', '.join(sorted(edges.get(m, ())))}")
both = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
print()
print("import each other: " + (", ".join(f"{a} <-> {b}" for a, b in both) or "none"))


def cycles():
    """Strongly connected components with more than one folder (Tarjan): every
    circle of imports, not only the two-way pairs."""
    index, low, stack, on, out = {}, {}, [], set(), []
    nodes = sorted(set(edges) | {t for s in edges.values() for t in s})

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


circles = cycles()
print("circles: " + ("; ".join(" ".join(c) for c in circles) or "none"))
if "--check" in sys.argv and circles:
    sys.exit(1)
