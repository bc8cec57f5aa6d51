"The package's floors go one way: no module imports one above it, and no import cycle, lazy imports included."
import ast
from pathlib import Path

import mmlab

PKG = Path(mmlab.__file__).parent
# Lower numbers are lower floors. A module may import its own floor or lower ones, never a higher one.
FLOORS = {
    "core": 0,
    "data": 1,                                          # schema, preprocess, synth, readers
    "attention": 2, "losses": 2, "train": 2, "eda": 2, "metrics": 2,
    "evaluate": 4, "recipes": 4,
    "cli": 5, "grade": 5, "serve": 5,
}
MODELS = 3                                              # fusion, clip, retrieval, vilt, vqa, ... and any new chapter


def _name(path:Path)->str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _floor(module:str)->int:
    return FLOORS.get(module.split(".")[0], MODELS)


def _imports(path:Path, module:str)->set[str]:
    "Every mmlab module `path` imports, at the top or inside a function."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name[len("mmlab."):] for a in node.names if a.name.startswith("mmlab.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                  # relative: resolve against the importing package
                base = module.split(".")[:len(module.split(".")) - node.level] if path.name != "__init__.py" else module.split(".")
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("mmlab"):
                target = node.module[len("mmlab."):] if node.module != "mmlab" else ""
            else:
                continue
            for a in node.names:                            # `from mmlab.data import synth` imports a module
                sub = f"{target}.{a.name}" if target else a.name
                out.add(sub if (PKG / Path(*sub.split("."))).with_suffix(".py").exists() or (PKG / Path(*sub.split("."))).is_dir() else target)
    return {m for m in out if m}


def _graph()->dict[str, set[str]]:
    mods = {_name(p): p for p in PKG.rglob("*.py") if p.name != "_modidx.py" and _name(p)}
    return {m: {i for i in _imports(p, m) if i in mods or any(k.startswith(i + ".") for k in mods)} - {m} for m, p in mods.items()}


def test_no_module_imports_a_higher_floor():
    bad = [f"{m} (floor {_floor(m)}) imports {i} (floor {_floor(i)})"
           for m, deps in _graph().items() for i in deps if _floor(i) > _floor(m)]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []
    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open": cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state: visit(d, stack + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state: visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    "The rule would catch a lazy import inside a function and a relative one."
    f = PKG / "core.py"
    assert "data.schema" not in _imports(f, "core")
    src = "def f():\n    from mmlab.cli import main\nfrom .data import schema\n"
    p = tmp_path / "x.py"; p.write_text(src)
    got = _imports(p, "attention")
    assert "cli" in got and "data.schema" in got
