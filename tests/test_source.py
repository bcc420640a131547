"""The package as a learner reads it: what each module exports is something they can call or read."""
import importlib
import inspect
import pkgutil

import minillm


def test_all_holds_public_functions_classes_and_constants():
    """Every name in a module's __all__ exists and is a function, a class or a constant: never a bare classmethod,
    staticmethod or property object (a method written as a module-level function and attached to its class by
    assignment, which nobody can call from the module), and never a module."""
    bad = []
    for m in pkgutil.iter_modules(minillm.__path__):
        if m.name.startswith("_"): continue
        mod = importlib.import_module(f"minillm.{m.name}")
        for name in getattr(mod, "__all__", []):
            if not hasattr(mod, name): bad.append(f"minillm.{m.name}.{name}: in __all__ but not defined"); continue
            o = getattr(mod, name)
            if isinstance(o, (classmethod, staticmethod, property)) or inspect.ismodule(o):
                bad.append(f"minillm.{m.name}.{name}: a {type(o).__name__} object")
            elif callable(o) and not (inspect.isfunction(o) or inspect.isclass(o) or inspect.isbuiltin(o)):
                bad.append(f"minillm.{m.name}.{name}: a callable {type(o).__name__}")
    assert not bad, "\n".join(bad)
