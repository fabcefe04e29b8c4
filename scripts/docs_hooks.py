"""mkdocs hooks: the reference pages' contents, generated from the package at build time so that
they cannot drift from it. A page asks for a part with a marker comment:

- ``<!-- sklens:api -->``: a mkdocstrings block for every name in ``sklens.__all__``, by stage;
- ``<!-- sklens:modules -->``: one block for each public submodule (``sklens.metrics`` ...);
- ``<!-- sklens:cli -->``: ``sklens <command> --help`` for every command, from the parser itself;
- ``<!-- sklens:benchmarks -->``: every table in ``benchmarks/results/``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the API page's sections: the method's stages in the order a study runs them (CONTRIBUTING.md)
STAGES = {
    "models": "Models",
    "data": "Examples",
    "prompt": "Soft prompts",
    "scanning": "The scan",
    "units": "Units and sites",
    "confirm": "Confirmation and controls",
    "explanation": "Explanation and views",
    "causal": "Causal follow-ups",
    "app": "Studies",
    "stats": "Statistics",
    "allocator": "Process",
    "vocabulary": "Process",
}


def api_page() -> str:
    """Every exported name under its stage's heading, documented where it is defined."""
    import sklens

    sections: dict[str, list[str]] = {}
    for name, module in sklens._EXPORTS.items():
        sections.setdefault(STAGES[module.split(".")[1]], []).append(
            _block(f"{module}.{name}", name)
        )
    parts = [f"## {title}\n\n" + "\n".join(blocks) for title, blocks in sections.items()]
    return (
        "\n".join(parts) + "\n## Version\n\n" + _block("sklens.version.__version__", "__version__")
    )


def modules_page() -> str:
    """The public submodules (``sklens.<name>``), each with its members."""
    import sklens

    return "\n".join(
        f"## sklens.{name}\n\n" + _module_block(module, sklens._EXPORTS)
        for name, module in sklens._SUBMODULES.items()
    )


def _block(path: str, name: str) -> str:
    return _directive(path, [f'heading: "sklens.{name}"', f'toc_label: "{name}"'])


def _module_block(module: str, exports: dict[str, str]) -> str:
    """A submodule's members, less those the API page documents already (one anchor each)."""
    hidden = ['"!^_"'] + [f'"!^{name}$"' for name, where in exports.items() if where == module]
    options = ["show_root_heading: false", "heading_level: 3", f"filters: [{', '.join(hidden)}]"]
    return _directive(module, options)


def _directive(path: str, options: list[str]) -> str:
    return f"::: {path}\n    options:\n" + "".join(f"      {o}\n" for o in options)


def cli_page() -> str:
    """``sklens <command> --help`` for each command, at a fixed width."""
    from sklens.app.cli import _parser

    os.environ["COLUMNS"] = "100"
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    parts = ["```text\n" + parser.format_help() + "```\n"]
    for name, sub in commands.items():
        parts.append(f"## sklens {name}\n\n```text\n{sub.format_help()}```\n")
    return "\n".join(parts)


def benchmarks_page() -> str:
    """Each results file of ``benchmarks/results/``, its dated sections as they were appended."""
    parts = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        parts.append(f"## {path.stem}\n\n`benchmarks/results/{path.name}`\n\n{path.read_text()}")
    return "\n".join(parts)


GENERATORS = {
    "<!-- sklens:api -->": api_page,
    "<!-- sklens:modules -->": modules_page,
    "<!-- sklens:cli -->": cli_page,
    "<!-- sklens:benchmarks -->": benchmarks_page,
}


def on_page_markdown(markdown: str, **_) -> str:
    """Replace each marker a page holds with its generated part."""
    for marker, generate in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
