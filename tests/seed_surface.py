"""Parse a seed API listing (Sphinx text of a library's API docs) and check our re-implementation.

The seeds in ``/work/shared/seeds/*.txt`` list every public module, class, exception, function,
method, property and attribute with its signature. `parse_seed` turns such a file into
`SeedItem` records; `check_item` resolves one record in our package and reports differences of
names, parameter kinds and defaults.

Recognised lines (at column 0; anything else is prose and ignored):

* ``<prefix>.<mod> module``                         -> module
* ``class <prefix>.<mod>.<Name>(<params>)...``     -> class (its ``__init__``/``__new__`` params)
* ``exception <prefix>.<mod>.<Name>...``           -> exception
* ``<prefix>.<mod>.<name>(<params>)...``           -> module-level function
* ``<prefix>.<mod>.<Name>`` + next line ``alias of <Target>`` -> alias
* in a class: ``property <name>[: T]``, ``[static |classmethod |async ]<name>(<params>)...``,
  ``<name>: <type>[ = <value>]`` (attributes, e.g. pydantic fields)

A parameter list must parse as Python (``def f(<params>): ...``), which also filters out
prose that merely looks like a call. Defaults are kept as Python values when they are literals,
else as source text.

Example:
    ```python
    items = parse_seed("/work/shared/seeds/caveclient.txt", "caveclient")
    problems = check_item(items[3], "caveclient", "prefect_neurodata.clients.cave")
    ```
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_MISSING: Any = object()

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"

# Docstring section headings that look like ``name: value`` but are prose.
_SECTION_WORDS = frozenset(
    {
        "Args",
        "Attributes",
        "Bases",
        "Example",
        "Examples",
        "Note",
        "Notes",
        "Parameters",
        "Raises",
        "Return",
        "Returns",
        "Type",
        "Warning",
        "Warns",
        "Yields",
    }
)


@dataclasses.dataclass(frozen=True)
class SeedParam:
    """One parameter of a seed signature."""

    name: str
    kind: str  # an inspect.Parameter kind name, e.g. "POSITIONAL_OR_KEYWORD"
    has_default: bool
    default: Any = None  # the literal value (when default_is_literal)
    default_is_literal: bool = True
    default_src: str = ""


@dataclasses.dataclass(frozen=True)
class SeedItem:
    """One public name of the seed.

    Attributes:
        kind: module, class, exception, function, method, property, attribute or alias.
        module: Seed module path, e.g. ``caveclient.chunkedgraph``.
        name: Name inside the module, e.g. ``ChunkedGraphClientV1.get_roots``.
        params: Parameters (None when the seed shows no signature).
        decorator: ``static``, ``classmethod`` or ``async`` for methods, else None.
        target: For aliases, the aliased name.
        returns: The return annotation text, if any.
        line: Line number in the seed file.
    """

    kind: str
    module: str
    name: str
    params: tuple[SeedParam, ...] | None = None
    decorator: str | None = None
    target: str | None = None
    returns: str = ""
    line: int = 0

    @property
    def qualname(self) -> str:
        """``module.name`` (``module`` for a module)."""
        return f"{self.module}.{self.name}" if self.name else self.module


def _split_call(text: str) -> tuple[str, str, str] | None:
    """Split ``name(params) rest`` into its three parts (quote- and bracket-aware)."""
    start = text.find("(")
    if start < 0:
        return None
    depth = 0
    quote: str | None = None
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if ch == "\\":
                continue
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return text[:start], text[start + 1 : i], text[i + 1 :]
    return None


def _parse_params(argstr: str) -> tuple[SeedParam, ...] | None:
    try:
        tree = ast.parse(f"def _f({argstr}): pass")
    except SyntaxError:
        return None
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    args = fn.args
    out: list[SeedParam] = []

    def default_of(node: ast.expr | None) -> dict[str, Any]:
        if node is None:
            return {"has_default": False}
        src = ast.unparse(node)
        try:
            value = ast.literal_eval(node)
        except (ValueError, SyntaxError, TypeError):
            return {
                "has_default": True,
                "default": None,
                "default_is_literal": False,
                "default_src": src,
            }
        return {"has_default": True, "default": value, "default_src": src}

    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = "POSITIONAL_ONLY" if index < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append(SeedParam(arg.arg, kind, **default_of(default)))
    if args.vararg is not None:
        out.append(SeedParam(args.vararg.arg, "VAR_POSITIONAL", has_default=False))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(SeedParam(arg.arg, "KEYWORD_ONLY", **default_of(default)))
    if args.kwarg is not None:
        out.append(SeedParam(args.kwarg.arg, "VAR_KEYWORD", has_default=False))
    return tuple(out)


def _returns(rest: str) -> str:
    return rest.replace("[source]", "").strip()


def parse_seed(path: str | Path, package_prefix: str) -> list[SeedItem]:
    """Parse a seed listing into `SeedItem` records.

    Args:
        path: The seed text file.
        package_prefix: The seed's top-level package, e.g. ``caveclient``.

    Returns:
        Items in file order (modules, classes with their members, functions, aliases).
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prefix = re.escape(package_prefix)
    re_module = re.compile(rf"^({prefix}(?:\.{_IDENT})*) module\s*$")
    re_class = re.compile(rf"^(class|exception) ({prefix}(?:\.{_IDENT})+)(.*)$")
    re_func = re.compile(rf"^({prefix}(?:\.{_IDENT})+)\(")
    re_alias = re.compile(rf"^({prefix}(?:\.{_IDENT})+)\s*$")
    re_property = re.compile(rf"^property ({_IDENT})(?:\s*:\s*(.*))?$")
    re_method = re.compile(rf"^(?:(static|classmethod|async) )?({_IDENT})\(")
    re_attr = re.compile(rf"^({_IDENT}): (.+)$")

    items: list[SeedItem] = []
    modules: set[str] = set()
    current_module: str | None = None
    current_class: str | None = None

    def split_owner(dotted: str) -> tuple[str, str]:
        # The longest module path declared so far that prefixes the dotted name.
        best = max((m for m in modules if dotted.startswith(m + ".")), key=len, default=None)
        if best is None:
            module, _, name = dotted.rpartition(".")
            return module, name
        return best, dotted[len(best) + 1 :]

    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip()
        if not line or line[0].isspace():
            continue
        if m := re_module.match(line):
            current_module = m.group(1)
            modules.add(current_module)
            current_class = None
            items.append(SeedItem("module", current_module, "", line=number))
            continue
        if m := re_class.match(line):
            keyword, dotted, rest = m.groups()
            module, name = split_owner(dotted)
            params = None
            returns = ""
            if rest.startswith("("):
                parts = _split_call(rest)
                if parts is None:
                    continue
                params = _parse_params(parts[1])
                if params is None:
                    continue
                returns = _returns(parts[2])
            kind = "exception" if keyword == "exception" else "class"
            items.append(SeedItem(kind, module, name, params=params, returns=returns, line=number))
            current_class = name
            continue
        if m := re_func.match(line):
            parts = _split_call(line)
            if parts is None:
                continue
            params = _parse_params(parts[1])
            if params is None:
                continue
            module, name = split_owner(parts[0])
            items.append(
                SeedItem(
                    "function",
                    module,
                    name,
                    params=params,
                    returns=_returns(parts[2]),
                    line=number,
                )
            )
            current_class = None
            continue
        if m := re_alias.match(line):
            following = next((x.strip() for x in lines[number:] if x.strip()), "")
            if following.startswith("alias of "):
                module, name = split_owner(m.group(1))
                target = following[len("alias of ") :].strip()
                items.append(SeedItem("alias", module, name, target=target, line=number))
            continue
        if current_class is None or current_module is None:
            continue
        if m := re_property.match(line):
            items.append(
                SeedItem(
                    "property",
                    items[-1].module if items else current_module,
                    f"{current_class}.{m.group(1)}",
                    returns=(m.group(2) or "").strip(),
                    line=number,
                )
            )
            continue
        if m := re_method.match(line):
            decorator, name = m.groups()
            body = line[len(decorator) + 1 :] if decorator else line
            parts = _split_call(body)
            if parts is None:
                continue
            params = _parse_params(parts[1])
            if params is None:
                continue
            owner_module = _class_module(items, current_class, current_module)
            items.append(
                SeedItem(
                    "method",
                    owner_module,
                    f"{current_class}.{name}",
                    params=params,
                    decorator=decorator,
                    returns=_returns(parts[2]),
                    line=number,
                )
            )
            continue
        if m := re_attr.match(line):
            name, rest = m.groups()
            if name in _SECTION_WORDS:
                continue
            try:
                tree = ast.parse(f"{name}: {rest}")
            except SyntaxError:
                continue
            if not tree.body or not isinstance(tree.body[0], ast.AnnAssign):
                continue
            owner_module = _class_module(items, current_class, current_module)
            items.append(
                SeedItem(
                    "attribute", owner_module, f"{current_class}.{name}", returns=rest, line=number
                )
            )
    return items


def _class_module(items: list[SeedItem], class_name: str, default: str) -> str:
    for item in reversed(items):
        if item.kind in ("class", "exception") and item.name == class_name:
            return item.module
    return default


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def target_module_name(item: SeedItem, seed_prefix: str, target_prefix: str) -> str:
    """Our module path for a seed module path (``caveclient.x`` -> ``<target>.x``)."""
    if item.module == seed_prefix:
        return target_prefix
    return target_prefix + item.module[len(seed_prefix) :]


def resolve(item: SeedItem, seed_prefix: str, target_prefix: str) -> Any:
    """Import our counterpart of ``item`` (raises ImportError/AttributeError when missing)."""
    module = importlib.import_module(target_module_name(item, seed_prefix, target_prefix))
    if item.kind == "module":
        return module
    obj: Any = module
    parts = item.name.split(".")
    for index, part in enumerate(parts):
        if index == len(parts) - 1 and item.kind in ("property", "attribute"):
            return _static_member(obj, part)
        obj = getattr(obj, part)
    return obj


def _static_member(cls: Any, name: str) -> Any:
    for klass in inspect.getmro(cls):
        if name in vars(klass):
            return vars(klass)[name]
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, Mapping) and name in fields:
        return fields[name]
    annotations = {}
    for klass in inspect.getmro(cls):
        annotations.update(getattr(klass, "__annotations__", {}) or {})
    if name in annotations:
        return annotations[name]
    raise AttributeError(f"{cls.__name__} has no member {name!r}")


def _our_params(item: SeedItem, obj: Any, seed_prefix: str, target_prefix: str) -> list[Any]:
    """Our parameters comparable to the seed's (``self``/``cls`` dropped for methods)."""
    params = list(inspect.signature(obj).parameters.values())
    if item.kind != "method":
        return params
    raw = _raw_member(item, seed_prefix, target_prefix)
    if isinstance(raw, staticmethod):
        return list(inspect.signature(raw.__func__).parameters.values())
    if isinstance(raw, classmethod):
        return list(inspect.signature(raw.__func__).parameters.values())[1:]
    raw_params = list(inspect.signature(raw).parameters.values())
    return raw_params[1:]


def _raw_member(item: SeedItem, seed_prefix: str, target_prefix: str) -> Any:
    owner_name, _, member = item.name.rpartition(".")
    owner = resolve(
        dataclasses.replace(item, kind="class", name=owner_name), seed_prefix, target_prefix
    )
    return _static_member(owner, member)


def _same_default(seed: SeedParam, ours: inspect.Parameter) -> bool:
    if not seed.has_default:
        return ours.default is inspect.Parameter.empty
    if ours.default is inspect.Parameter.empty:
        return False
    if not seed.default_is_literal:
        return repr(ours.default) == seed.default_src
    value = ours.default
    if type(seed.default) is not type(value):
        return False
    return bool(seed.default == value)


def check_item(
    item: SeedItem,
    seed_prefix: str,
    target_prefix: str,
    allowances: Mapping[str, str] | None = None,
) -> list[str]:
    """Differences between a seed item and our implementation (empty list = compatible).

    Rules: the name must exist with the same kind; each seed parameter must appear in the same
    position with the same name, kind and default; we may add parameters only after the seed's
    and only with defaults (or as ``*args``/``**kwargs``). ``allowances`` maps
    ``"<qualname>:<param>"`` to a reason for a deliberate default difference.
    """
    allowances = allowances or {}
    try:
        obj = resolve(item, seed_prefix, target_prefix)
    except (ImportError, AttributeError) as exc:
        return [f"missing: {exc}"]
    problems: list[str] = []
    if item.kind in ("class", "exception") and not inspect.isclass(obj):
        problems.append(f"{item.name} is not a class")
    if item.kind == "exception" and inspect.isclass(obj) and not issubclass(obj, BaseException):
        problems.append(f"{item.name} is not an exception")
    if item.kind == "property" and not isinstance(obj, (property, functools.cached_property)):
        problems.append(f"{item.name} is not a property")
    if item.kind == "method" and item.decorator in ("static", "classmethod"):
        raw = _raw_member(item, seed_prefix, target_prefix)
        expected = staticmethod if item.decorator == "static" else classmethod
        if not isinstance(raw, expected):
            problems.append(f"{item.name} is not a {expected.__name__}")
    if item.kind in ("function", "method") and not callable(obj):
        problems.append(f"{item.name} is not callable")
    if item.kind == "alias":
        target_item = dataclasses.replace(item, kind="class", name=item.target or "")
        try:
            target = resolve(target_item, seed_prefix, target_prefix)
        except (ImportError, AttributeError) as exc:
            return [f"alias target missing: {exc}"]
        if obj is not target:
            problems.append(f"{item.name} is not an alias of {item.target}")
    if item.params is None or problems:
        return problems

    ours = _our_params(item, obj, seed_prefix, target_prefix)
    seed_params = list(item.params)
    for index, seed in enumerate(seed_params):
        if index >= len(ours):
            problems.append(f"parameter {seed.name!r} missing (position {index})")
            continue
        mine = ours[index]
        if mine.name != seed.name:
            problems.append(f"parameter {index} is {mine.name!r}, the seed has {seed.name!r}")
            continue
        if mine.kind.name != seed.kind:
            problems.append(f"parameter {seed.name!r} is {mine.kind.name}, the seed {seed.kind}")
        if not _same_default(seed, mine):
            key = f"{item.qualname}:{seed.name}"
            if key not in allowances:
                seed_default = seed.default_src if seed.has_default else "<none>"
                my_default = (
                    "<none>" if mine.default is inspect.Parameter.empty else repr(mine.default)
                )
                problems.append(
                    f"parameter {seed.name!r} default is {my_default}, the seed's {seed_default}"
                )
    for extra in ours[len(seed_params) :]:
        if extra.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if extra.default is inspect.Parameter.empty:
            problems.append(f"extra parameter {extra.name!r} has no default")
    return problems
