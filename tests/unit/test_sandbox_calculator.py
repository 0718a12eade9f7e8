"""Audit of the engine's tool path: the calculator evaluates arithmetic (and 'str'.count) over a whitelisted AST and
never reaches exec, eval, code compilation, imports, the filesystem or the sandbox."""
import ast
import builtins
import inspect

import pytest

from nanochat import engine
from nanochat.engine import use_calculator

ATTACKS = [
    "__import__('os').system('touch /tmp/pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "exec('import os')",
    "eval('1+1')",
    "compile('1', 'x', 'eval')",
    "(lambda: 1)()",
    "[x for x in range(10**9)]",
    "9**9**9",
    "2**10",
    "'x' * 10**9",
    "'a'.count('a') or exec('1')",
    "'a'.__class__",
    "'a'.count('a', 0)",
    "'{}'.format(1)",
    "'%s' % 1",
    "f'{1+1}'",
    "1 if 1 else 2",
    "(y := 3)",
    "import os",
    "globals()",
    "1 << 10000",
    "99999999999999999999 * 99999999999999999999 * 99999999999999999999 * 99999999999999999999",
    "1e308 * 10",
    "1 / 0",
    "(" * 150 + "1" + ")" * 150,
    "not 1",
    "x + 1",
    "[1, 2][0]",
    "{1: 2}",
]


@pytest.mark.parametrize("expr", ATTACKS)
def test_calculator_refuses_everything_but_arithmetic(expr, monkeypatch):
    calls = []
    real_compile = builtins.compile

    def only_ast_compile(source, filename, mode, flags=0, *args, **kwargs):
        if not flags & ast.PyCF_ONLY_AST:  # ast.parse compiles to a tree; anything else would be code
            calls.append(("compile", source))
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", only_ast_compile)
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append(("exec", a)))
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(("eval", a)))
    monkeypatch.setattr(builtins, "__import__", lambda *a, **k: calls.append(("import", a)))
    assert use_calculator(expr) is None
    assert calls == []


@pytest.mark.parametrize("expr,expected", [("1+2*3", "7"), ("(10 - 4) / 4", "1.5"), ("7 // 2", "3"),
                                           ("-3 % 5", "2"), ("1,234 * 2", "2468"), ("'strawberry'.count('r')", "3"),
                                           ("0.1 + 0.2", "0.3")])
def test_calculator_still_does_arithmetic(expr, expected):
    assert use_calculator(expr) == expected


def test_engine_source_never_executes_code():
    """Static audit of nanochat/engine.py: no exec/eval/compile/__import__ calls, no process, OS or sandbox imports;
    the tool output comes from use_calculator only."""
    tree = ast.parse(inspect.getsource(engine))
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"exec", "eval", "compile", "__import__", "open", "getattr", "setattr"}
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not imported & {"os", "subprocess", "importlib", "execution", "sandbox", "pickle", "ctypes", "code"}
    attrs = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not attrs & {"system", "popen", "execute_code", "literal_eval"}
