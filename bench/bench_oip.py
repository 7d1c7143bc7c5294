"""The Open Inference Protocol's ModelInfer against textft's own Predict for the
same work, on the same inference process, measured side by side in one run.

    python -m bench oip                     # default sizes
    python -m bench oip --requests=96       # a quicker run (the harness needs the = form)

Setup: a GPT-Neo built offline (hidden 256, 4 layers, as `bench inference`),
one classification and one generation LoRA adapter trained briefly through the
real stack (local store, three service processes), both loaded before timing.
Clients: 16 threads, one channel each, one text per request, requests built
before timing; Predict through textft's generated stub (what the SDK calls),
ModelInfer through the generated OIP stub with raw_input_contents (what
Triton's client sends). Rounds alternate which protocol goes first; the
ratio is the median of the rounds' ratios. Goal (issue 18): ModelInfer
throughput within 10% of Predict's (ratio >= 0.9).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import offline
from bench.bench_inference import TEXTS, WORDS, _cpu_s

GOAL_RATIO = 0.9
BASE_KEY = "base-models/bench-oip-gpt-neo"
BASE_URI = "store://" + BASE_KEY


def _train(client: Any, steps: int) -> tuple[str, str]:
    from textft.v1 import trainer_pb2

    cls_csv = "text,label\n" + "".join(f"{t},{'pos' if i % 4 < 2 else 'neg'}\n" for i, t in enumerate(TEXTS * 4))
    gen_jsonl = "".join(f'{{"text": "repeat: {w}", "target": "{w} {w}"}}\n' for w in WORDS * 6)
    client.create_dataset("oip-cls")
    client.create_dataset("oip-gen")
    cls_ds = client.upload_dataset("oip-cls", cls_csv.encode(), task="classification", format="csv").name
    gen_ds = client.upload_dataset("oip-gen", gen_jsonl.encode(), task="generation", format="jsonl").name
    runs = []
    for model, task, dataset in (("oip-cls", "classification", cls_ds), ("oip-gen", "generation", gen_ds)):
        client.create_model(model, task=task)
        trainer = {"max_steps": steps, "learning_rate": 5e-3, "per_device_train_batch_size": 8}
        template = f"templates/gpt-neo-125m-lora-text-{task}"
        runs.append(
            client.train(
                model,
                dataset,
                template,
                model_config={"pretrained_model_name_or_path": BASE_URI},
                trainer_config=trainer,
            ).name
        )
    for run in runs:
        done = client.wait(run, timeout=1200)
        if done.state != trainer_pb2.ModelVersion.STATE_READY:
            raise RuntimeError(f"{run} ended {done.state}: {done.failure.message}")
    return runs[0], runs[1]


def _requests(kind: str, model_version: str, texts: list[str], gen: dict[str, Any]) -> list[Any]:
    """One pre-built request per text, for `kind` "predict" or "oip"."""
    from textft.oip.v2 import open_inference_grpc_pb2 as oip_pb2
    from textft.v1 import inference_pb2
    from textft_services.inference.oip import encode_raw_bytes

    if kind == "predict":
        params = inference_pb2.GenerationParameters(**gen)
        return [inference_pb2.PredictRequest(model_version=model_version, texts=[t], generation=params) for t in texts]
    model = model_version.split("/")[1]
    out = []
    for text in texts:
        request = oip_pb2.ModelInferRequest(model_name=model, model_version="1")
        request.inputs.add(name="text", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(encode_raw_bytes([text.encode()]))
        for name, value in gen.items():
            if isinstance(value, bool):
                request.parameters[name].bool_param = value
            else:
                request.parameters[name].int64_param = value
        out.append(request)
    return out


def _timed(calls: list[Callable[[Any], Any]], plan: list[Any]) -> float:
    """Sends `plan` from len(calls) threads (thread i through calls[i]); returns seconds."""
    n = len(calls)
    chunks = [plan[i::n] for i in range(n)]
    barrier = threading.Barrier(n + 1)

    def worker(i: int) -> None:
        barrier.wait()
        for request in chunks[i]:
            calls[i](request)

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(worker, i) for i in range(n)]
        barrier.wait()
        started = time.perf_counter()
        for f in futures:
            f.result()
        return time.perf_counter() - started


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench oip")
    parser.add_argument("--requests", type=int, default=192, help="classification requests per measurement")
    parser.add_argument("--gen-requests", type=int, default=32, help="generation requests per measurement")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--rounds",
        type=int,
        default=12,
        help="interleaved repetitions, short so that each pair sees the same neighbours; medians are reported",
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of the server")
    args = parser.parse_args(argv)

    offline()
    import grpc
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from textft import Client
    from textft.oip.v2 import open_inference_grpc_pb2_grpc as oip_pb2_grpc
    from textft.v1 import inference_pb2_grpc
    from textft_services.common.config import Settings
    from textft_services.common.store import open_store
    from textft_services.common.tinymodels import build_tiny_gpt_neo
    from textft_services.inference.metrics import parse
    from textft_services.stack import _free_port, local_env, start_stack

    hf_logging.set_verbosity_error()
    figures: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "torch_threads": args.torch_threads,
        "rounds": args.rounds,
        "load_average_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="textft-bench-oip-") as tmp:
        home = Path(tmp)
        env = local_env(home / "home", base=dict(os.environ))
        metrics_port = _free_port()
        env.update(
            TEXTFT_METRICS_PORT=str(metrics_port),
            TEXTFT_GRPC_WORKERS=str(args.clients * 2),
            TEXTFT_INFERENCE_QUEUE_SIZE=str(args.clients * 4),
            TEXTFT_TRAINER_CONCURRENCY="2",
            OMP_NUM_THREADS=str(args.torch_threads),
            PYTHONUNBUFFERED="1",
        )
        base_dir = build_tiny_gpt_neo(
            home / "base", corpus=TEXTS, vocab_size=1024, hidden_size=args.hidden, num_layers=args.layers, num_heads=4
        )
        open_store(Settings.from_env(env).store).upload_dir(base_dir, BASE_KEY)
        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(base_dir)).parameters())
        figures["base_model"] = f"GPT-Neo hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M parameters"
        log = open(home / "services.log", "w")  # noqa: SIM115 - closed below
        stack = start_stack(env, log=log)
        channels: list[grpc.Channel] = []
        try:
            a = stack.addresses
            key = env["TEXTFT_API_KEY"]
            with Client(a["dataset"], a["trainer"], a["inference"], api_key=key, timeout=600) as client:
                cls_version, gen_version = _train(client, args.train_steps)
                client.load_model_version(cls_version)
                client.load_model_version(gen_version)
            inference_pid = stack.services["inference"].proc.pid

            def batch_counts() -> tuple[float, float]:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
                    m = parse(response.read().decode())
                return m["textft_inference_batch_rows_sum"], m["textft_inference_batch_rows_count"]

            auth = [("authorization", f"Bearer {key}")]
            channels = [grpc.insecure_channel(a["inference"]) for _ in range(args.clients)]
            predict = [inference_pb2_grpc.InferenceServiceStub(c).Predict for c in channels]
            infer = [oip_pb2_grpc.GRPCInferenceServiceStub(c).ModelInfer for c in channels]
            calls = {
                "predict": [lambda r, s=s: s(r, metadata=auth, timeout=600) for s in predict],
                "oip": [lambda r, s=s: s(r, metadata=auth, timeout=600) for s in infer],
            }
            workloads = {
                "cls": (cls_version, [TEXTS[i % len(TEXTS)] for i in range(args.requests)], {}),
                "gen": (
                    gen_version,
                    [f"repeat: {WORDS[i % len(WORDS)]}" for i in range(args.gen_requests)],
                    {"max_new_tokens": args.new_tokens, "ignore_eos": True},
                ),
            }
            for work, (version, texts, gen) in workloads.items():
                plans = {kind: _requests(kind, version, texts, gen) for kind in calls}
                for kind in calls:  # warm-up: first batches, channel set-up
                    _timed(calls[kind], plans[kind][: args.clients * 2])
                seconds: dict[str, list[float]] = {"predict": [], "oip": []}
                cpu: dict[str, list[float]] = {"predict": [], "oip": []}
                client_cpu: dict[str, list[float]] = {"predict": [], "oip": []}
                rows = {"predict": [0.0, 0.0], "oip": [0.0, 0.0]}  # texts, forward passes
                for r in range(args.rounds):
                    for kind in ("predict", "oip") if r % 2 == 0 else ("oip", "predict"):
                        cpu0, (texts0, passes0) = _cpu_s(inference_pid), batch_counts()
                        own0 = _cpu_s(os.getpid())
                        seconds[kind].append(_timed(calls[kind], plans[kind]))
                        cpu[kind].append((_cpu_s(inference_pid) - cpu0) / len(texts))
                        client_cpu[kind].append((_cpu_s(os.getpid()) - own0) / len(texts))
                        texts1, passes1 = batch_counts()
                        rows[kind][0] += texts1 - texts0
                        rows[kind][1] += passes1 - passes0
                ratios = [p / o for p, o in zip(seconds["predict"], seconds["oip"], strict=True)]
                unit = len(texts) * (args.new_tokens if work == "gen" else 1)
                figures[f"{work}_requests"] = len(texts)
                figures[f"{work}_predict_per_s"] = round(unit / statistics.median(seconds["predict"]), 1)
                figures[f"{work}_oip_per_s"] = round(unit / statistics.median(seconds["oip"]), 1)
                figures[f"{work}_oip_vs_predict"] = round(statistics.median(ratios), 3)
                figures[f"{work}_oip_vs_predict_rounds"] = [round(x, 3) for x in ratios]
                figures[f"{work}_server_cpu_ms_predict"] = round(1000 * statistics.median(cpu["predict"]), 2)
                figures[f"{work}_server_cpu_ms_oip"] = round(1000 * statistics.median(cpu["oip"]), 2)
                for kind in calls:
                    figures[f"{work}_client_cpu_ms_{kind}"] = round(1000 * statistics.median(client_cpu[kind]), 2)
                    figures[f"{work}_texts_per_pass_{kind}"] = round(rows[kind][0] / max(1.0, rows[kind][1]), 1)
        finally:
            for c in channels:
                c.close()
            stack.stop()
            log.close()

    figures["new_tokens"] = args.new_tokens
    figures["load_average_at_end"] = os.getloadavg()[0]
    figures["goal_ratio"] = GOAL_RATIO
    figures["goal_met"] = figures["cls_oip_vs_predict"] >= GOAL_RATIO and figures["gen_oip_vs_predict"] >= GOAL_RATIO
    _print(figures)
    return figures


def _print(f: dict[str, Any]) -> None:
    rows = [
        ("base model", f["base_model"]),
        (
            "machine",
            f"{f['cpus']} CPUs, torch threads {f['torch_threads']}, {f['clients']} clients, medians of "
            f"{f['rounds']} interleaved rounds, load average {f['load_average_at_start']:.1f} -> "
            f"{f['load_average_at_end']:.1f}",
        ),
        (f"classification, {f['cls_requests']} requests x 1 text: Predict (req/s)", f"{f['cls_predict_per_s']}"),
        ("classification: ModelInfer (req/s)", f"{f['cls_oip_per_s']}"),
        ("  ModelInfer/Predict throughput (goal >= 0.9)", f"{f['cls_oip_vs_predict']}x"),
        ("  per round", ", ".join(str(x) for x in f["cls_oip_vs_predict_rounds"])),
        (
            "  server CPU ms/request: Predict, ModelInfer",
            f"{f['cls_server_cpu_ms_predict']}, {f['cls_server_cpu_ms_oip']}",
        ),
        (
            "  client CPU ms/request: Predict, ModelInfer",
            f"{f['cls_client_cpu_ms_predict']}, {f['cls_client_cpu_ms_oip']}",
        ),
        (
            "  texts per forward pass: Predict, ModelInfer",
            f"{f['cls_texts_per_pass_predict']}, {f['cls_texts_per_pass_oip']}",
        ),
        (
            f"generation, {f['gen_requests']} requests x {f['new_tokens']} tokens: Predict (tok/s)",
            f"{f['gen_predict_per_s']}",
        ),
        ("generation: ModelInfer (tok/s)", f"{f['gen_oip_per_s']}"),
        ("  ModelInfer/Predict throughput (goal >= 0.9)", f"{f['gen_oip_vs_predict']}x"),
        ("  per round", ", ".join(str(x) for x in f["gen_oip_vs_predict_rounds"])),
        (
            "  server CPU ms/request: Predict, ModelInfer",
            f"{f['gen_server_cpu_ms_predict']}, {f['gen_server_cpu_ms_oip']}",
        ),
        (
            "  client CPU ms/request: Predict, ModelInfer",
            f"{f['gen_client_cpu_ms_predict']}, {f['gen_client_cpu_ms_oip']}",
        ),
        (
            "  texts per forward pass: Predict, ModelInfer",
            f"{f['gen_texts_per_pass_predict']}, {f['gen_texts_per_pass_oip']}",
        ),
        ("goal met", str(f["goal_met"])),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
