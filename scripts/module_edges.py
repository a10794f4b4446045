#!/usr/bin/env python3
"""Prints the module-level `use crate::` / `use super::` edges of src/, file
by file, and the import circles among them (none is the rule, see
docs/architecture.md). Usage: python3 scripts/module_edges.py [--cycles]"""
import os, re, sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    if rel and rel[0] == "bin":
        return None
    return tuple(rel)

files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            m = module_of(p)
            if m is not None:
                files[m] = p
mods = set(files)

def resolve(base, parts):
    """The longest module prefix of base+parts that is a file."""
    full = list(base) + parts
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in mods:
            return tuple(full[:k])
    return ()

def strip_code(text):
    # drop comments and string literals
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text

def expand_use(body):
    """`a::{b, c::d}` -> [[a, b], [a, c, d]]"""
    body = body.strip()
    m = re.match(r"^([A-Za-z0-9_:]*)\{(.*)\}$", body, re.S)
    if not m:
        return [[p for p in body.split("::") if p and p != "self"]]
    prefix = [p for p in m.group(1).split("::") if p]
    inner, depth, cur, out = m.group(2), 0, "", []
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur); cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    res = []
    for o in out:
        for e in expand_use(o):
            res.append(prefix + e)
    return res

edges = {m: set() for m in mods}
for m, p in files.items():
    text = strip_code(open(p).read())
    is_mod_file = p.endswith(("mod.rs", "lib.rs"))
    parent = m if is_mod_file else m[:-1]
    # test modules are not edges of the library
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    refs = []
    for u in re.finditer(r"\buse\s+((?:crate|super)::[^;]+);", text):
        for path in expand_use(u.group(1)):
            refs.append(path)
    # `use child::...` of a module file names its own child modules.
    # (re-exports, `pub use` / `pub(crate) use`, are the module's surface,
    # not edges of its own code)
    if is_mod_file:
        for u in re.finditer(r"(?<!pub )(?<!pub\(crate\) )\buse\s+([a-z_][a-z0-9_]*::[^;]+);", text):
            for path in expand_use(u.group(1)):
                if path and tuple(list(m) + [path[0]]) in mods:
                    refs.append(["self"] + path)
    for r in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z0-9_]+)+)", text):
        refs.append(r.group(1).split("::"))
    for path in refs:
        if not path:
            continue
        if path[0] == "crate":
            t = resolve((), path[1:])
        elif path[0] == "self":
            t = resolve(m, path[1:])
        elif path[0] == "super":
            base = list(parent)
            rest = path
            while rest and rest[0] == "super":
                rest = rest[1:]
                if base and rest is not path:
                    pass
            # one `super` from a non-mod file is the parent module
            n = len(path) - len(rest)
            base = list(parent)[: len(parent) - (n - 1)] if n > 1 else list(parent)
            t = resolve(tuple(base), rest)
        else:
            continue
        if t != m and t != ():
            edges[m].add(t)

name = lambda t: "/".join(t) or "lib"
if "--cycles" not in sys.argv:
    for m in sorted(edges):
        print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")

# cycles (Tarjan's strongly connected components)
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(comp)
sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        strong(v)
print(f"circles: {len(sccs)}")
for c in sccs:
    print("  " + " <-> ".join(sorted(name(x) for x in c)))
sys.exit(1 if sccs and "--cycles" in sys.argv else 0)
