#!/usr/bin/env python3
"""Fails when the modules of src/ import each other in a circle.

A node is a source file (src/daemon/ledger.rs is `daemon::ledger`, src/daemon/mod.rs is
`daemon`). An edge a -> b means a names b through `crate::`, `super::` or `self::` paths
(in `use` trees or inline). Two kinds of reference are not edges: `mod x;` declarations (a
parent owning a child), and a module naming one of its own ancestors (a `mod.rs` declares its
children and the vocabulary they share, e.g. an error type; that is the module's inner
structure, not a layer above it). What is left are the dependencies between stages, layers
and siblings, and those must flow one way. Prints every circle found and exits 1; with
--print it first prints each module with the modules it uses.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def expand(tree):
    """Paths named by one `use` tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = tree.strip()
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if start is None:
        return [tree.split(" as ")[0].strip()]
    prefix = tree[:start]
    inner = tree[start + 1 : tree.rindex("}")]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for part in parts:
        if part.strip():
            out.extend(prefix + p for p in expand(part))
    return out


def resolve(path, here, modules, is_dir_module):
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    base = list(here) if is_dir_module else list(here[:-1])
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        cur = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
        base = cur
    else:
        # A plain path in a `use` or in code names an item of the module itself: a child
        # module, when it starts with one.
        if tuple(here) + (segs[0],) not in modules:
            return None
        base = list(here)
    best = None
    for n in range(len(segs) + 1):
        cand = tuple(base + segs[:n])
        if cand in modules:
            best = cand
    return best


def graph():
    files = []
    for root, _, names in os.walk(SRC):
        files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
    # The binary's own modules (`mod cli;` in main.rs) sit above the library, not in it.
    main = strip(open(os.path.join(SRC, "main.rs"), encoding="utf-8").read())
    binary = {(name,) for name in re.findall(r"(?m)^\s*mod\s+(\w+)\s*;", main)}
    modules = {
        module_of(f): f
        for f in files
        if not f.endswith("main.rs") and module_of(f) not in binary
    }
    edges = {m: set() for m in modules}
    for m, f in modules.items():
        text = strip(open(f, encoding="utf-8").read())
        # Test modules may reach anywhere; they are not part of the layering.
        text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        is_dir = os.path.basename(f) in ("mod.rs", "lib.rs")
        paths = []
        for use in re.findall(r"\buse\s+([^;]+);", text):
            paths += expand(use)
        paths += re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", text)
        # Inline paths through a child module (`query::QueryBank::new`).
        children = {c[-1] for c in modules if len(c) == len(m) + 1 and c[: len(m)] == m}
        paths += [p for p in re.findall(r"(?<![:\w])(\w+(?:::\w+)+)", text) if p.split("::")[0] in children]
        for p in paths:
            target = resolve(p, m, modules, is_dir)
            ancestor = target is not None and target == m[: len(target)]
            if target is not None and not ancestor:
                edges[m].add(target)
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def main():
    edges = graph()
    if "--print" in sys.argv:
        for m in sorted(edges):
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")
    found = cycles(edges)
    for comp in found:
        members = set(comp)
        inner = [
            f"  {name(a)} -> {name(b)}"
            for a in comp
            for b in sorted(edges[a])
            if b in members
        ]
        print(f"import circle among {len(comp)} modules:\n" + "\n".join(inner))
    if found:
        sys.exit(1)
    print(f"no import circles among {len(edges)} modules")


main()
