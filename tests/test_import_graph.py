"""The package's import graph has no cycles: every ``import`` between mmssf's modules, at module
level or inside a function, goes one way (a cycle works only by import order, and breaks when a
user imports the other module first)."""
import ast
import os
import os.path as osp

from runner_utils import ROOT

PACKAGE = osp.join(ROOT, 'mmssf')


def _module_name(path):
    rel = osp.relpath(path, ROOT)[:-len('.py')].split(os.sep)
    return '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                found[_module_name(path)] = path
    return found


def _imports(name, path, modules):
    """The mmssf modules ``name`` imports (a submodule importing its own package counts: the
    package may be half-initialised at that moment)."""
    is_package = path.endswith('__init__.py')
    package = name if is_package else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - node.level + 1]
                base = '.'.join(parts + ([node.module] if node.module else []))
            for alias in node.names:  # (``from pkg import module`` imports the module)
                sub = f'{base}.{alias.name}'
                targets.add(sub if sub in modules else base)
    return {t for t in targets if t in modules and t != name}


def _cycle(graph):
    """One import cycle of ``graph`` as a list of module names, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    """The import that made the old fileio <-> integrity circle, added back, is found."""
    graph = _graph()
    assert 'mmssf.integrity' in graph['mmssf.fileio']
    graph['mmssf.integrity'] = graph['mmssf.integrity'] | {'mmssf.fileio'}
    assert _cycle(graph) in (['mmssf.fileio', 'mmssf.integrity', 'mmssf.fileio'],
                             ['mmssf.integrity', 'mmssf.fileio', 'mmssf.integrity'])
