"""The packages import one way: no module of datasets/, methods/ or harness/ imports itself back
through others (module-level and function-level imports alike)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _graph() -> dict[str, set[str]]:
    files = {}
    for pkg in ("datasets", "methods", "harness"):
        for f in sorted((REPO / pkg).rglob("*.py")):
            files[".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = f
    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                deps |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [node, dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycles():
    graph = _graph()
    assert "datasets.base" in graph and "methods.registry" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
