"""`textft predict`: classify texts or generate from them with a model version."""

from __future__ import annotations

import argparse
import sys

from ..client import Client
from ..v1 import inference_pb2
from .args import UsageError
from .output import print_json


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file:
        if args.file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise UsageError("give at least one TEXT, or --file PATH with one text per line")
    return texts


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    texts = _read_texts(args)
    target = args.model if args.model.startswith("models/") else f"models/{args.model}"
    response = client.predict(
        target,
        texts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=args.stop,
        seed=args.seed,
    )
    if args.json:
        print_json(response)
        return 0
    sys.stderr.write(f"model version: {response.model_version}\n")
    finish = inference_pb2.Generation.FinishReason
    for i, (text, prediction) in enumerate(zip(texts, response.predictions, strict=False)):
        kind = prediction.WhichOneof("result")
        if kind == "classification":
            print(text)
            for score in prediction.classification.scores[: args.top or None]:
                print(f"  {score.label:<20} {score.score:.4f}")
        elif kind == "generation":
            gen = prediction.generation
            if len(texts) > 1:
                print(f"[{i + 1}] {text}")
            print(gen.text)
            reason = finish.Name(gen.finish_reason).removeprefix("FINISH_REASON_").lower()
            sys.stderr.write(f"  ({gen.generated_tokens} tokens, finished: {reason})\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `predict`."""
    p = sub.add_parser("predict", help="classify texts or generate from them")
    p.add_argument("model", help="models/{model} (latest READY version) or models/{model}/versions/{version}")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", help="read texts from this file, one per line (- for stdin)")
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--top", type=int, default=0, help="classification: show only the N best labels")
    p.set_defaults(func=cmd_predict)
