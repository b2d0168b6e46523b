"""The flag reference (docs/flags.md), generated from the config dataclasses.

    python docs/flags.py            print the tables (markdown)
    python docs/flags.py --write    replace the tables in docs/flags.md (between the ``<!-- flags:NAME -->`` and
                                    ``<!-- /flags -->`` markers)

One table per command: the plugin's fields of each model config (the ones splatfacto lacks, or whose default
differs from splatfacto's), shown as ``ns-train`` flags, and the fields of ``argp-ns prune``; then the registered
methods whose defaults differ from their config class's (the ``-big`` variants). The meaning is
the field's docstring, the text ``--help`` shows. ``tests/test_readme.py`` fails when docs/flags.md and these
tables drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

FLAGS_DOC = Path(__file__).resolve().parent / "flags.md"
MARKER = re.compile(r"(<!-- flags:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /flags -->)", re.S)

Row = Tuple[str, str, str]  # flag, default, meaning


def field_docs(cls: type) -> Dict[str, str]:
    """Attribute docstrings (a string literal right after ``name: type = ...``) of ``cls`` and its bases,
    the nearest class winning, with whitespace collapsed."""
    docs: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or ``dataclasses.MISSING`` for a required field."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def choices(annotation: Any) -> Optional[List[str]]:
    """The allowed values of a ``Literal`` (or ``Optional[Literal]``) annotation, else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = choices(arg)
            if found:
                return found
    return None


def fmt_default(value: Any) -> str:
    """A default as the command line spells it (``required`` for a field without one)."""
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, Path):
        return str(value)
    return "None" if value is None else str(value)


def rows(cls: type, prefix: str, base: Optional[type] = None) -> List[Row]:
    """(flag, default, meaning) for each public field of ``cls``; with ``base``, only the fields ``base`` lacks
    or whose default differs from ``base``'s (those say "splatfacto: <default>")."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    base_fields = {f.name: f for f in dataclasses.fields(base)} if base else {}
    out: List[Row] = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        default = default_of(f)
        meaning = docs.get(f.name, "")
        if f.name in base_fields:
            base_default = default_of(base_fields[f.name])
            if base_default == default:
                continue
            meaning += f" (splatfacto's default: {fmt_default(base_default)}.)"
        allowed = choices(hints.get(f.name))
        if allowed:
            meaning += f" One of: {', '.join(allowed)}."
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        out.append((flag, fmt_default(default), meaning.strip().replace("|", "\\|")))
    return out


def variants() -> List[Row]:
    """(method, description, changed defaults) for each registered method whose model config differs from its
    config class's defaults (e.g. the ``-big`` variants), read from ``argp_ns.method_config``."""
    from nerfstudio.plugins.types import MethodSpecification

    from argp_ns import method_config

    out: List[Row] = []
    for spec in vars(method_config).values():
        if not isinstance(spec, MethodSpecification):
            continue
        model = spec.config.pipeline.model
        changed = [f"`--pipeline.model.{f.name.replace('_', '-')} {fmt_default(getattr(model, f.name))}`"
                   for f in dataclasses.fields(model)
                   if not f.name.startswith("_") and getattr(model, f.name) != default_of(f)]
        if changed:
            out.append((spec.config.method_name, spec.description.replace("|", "\\|"), ", ".join(changed)))
    return sorted(out)


def variants_markdown(table: List[Row]) -> str:
    """The variants as a markdown table, ending in a newline."""
    lines = ["| method | what it is | defaults that differ from the tables above |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {description} | {changed} |" for name, description, changed in table]
    return "\n".join(lines) + "\n"


def tables() -> Dict[str, List[Row]]:
    """Every table, by marker name: the methods' model flags (the two methods and the MCMC baseline) and ``argp-ns prune``."""
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

    from argp_ns.model import SplatfactoArgpModelConfig, SplatfactoMcmcModelConfig, SplatfactoSafeguardModelConfig
    from argp_ns.posthoc import Prune

    prefix = "pipeline.model."
    return {
        "splatfacto-argp": rows(SplatfactoArgpModelConfig, prefix, SplatfactoModelConfig),
        "splatfacto-safeguard": rows(SplatfactoSafeguardModelConfig, prefix, SplatfactoModelConfig),
        "splatfacto-mcmc": rows(SplatfactoMcmcModelConfig, prefix, SplatfactoModelConfig),
        "argp-ns-prune": rows(Prune, ""),
    }


def markdown(table: List[Row]) -> str:
    """A markdown table (flag, default, meaning), ending in a newline."""
    lines = ["| flag | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{flag}` | `{default}` | {meaning} |" for flag, default, meaning in table]
    return "\n".join(lines) + "\n"


def readme_tables(text: str) -> Dict[str, str]:
    """The tables now between the markers of a text, by marker name."""
    return {m.group("name"): m.group("body") for m in MARKER.finditer(text)}


def rewrite(text: str, generated: Dict[str, str]) -> str:
    """The text with each marked table replaced by its generated version (unknown markers left alone)."""
    return MARKER.sub(lambda m: m.group(1) + generated.get(m.group("name"), m.group("body")) + m.group(4), text)


def generated() -> Dict[str, str]:
    """Every marked table as markdown, by marker name."""
    out = {name: markdown(table) for name, table in tables().items()}
    out["variants"] = variants_markdown(variants())
    return out


def main(argv: List[str]) -> None:
    """Print the tables, or with ``--write`` put them into docs/flags.md."""
    generated_tables = generated()
    if "--write" in argv:
        text = FLAGS_DOC.read_text()
        missing = sorted(set(generated_tables) - set(readme_tables(text)))
        if missing:
            sys.exit(f"docs/flags.py: docs/flags.md has no marker for {', '.join(missing)}")
        FLAGS_DOC.write_text(rewrite(text, generated_tables))
        print(f"docs/flags.py: {len(generated_tables)} tables written to {FLAGS_DOC}")
        return
    for name, table in generated_tables.items():
        print(f"<!-- flags:{name} -->\n{table}<!-- /flags -->\n")


if __name__ == "__main__":
    main(sys.argv[1:])
