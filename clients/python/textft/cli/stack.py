"""`textft up`: the local stack (store + three services) from the services distribution."""

from __future__ import annotations

import argparse
import sys


def cmd_up(rest: list[str]) -> int:
    try:
        from textft_services import stack  # lazy: the services bring torch and friends
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "textft_services":
            sys.stderr.write(
                "error: `textft up` needs the services distribution (textft-services), which is not installed.\n"
                "Install it from a checkout with `pip install -e services` (or `make install`).\n"
            )
            return 2
        raise
    try:
        return int(stack.main(rest) or 0)
    except KeyboardInterrupt:  # during start-up: start_stack has stopped what it started
        sys.stderr.write("interrupted\n")
        return 130
    except stack.StackError as err:  # a service did not start; its log says why
        sys.stderr.write(f"error: {err}\n")
        return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `up` for `textft --help`; main() hands everything after `up` to cmd_up untouched."""
    sub.add_parser("up", help="start the local stack (store + three services); arguments go to it", add_help=False)
