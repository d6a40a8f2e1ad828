# SPDX-License-Identifier: MIT
"""The import graph (docs/architecture.md, "Import rules"), checked on the real tree with ``ast``.

Every import of a ``fastmta`` module counts, wherever it stands: at module
level, inside a function (lazy) or under ``TYPE_CHECKING`` (a typing edge is
still a dependency). A rule lists what a module *may* import; the exceptions
below are the documented seams where the tree departs from the table, each
with its reason. A new edge that fits no rule fails here: move the code, or
add a rule or an exception with its reason (docs/interfaces.md names the seam).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "fastmta"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
PYX: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.pyx"))}
ALL_MODULES = set(MODULES) | set(PYX)
PACKAGES = {_module_name(p) for p in PKG.rglob("__init__.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(base: str, names: list[str]) -> Iterator[str]:
    """``from a.b import c``: the submodule ``a.b.c`` when there is one, else ``a.b``."""
    for name in names:
        sub = f"{base}.{name}"
        yield sub if sub in ALL_MODULES else base


class Edge:
    """One import of a fastmta module: target, line, and where it stands."""

    def __init__(self, target: str, line: int, top_level: bool) -> None:
        self.target, self.line, self.top_level = target, line, top_level


def _edges(tree: ast.Module, module: str) -> list[Edge]:
    """Every fastmta import; ``top_level`` means it runs at import time."""
    package = module if module in PACKAGES else module.rpartition(".")[0]
    found: list[Edge] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        targets: list[str] = []
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            targets = list(_resolve(base_name, [a.name for a in node.names]))
        for target in targets:
            if target == "fastmta" or target.startswith("fastmta."):
                found.append(Edge(target, line, top_level))
        for child in ast.iter_child_nodes(node):
            inner = top_level
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = False
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                inner = False
            visit(child, inner)

    visit(tree, True)
    return found


def _pyx_edges(path: Path) -> list[Edge]:
    """A Cython twin is not Python: read its ``import``/``from`` lines."""
    found = []
    pattern = re.compile(r"^\s*(?:from\s+(fastmta[\w.]*)\s+(?:c?import)\s+(\w+)|import\s+(fastmta[\w.]*))")
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        m = pattern.match(line)
        if m:
            target = m.group(3) or next(_resolve(m.group(1), [m.group(2)]))
            found.append(Edge(target, lineno, True))
    return found


GRAPH: dict[str, list[Edge]] = {
    name: _edges(ast.parse(path.read_text(), str(path)), name) for name, path in MODULES.items()
}
GRAPH.update({name: _pyx_edges(path) for name, path in PYX.items()})


def _within(target: str, prefixes: set[str]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


# What each layer may import (besides itself and the root package, which holds
# only ``__version__``). Longest matching prefix wins.
LEAF: set[str] = set()
RULES: dict[str, set[str]] = {
    # The parser is sans-I/O: the twins share only the event kinds and errors.
    "fastmta._events": LEAF,
    "fastmta._parser_py": {"fastmta._events"},
    "fastmta._parser": {"fastmta._events"},
    "fastmta.parser": {"fastmta._events", "fastmta._parser", "fastmta._parser_py"},
    # Leaves: stdlib (and prometheus_client for metrics) only; see STDLIB_ONLY.
    "fastmta.config": LEAF,
    "fastmta.errors": LEAF,
    "fastmta.deliverylog": LEAF,
    "fastmta.metrics": LEAF,
    "fastmta.node.worker_metrics": LEAF,
    "fastmta.smtp.policy": {"fastmta.config", "fastmta.errors"},
    "fastmta.delivery.dns": {"fastmta.config", "fastmta.metrics", "fastmta.errors"},
    # smtp never imports spool, scheduler or delivery: the session ends its job
    # when the store's commit resolves (a typing.Protocol, smtp/protocol.py).
    "fastmta.smtp": {
        "fastmta.smtp",
        "fastmta.parser",
        "fastmta.errors",
        "fastmta.metrics",
        "fastmta.config",
    },
    # The session is a pure state machine: no transport, no metrics, no config.
    "fastmta.smtp.session": {"fastmta.smtp", "fastmta.errors", "fastmta.smtp.policy"},
    # The protocol core: two twins of one loop (parser → session → replies), one import site.
    "fastmta.smtp.core": {"fastmta.parser", "fastmta.smtp._core", "fastmta.smtp._core_py"},
    "fastmta.smtp._core": {"fastmta.parser", "fastmta.smtp.replies", "fastmta.smtp.session"},
    "fastmta.smtp._core_py": {"fastmta.parser", "fastmta.smtp.replies", "fastmta.smtp.session"},
    "fastmta.smtp.commands": {"fastmta.smtp.replies"},
    "fastmta.smtp.replies": LEAF,
    "fastmta.spool": {"fastmta.spool", "fastmta.config", "fastmta.metrics", "fastmta.errors"},
    "fastmta.delivery": {
        "fastmta.delivery",
        "fastmta.parser",
        "fastmta.smtp.commands",
        "fastmta.smtp.replies",
        "fastmta.smtp.trace",  # the hop count, shared with the receiving session
        "fastmta.spool.records",
        "fastmta.metrics",
        "fastmta.errors",
        "fastmta.config",
    },
    "fastmta.scheduler": {
        "fastmta.scheduler",
        "fastmta.spool",
        "fastmta.delivery",
        "fastmta.metrics",
        "fastmta.config",
        "fastmta.errors",
    },
    # Shared limits through Redis: the scheduler sees them as its SharedLimits protocol.
    "fastmta.cluster": {"fastmta.cluster", "fastmta.config", "fastmta.metrics", "fastmta.errors"},
    # DKIM signing: a leaf beside delivery; the remote deliverer gets it as a typing.Protocol.
    "fastmta.dkim": {"fastmta.dkim", "fastmta.config", "fastmta.metrics"},
    # Feedback loops: a Deliverer that turns ARF reports into suppression entries.
    "fastmta.delivery.feedback": {
        "fastmta.config",
        "fastmta.delivery",
        "fastmta.errors",
        "fastmta.deliverylog",
        "fastmta.metrics",
        "fastmta.spool.suppression",
    },
    # Local injection (sendmail, send): header fix-ups and spool/SMTP submission.
    "fastmta.inject.compose": {"fastmta.smtp.commands", "fastmta.smtp.headers"},
    "fastmta.inject": {
        "fastmta.inject",
        "fastmta.config",
        "fastmta.deliverylog",
        "fastmta.smtp.commands",
        "fastmta.smtp.xheaders",
        "fastmta.spool",
    },
    # The load generator: spec and stats below the per-loop client, the process runner on top.
    "fastmta.loadgen": {"fastmta.loadgen", "fastmta.parser", "fastmta.smtp.proxy"},
    "fastmta.loadgen.spec": {"fastmta.parser"},
    "fastmta.loadgen.stats": {"fastmta.loadgen.spec"},
    # The HTTP API: request checks and message building (inject), queue administration over
    # the node's shards (admin), the aiohttp application (app). The server hands it a Context.
    "fastmta.api": {
        "fastmta.api",
        "fastmta.config",
        "fastmta.errors",
        "fastmta.metrics",
        "fastmta.spool",
        "fastmta.inject.compose",
        "fastmta.smtp.commands",
        "fastmta.smtp.headers",
    },
    "fastmta.api.tokens": LEAF,
    # Event webhooks: the delivery log's tap journals events in the spool; senders POST them.
    "fastmta.webhook": {
        "fastmta.webhook",
        "fastmta.config",
        "fastmta.metrics",
        "fastmta.spool",
        "fastmta.deliverylog",
    },
    # The node: composition root, worker processes and their supervisor.
    "fastmta.node": LEAF,
    # The /metrics + /healthz HTTP exporter of the node (a daemon thread).
    "fastmta.node.exporter": {"fastmta.metrics"},
    # Composition root: everything but the entry points and the process layer.
    "fastmta.node.server": ALL_MODULES
    - {"fastmta.cli", "fastmta.node.supervisor", "fastmta.node.worker"}
    - {m for m in ALL_MODULES if _within(m, {"fastmta.commands", "fastmta.loadgen"})},
    "fastmta.node.supervisor": {
        "fastmta.config",
        "fastmta.metrics",
        "fastmta.node.exporter",
        "fastmta.node.worker_metrics",
        "fastmta.spool",
    },
    "fastmta.node.worker": {
        "fastmta.config",
        "fastmta.node.worker_metrics",
        "fastmta.spool.shards",
        "fastmta.node.supervisor",
        # WorkerServer is a Server narrowed to one shard (docs/interfaces.md, Workers).
        "fastmta.node.server",
    },
    # Entry points: cli dispatches to fastmta.commands.<cmd> with importlib.
    "fastmta.__main__": {"fastmta.cli"},
    "fastmta.cli": LEAF,
    "fastmta.commands": {"fastmta.config", "fastmta.preflight"},
    # Start-up checks of the files the configuration names (check-config and serve).
    "fastmta.preflight": {"fastmta.config", "fastmta.smtp.auth", "fastmta.dkim.keys", "fastmta.api.tokens"},
}
# Each command is an entry point: it may use anything below the dispatcher.
for _name in MODULES:
    if _name.startswith("fastmta.commands."):
        RULES[_name] = ALL_MODULES - {"fastmta.cli", "fastmta.__main__"}

# Documented departures from the table: (importer, imported) → why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("fastmta", "fastmta.parser"): "lazy fastmta.parser_backend (module __getattr__), no import-time effect",
    ("fastmta.smtp.protocol", "fastmta.smtp.listener"): (
        "TYPE_CHECKING only: the protocol is typed against the listener's Hub/ListenerSettings"
    ),
    ("fastmta.scheduler", "fastmta.deliverylog"): "start_delivery takes the DeliveryLog the rounds write to",
    ("fastmta.scheduler.core", "fastmta.deliverylog"): "one delivery-log line per attempt, where it lands",
}

# Who may import the top of the graph (entry points and process layer).
IMPORTED_ONLY_BY: dict[str, set[str]] = {
    "fastmta.cli": {"fastmta.__main__"},
    "fastmta.node.server": {"fastmta.commands.serve", "fastmta.node.worker"},
    "fastmta.node.worker": {"fastmta.commands.serve"},
    "fastmta.node.supervisor": {"fastmta.commands.serve", "fastmta.node.worker"},
    "fastmta.node.exporter": {"fastmta.node.server", "fastmta.node.supervisor"},
    "fastmta.loadgen": {"fastmta.commands.load"},
}

STDLIB_ONLY = {
    "fastmta._events": set(),
    "fastmta.config": set(),
    "fastmta.errors": set(),
    "fastmta.deliverylog": set(),
    "fastmta.metrics": {"prometheus_client"},
    "fastmta.node.worker_metrics": {"prometheus_client"},
    "fastmta.node.exporter": {"prometheus_client"},
    "fastmta.smtp.replies": set(),
    "fastmta.smtp.commands": set(),
    "fastmta.smtp.session": set(),
    "fastmta.smtp.trace": set(),
    "fastmta.smtp.policy": set(),
    "fastmta.scheduler.retry": set(),
    "fastmta.scheduler.outcomes": set(),
    "fastmta.dkim.canon": set(),
    "fastmta.cli": set(),
    "fastmta._parser_py": set(),
    "fastmta.parser": set(),
}


def _rule_for(module: str) -> set[str]:
    for prefix in sorted(RULES, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return RULES[prefix]
    raise AssertionError(f"{module} has no rule in test_imports.RULES: add one")


def test_every_module_has_a_rule() -> None:
    for module in GRAPH:
        if module != "fastmta":
            _rule_for(module)


def test_imports_follow_the_graph() -> None:
    bad = []
    for module, edges in GRAPH.items():
        if module == "fastmta":
            allowed: set[str] = set()
        else:
            allowed = _rule_for(module)
        for e in edges:
            if e.target == "fastmta" or e.target == module or (module, e.target) in EXCEPTIONS:
                continue
            if e.target.startswith(module + ".") and module in PACKAGES:
                continue  # a package uses its own submodules
            if not _within(e.target, allowed):
                bad.append(f"{module}:{e.line}: imports {e.target}")
    assert not bad, "imports outside the import rules:\n" + "\n".join(bad)


def test_exceptions_are_still_needed() -> None:
    """A stale exception hides the next real violation of the same pair."""
    for importer, imported in EXCEPTIONS:
        assert any(e.target == imported for e in GRAPH[importer]), (importer, imported)


@pytest.mark.parametrize("target", sorted(IMPORTED_ONLY_BY))
def test_entry_points_are_imported_only_from_above(target: str) -> None:
    outside = {m: edges for m, edges in GRAPH.items() if not _within(m, {target})}
    importers = {m for m, edges in outside.items() if any(_within(e.target, {target}) for e in edges)}
    assert importers <= IMPORTED_ONLY_BY[target], importers - IMPORTED_ONLY_BY[target]


def test_commands_are_imported_only_by_commands() -> None:
    for module, edges in GRAPH.items():
        if module.startswith("fastmta.commands"):
            continue
        assert not any(_within(e.target, {"fastmta.commands"}) for e in edges), module


def test_smtp_and_spool_keep_their_distance() -> None:
    """The two hard lines of the graph, spelled out (the rules above imply them)."""
    never = {
        "fastmta.smtp": {"fastmta.scheduler", "fastmta.delivery", "fastmta.spool"},
        "fastmta.spool": {"fastmta.smtp", "fastmta.scheduler", "fastmta.delivery"},
    }
    for module, edges in GRAPH.items():
        for layer, forbidden in never.items():
            if _within(module, {layer}):
                assert not [e.target for e in edges if _within(e.target, forbidden)], module


@pytest.mark.parametrize("module", sorted(STDLIB_ONLY))
def test_leaves_import_only_the_stdlib(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    third_party = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        for name in names:
            top = name.partition(".")[0]
            if top not in sys.stdlib_module_names and top != "fastmta" and top != "__future__":
                third_party.add(top)
    assert third_party <= STDLIB_ONLY[module], third_party - STDLIB_ONLY[module]


def test_no_import_cycles_at_import_time() -> None:
    """Lazy (function-level) and TYPE_CHECKING imports may close a loop; import time may not."""
    graph = {m: {e.target for e in edges if e.top_level and e.target in GRAPH} for m, edges in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A submodule importing its own package (``from fastmta.smtp import replies``)
            # runs after the package's __init__ finished: not a loop.
            if node.startswith(nxt + ".") and nxt in PACKAGES:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
