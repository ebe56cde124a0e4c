"""The ``evaclip`` command.

Each sub-command lives in its own module of this package, which defines
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their command runs, so
``evaclip models`` does not pay for importing the trainer. Installed extensions add commands through the
``evaclip.commands`` entry points (:mod:`evaclip.plugins`); their modules also define ``HELP``, the one-line help.
The demo's ``evaclip demo`` and ``evaclip data prepare`` come this way from ``evaclip_demo``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from evaclip import plugins
from evaclip.errors import EvaclipError, Preempted

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("evaclip.cli.models", "list the model configs: parameters and GFLOPs per tower"),
    "embed": ("evaclip.cli.embed", "embed a folder of images or a file of texts to a .npy file"),
    "convert": ("evaclip.cli.convert", "convert a checkpoint (any layout) to safetensors, official, open_clip or hf"),
    "train": ("evaclip.cli.train", "train with a recipe: evaclip train RECIPE [key=value ...]"),
    "eval": ("evaclip.cli.eval", "zero-shot classification, retrieval, video, linear probe; reports"),
    "plan": ("evaclip.cli.plan", "memory and time plan for training a model on a GPU cluster"),
    "index": ("evaclip.cli.index", "build or update a semantic image search index of a collection"),
    "serve": ("evaclip.cli.serve", "serve a search index: HTTP API and web page (127.0.0.1 by default)"),
}


def _commands() -> dict[str, tuple[str, str | None]]:
    """The built-in commands, then those of installed extensions (a built-in name wins). An extension's help
    line is its module's ``HELP``: None here, read by :func:`build_parser` only when the listing is shown."""
    table: dict[str, tuple[str, str | None]] = dict(COMMANDS)
    for name, module_name in plugins.commands().items():
        table.setdefault(name, (module_name, None))
    return table


def _help(module_name: str) -> str:
    module = _import(module_name)
    return getattr(module, "HELP", "") if module is not None else "(not importable)"


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            return None
        raise


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2 (argparse's own convention)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"evaclip {self.prog.split(' ', 1)[-1]}: error: {message} (see --help)\n")


def build_parser(command: str | None = None, table: dict[str, tuple[str, str | None]] | None = None
                 ) -> argparse.ArgumentParser:
    table = _commands() if table is None else table
    parser = _Parser(prog="evaclip", description="EVA-CLIP: models, training, weak-to-strong, evaluation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in table.items():
        if help_text is None and command in (None, name):  # only the listing and the command itself show it
            help_text = _help(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the command being run needs its full argument list (and its imports).
        if command == name:
            module = _import(module_name)
            if module is not None:
                module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    table = _commands()
    if command is not None and command not in table:
        print(f"evaclip: error: unknown command {command!r}; choose one of: {', '.join(table)}",
              file=sys.stderr)
        return 2
    parser = build_parser(command, table)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = _import(table[args.command][0])
    if module is None:
        print(f"evaclip: error: the {args.command!r} command is not available in this version", file=sys.stderr)
        return 2
    try:
        return int(module.run(args) or 0)
    except EvaclipError as e:
        kind = "" if isinstance(e, Preempted) else "error: "  # a preempted run did not fail: it can continue
        print(f"evaclip {args.command}: {kind}{e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # e.g. `evaclip ... | head`: the reader left; nothing more to say
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"evaclip {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script: ``main`` and its exit code; a torchrun worker skips interpreter teardown."""
    code = main()
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ:  # cheap before importing torch
        from evaclip.train.distributed import exit_worker
        exit_worker(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
