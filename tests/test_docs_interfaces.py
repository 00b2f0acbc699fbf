"""docs/interfaces.md is checked against the code: every module it names exists, every name it
lists is there, and every signature it writes out has the code's parameter names in order.
A renamed parameter or a moved function fails here instead of misleading the next reader."""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "interfaces.md"
HEADER = re.compile(r"^## `(?P<path>[\w/.]+)`(?: — `class (?P<cls>\w+)\(.*\)`)?")
ENTRY = re.compile(r"^- `(?:@\w+(?:\([^)]*\))? )?(?:class )?(?P<name>\w+)(?P<rest>[^`]*)`")
CALL = re.compile(r"`(?P<name>(?:\w+\.)*\w+)(?P<rest>\([^`]*)`")  # a written call anywhere in an entry
PACKAGES = ("contract", "gat", "sweeps", "analysis")


def split_params(text: str) -> list[str]:
    """Top-level comma-separated parameters of a written signature (brackets nest)."""
    params, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*params, current.strip()] if p]


def written_names(rest: str) -> list[str] | None:
    """Parameter names of `(a: int, *, b=1) -> X` as written, or None when no call is written."""
    if not rest.startswith("("):
        return None
    depth = 0
    for end, char in enumerate(rest):
        depth += char == "("
        depth -= char == ")"
        if depth == 0:
            break
    return [re.match(r"\*{0,2}(\w+)", p).group(1) for p in split_params(rest[1:end]) if p != "*"]


def documented() -> list[tuple[str, str | None, str, list[str] | None]]:
    """(module, class or None, dotted name, written parameter names or None) of every entry and
    of every call written out inside an entry; `python -m X` entries name a module."""
    entries, module, cls, in_entry = [], None, None, False
    for line in DOC.read_text().splitlines():
        if match := HEADER.match(line):
            module = match["path"].removesuffix(".py").rstrip("/").replace("/", ".")
            cls, in_entry = match["cls"], False
            continue
        if module is None:
            continue
        if line.startswith("- `python -m "):
            entries.append((line.split("`")[1].split()[-1], None, "", None))
            continue
        if match := ENTRY.match(line):
            in_entry = True
            entries.append((module, cls, match["name"], written_names(match["rest"])))
            line = line[match.end():]
        elif not (in_entry and line.startswith("  ")):
            in_entry = False
            continue
        entries += [(module, cls, call["name"], written_names(call["rest"])) for call in CALL.finditer(line)]
    return entries


def resolve(module: str, cls: str | None, dotted: str) -> object:
    """The object a documented name refers to: absolute (`contract.mng.num_inputs`) or relative to
    the section's module or class; it must be defined there, not merely imported."""
    parts = dotted.split(".") if dotted else []
    if parts and parts[0] in PACKAGES:
        for cut in range(len(parts), 0, -1):
            try:
                owner = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            parts = parts[cut:]
            break
    else:
        owner = importlib.import_module(module)
        if cls:
            owner = getattr(owner, cls)
    for index, part in enumerate(parts):
        assert hasattr(owner, part), f"docs/interfaces.md names {module}: {dotted}, which does not exist"
        parent, owner = owner, getattr(owner, part)
        home = getattr(owner, "__module__", None)
        if index == 0 and inspect.ismodule(parent) and (inspect.isfunction(owner) or inspect.isclass(owner)):
            inside = home == parent.__name__ or (hasattr(parent, "__path__") and home.startswith(parent.__name__ + "."))
            assert inside, f"docs/interfaces.md places {dotted} in {parent.__name__}; it lives in {home}"
    return owner


def test_the_parser_reads_an_entry():
    assert written_names("(cfg: RunConfig, *, latent_size=32, d_of: Callable[[list[T]], T]) -> dict") == \
        ["cfg", "latent_size", "d_of"]
    assert written_names(": dict[str, NetSize]") is None
    assert len(documented()) > 30


@pytest.mark.parametrize("module, cls, name, params", documented(), ids=lambda v: str(v))
def test_documented_interface_matches_the_code(module, cls, name, params):
    target = resolve(module, cls, name)
    if params is None or not callable(target) or inspect.isclass(target):
        return
    actual = [p for p in inspect.signature(target).parameters if p != "self"]
    assert params == actual, f"docs/interfaces.md writes {name}({', '.join(params)}); the code has {name}({', '.join(actual)})"
