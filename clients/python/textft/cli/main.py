"""The `textft` parser and main(): global options, the `up` passthrough, and how
errors from any command become an exit status and a message without a traceback."""

from __future__ import annotations

import argparse
import os
import sys

from ..client import Client, default_api_key
from ..errors import TextftError
from . import access, datasets, models, predict, stack
from .args import UsageError

# Global options that take a value: `textft up` must see everything after "up" untouched.
_GLOBAL_VALUE_OPTIONS = ("--dataset-addr", "--trainer-addr", "--inference-addr", "--api-key", "--app", "--timeout")
_GLOBAL_FLAGS = ("--json",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textft", description="Fine-tune text models with LoRA and serve them (textft services over gRPC)."
    )
    parser.add_argument("--dataset-addr", help="dataset service host:port (default $TEXTFT_DATASET_ADDR or :50051)")
    parser.add_argument("--trainer-addr", help="trainer service host:port (default $TEXTFT_TRAINER_ADDR or :50052)")
    parser.add_argument(
        "--inference-addr", help="inference service host:port (default $TEXTFT_INFERENCE_ADDR or :50053)"
    )
    parser.add_argument("--api-key", help="API key (default $TEXTFT_API_KEY, else $TEXTFT_HOME/api_key)")
    parser.add_argument("--app", help="the app short names are in (default $TEXTFT_APP, else default)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of unary calls in seconds (default 60)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each group adds its own commands; the order here is the order `textft --help` lists them in.
    stack.register(sub)
    datasets.register(sub)
    models.register(sub)
    predict.register(sub)
    models.register_plot(sub)
    access.register(sub)
    return parser


def _split_up(argv: list[str]) -> list[str] | None:
    """The arguments after `up` when the command is `up` (given to the stack untouched), else None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg in _GLOBAL_FLAGS or arg.split("=", 1)[0] in _GLOBAL_VALUE_OPTIONS:
            i += 1
        else:
            return argv[i + 1 :] if arg == "up" else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = _split_up(argv)
    if rest is not None:
        return stack.cmd_up(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    client = Client(
        args.dataset_addr,
        args.trainer_addr,
        args.inference_addr,
        api_key=default_api_key() if args.api_key is None else args.api_key,
        timeout=args.timeout,
        app=args.app,
    )
    try:
        return int(args.func(client, args))
    except UsageError as err:
        sys.stderr.write(f"textft: error: {err}\n")
        return 2
    except TextftError as err:
        code = getattr(err, "grpc_code", err.code)
        sys.stderr.write(f"error: {code.name}: {err.message}\n")
        if err.reason and err.reason != code.name:
            sys.stderr.write(f"  reason: {err.reason}\n")
        for violation in err.violations:
            sys.stderr.write(f"  {violation.field}: {violation.description}\n")
        return 1
    except BrokenPipeError:  # `textft ... | head`: stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    finally:
        client.close()
