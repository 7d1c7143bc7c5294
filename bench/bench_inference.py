"""Inference benchmarks, every ratio measured side by side in one run.

    python -m bench inference                          # everything (about 9 minutes on 2 CPUs)
    python -m bench inference --part=generation        # continuous vs static batching only (about 5 minutes)
    python -m bench inference --part=stack --requests=64

Part "stack" (three service processes, adapters trained briefly through the
real trainer, store S3 over HTTP by default: a moto server in this process):
- classification of real text (the docstring paragraphs of bench_trainer:
  25-400 characters, median 53) through the real Predict RPC: 16 client
  threads over 4 adapters, one text a request, and one client sending each
  adapter's texts in requests of 256 (the pipeline's input); both against
  `transformers.pipeline(texts, batch_size=16)` per adapter in this process
  (the strongest plain-transformers way), and against the same server started
  with TEXTFT_INFERENCE_MAX_BATCH_SIZE=1; mixed vs one adapter;
- generation (16 tokens) through Predict against a one-request-at-a-time
  pipeline; mixed vs one adapter;
- adapter cold load: the first Predict of an adapter never loaded in that
  (batch-size-1) process, timed by the client, against a warm Predict; memory
  added per adapter.
Part "generation" (in this process, the engine's own code paths): open-loop
Poisson arrivals, sampled outputs whose lengths vary (EOS ends most rows),
1/4/16/64 adapters in rotation, the static lane (one generate() per batch)
against the continuous batcher: tokens/s, time to first token p50/p99,
inter-token latency p99. Tokens/s is all tokens over the time from the first
arrival to the last answer, so a case needs enough requests (256) that the
steady state, not the tail of the last long row, sets it.
Goals (issue 15): continuous >= 2x static tokens/s at the same offered load,
TTFT p99 <= 1/3 of static's; 64 mixed adapters >= 0.8x one adapter;
classification >= 1.5x the batched pipeline.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import offline
from bench.bench_trainer import docstring_rows

GOAL_SPEEDUP = 3.0
GOAL_CLS_VS_PIPELINE = 1.5  # against pipeline(texts, batch_size=16) per adapter
GOAL_MIXED = 0.8
BASE_KEY = "base-models/bench-gpt-neo"
BASE_URI = "store://" + BASE_KEY
WORDS = ["great", "awful", "superb", "boring", "loved", "dull", "wonderful", "dreadful", "fine", "bland"]
TEXTS = [
    f"the film was {w} and the {x} was {y} from start to end"
    for w in WORDS
    for x, y in [("cast", "fine"), ("plot", "thin")]
]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _train_adapters(client: Any, n: int, steps: int) -> tuple[list[str], list[str]]:
    from textft.v1 import trainer_pb2

    cls_csv = "text,label\n" + "".join(f"{t},{'pos' if i % 4 < 2 else 'neg'}\n" for i, t in enumerate(TEXTS * 4))
    gen_jsonl = "".join(f'{{"text": "repeat: {w}", "target": "{w} {w}"}}\n' for w in WORDS * 6)
    client.create_dataset("bench-cls")
    client.create_dataset("bench-gen")
    cls_ds = client.upload_dataset("bench-cls", cls_csv.encode(), task="classification", format="csv").name
    gen_ds = client.upload_dataset("bench-gen", gen_jsonl.encode(), task="generation", format="jsonl").name
    runs: dict[str, list[str]] = {"classification": [], "generation": []}
    for task, dataset, template in (
        ("classification", cls_ds, "templates/gpt-neo-125m-lora-text-classification"),
        ("generation", gen_ds, "templates/gpt-neo-125m-lora-text-generation"),
    ):
        for i in range(n):
            model = f"bench-{task[:3]}-{i}"
            client.create_model(model, task=task)
            trainer = {"max_steps": steps, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "seed": i}
            runs[task].append(
                client.train(
                    model,
                    dataset,
                    template,
                    model_config={"pretrained_model_name_or_path": BASE_URI},
                    trainer_config=trainer,
                ).name
            )
    for run in runs["classification"] + runs["generation"]:
        done = client.wait(run, timeout=1200)
        if done.state != trainer_pb2.ModelVersion.STATE_READY:
            raise RuntimeError(f"{run} ended {done.state}: {done.failure.message}")
    return runs["classification"], runs["generation"]


def _served(
    addresses: dict[str, str], api_key: str, plan: list[tuple[str, str]], clients: int, gen: dict[str, Any] | None
) -> float:
    """Sends `plan` (version, text) through Predict from `clients` threads; returns seconds."""
    from textft import Client

    pool_clients = [
        Client(addresses["dataset"], addresses["trainer"], addresses["inference"], api_key=api_key, timeout=600)
        for _ in range(clients)
    ]
    chunks = [plan[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        c = pool_clients[i]
        barrier.wait()
        for version, text in chunks[i]:
            c.predict(version, [text], **(gen or {}))

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, i) for i in range(clients)]
        barrier.wait()
        started = time.perf_counter()
        for f in futures:
            f.result()
        seconds = time.perf_counter() - started
    for c in pool_clients:
        c.close()
    return seconds


def _served_batched(addresses: dict[str, str], api_key: str, plan: list[tuple[str, str]], per_request: int) -> float:
    """The pipeline's input shape: each adapter's texts in requests of up to `per_request`, one client; seconds."""
    from textft import Client

    by_adapter: dict[str, list[str]] = {}
    for version, text in plan:
        by_adapter.setdefault(version, []).append(text)
    with Client(addresses["dataset"], addresses["trainer"], addresses["inference"], api_key=api_key, timeout=600) as c:
        started = time.perf_counter()
        for version, texts in by_adapter.items():
            for i in range(0, len(texts), per_request):
                c.predict(version, texts[i : i + per_request])
        return time.perf_counter() - started


class Baseline:
    """The same base and adapters in this process; one pipeline call per request."""

    def __init__(self, store: Any, base_dir: Path, versions: dict[str, str], task: str, workdir: Path) -> None:
        """`versions`: model version name -> adapter location in the store."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

        torch.manual_seed(0)
        self.names = {}
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        tokenizer.pad_token = tokenizer.eos_token
        model: Any = None
        for i, (version, adapter_uri) in enumerate(versions.items()):
            local = workdir / f"{task}-{i}"
            store.download_dir(adapter_uri, local)
            name = f"a{i}"
            self.names[version] = name
            if model is None:
                if task == "classification":
                    base = AutoModelForSequenceClassification.from_pretrained(
                        str(base_dir), num_labels=2, pad_token_id=tokenizer.pad_token_id
                    )
                    base.config.use_cache = False  # as the server: no KV cache for a single forward pass
                else:
                    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
                    base.config.pad_token_id = tokenizer.pad_token_id
                model = PeftModel.from_pretrained(base, str(local), adapter_name=name)
            else:
                model.load_adapter(str(local), adapter_name=name)
        model.eval()
        self.model = model
        kind = "text-classification" if task == "classification" else "text-generation"
        self.pipe = pipeline(kind, model=model, tokenizer=tokenizer, device="cpu")
        self.task = task

    def run(self, plan: list[tuple[str, str]], max_new_tokens: int = 0) -> float:
        import torch

        started = time.perf_counter()
        with torch.no_grad():
            if self.task == "classification":  # the strongest plain-transformers way: batches of 16 per adapter
                by_adapter: dict[str, list[str]] = {}
                for version, text in plan:
                    by_adapter.setdefault(version, []).append(text)
                for version, texts in by_adapter.items():
                    self.model.set_adapter(self.names[version])
                    self.pipe(texts, top_k=None, batch_size=16)
                return time.perf_counter() - started
            for version, text in plan:
                self.model.set_adapter(self.names[version])
                if self.task == "classification":
                    self.pipe(text, top_k=None)
                else:
                    self.pipe(
                        f"{text}\n",
                        max_new_tokens=max_new_tokens,
                        min_new_tokens=max_new_tokens,
                        do_sample=False,
                        return_full_text=False,
                    )
        return time.perf_counter() - started


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench inference")
    parser.add_argument("--requests", type=int, default=192, help="classification requests per measurement")
    parser.add_argument("--gen-requests", type=int, default=64, help="stack: generation requests per measurement")
    parser.add_argument(
        "--poisson-requests",
        type=int,
        default=256,
        help="generation: requests per case (enough that tokens/s is the steady state, not one row's tail)",
    )
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--texts-per-request",
        type=int,
        default=256,
        help="classification, batched: texts per Predict (the server's cap)",
    )
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument(
        "--store", choices=("s3", "local"), default="s3", help="s3: a moto S3 server over HTTP in this process"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of the server and the baseline alike (on a small shared CPU, 1 avoids "
        "the stalls of threads waiting for a busy core)",
    )
    parser.add_argument(
        "--part",
        choices=("all", "stack", "generation"),
        default="all",
        help="stack: classification and generation through the real RPCs; generation: continuous vs static batching",
    )
    parser.add_argument(
        "--rates",
        default="40,160,640",
        help="generation: Poisson arrivals per second, one set of cases per rate (640: past both sides' capacity)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation: the cap; EOS ends most rows first")
    parser.add_argument("--eos-bias", type=float, default=4.0, help="generation: EOS logit bias (output lengths)")
    parser.add_argument("--gen-batch", type=int, default=32, help="generation: rows per batch, both modes")
    parser.add_argument("--adapter-counts", default="4,16,64", help="generation: adapters in rotation, per case")
    parser.add_argument("--gen-rounds", type=int, default=2, help="generation: interleaved rounds (medians)")
    parser.add_argument("--max-waiting-steps", type=int, default=-1, help="generation: -1: the server default")
    args = parser.parse_args(argv)
    args.adapter_counts = [int(n) for n in str(args.adapter_counts).split(",") if n]
    args.rates = [float(r) for r in str(args.rates).split(",") if r]

    offline()
    import torch
    from transformers.utils import logging as hf_logging

    from textft import Client
    from textft_services.common.config import Settings
    from textft_services.common.store import open_store
    from textft_services.common.tinymodels import build_tiny_gpt_neo
    from textft_services.inference.metrics import parse
    from textft_services.stack import _free_port, local_env, start_service, start_stack

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.torch_threads)
    if args.part == "generation":
        gen_figures = generation_bench(args)
        _print_generation(gen_figures)
        return gen_figures
    cls_texts = [r["text"] for r in docstring_rows()]  # real text, lengths as people write them
    figures: dict[str, Any] = {
        "device": "cpu",
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "adapters": args.adapters,
        "torch_threads": args.torch_threads,
        "rounds": args.rounds,
        "load_average_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="textft-bench-inference-") as tmp:
        home = Path(tmp)
        metrics_port = _free_port()
        moto = None
        base_env = dict(os.environ)
        if args.store == "s3" and not base_env.get("MINIO_ENDPOINT"):
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            host, port = moto.get_host_and_port()
            base_env.update(
                TEXTFT_STORE="s3",
                MINIO_ENDPOINT=f"{host}:{port}",
                MINIO_ACCESS_KEY="bench",
                MINIO_SECRET_KEY="bench-secret",
                MINIO_REGION="us-east-1",
                TEXTFT_BUCKET="textft-bench",
            )
        figures["store"] = (
            "S3 over HTTP (moto, in the bench process)" if moto else base_env.get("TEXTFT_STORE", "local")
        )
        env = local_env(home / "home", base=base_env)
        env.update(
            TEXTFT_METRICS_PORT=str(metrics_port),
            TEXTFT_GRPC_WORKERS=str(args.clients * 2),
            TEXTFT_INFERENCE_MAX_ADAPTERS=str(2 * args.adapters),
            TEXTFT_INFERENCE_BATCH_WAIT_MS=str(args.batch_wait_ms),
            TEXTFT_INFERENCE_QUEUE_SIZE=str(args.clients * 4),
            TEXTFT_TRAINER_CONCURRENCY="2",
            OMP_NUM_THREADS=str(args.torch_threads),
            PYTHONUNBUFFERED="1",
        )
        base_dir = build_tiny_gpt_neo(
            home / "base",
            corpus=TEXTS + cls_texts,
            vocab_size=1024,
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=4,
        )
        store = open_store(Settings.from_env(env).store)
        store.upload_dir(base_dir, BASE_KEY)
        params = sum(
            p.numel()
            for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(str(base_dir)).parameters()
        )
        figures["base_model"] = f"GPT-Neo hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M parameters"
        log = open(home / "services.log", "w")  # noqa: SIM115 - closed below
        stack = start_stack(env, log=log)
        extra: list[Any] = []  # services started beside the stack: stopped however the run ends
        try:
            addresses = stack.addresses
            key = env["TEXTFT_API_KEY"]
            client = Client(
                addresses["dataset"], addresses["trainer"], addresses["inference"], api_key=key, timeout=600
            )
            t0 = time.perf_counter()
            cls_versions, gen_versions = _train_adapters(client, args.adapters, args.train_steps)
            figures["training_seconds"] = round(time.perf_counter() - t0, 1)
            inference_pid = stack.services["inference"].proc.pid

            def uris(versions: list[str]) -> dict[str, str]:
                return {v: client.get_model_version(v).adapter_uri for v in versions}

            # -- cold load and memory per adapter (classification adapters; base loaded by the first) --
            rss = [_rss_mb(inference_pid)]
            loads = []
            for version in cls_versions:
                loads.append(client.load_model_version(version).load_seconds)
                rss.append(_rss_mb(inference_pid))
            for version in cls_versions[1:]:  # reload from the store: adapter-only cold loads
                client.unload_model_version(version)
            cold = []
            for version in cls_versions[1:]:
                cold.append(client.load_model_version(version).load_seconds)
            adapter_bytes = [
                v.adapter_bytes for v in client.list_loaded_model_versions() if v.model_version in cls_versions
            ]
            figures["first_load_with_base_s"] = round(loads[0], 3)
            figures["adapter_cold_load_s_median"] = round(statistics.median(cold), 3)
            figures["rss_base_plus_first_adapter_mb"] = round(rss[1] - rss[0], 1)
            figures["rss_per_extra_adapter_mb"] = round((rss[-1] - rss[1]) / max(1, len(cls_versions) - 1), 2)
            figures["adapter_file_kb"] = round(statistics.mean(adapter_bytes) / 1024, 1)
            for version in gen_versions:
                client.load_model_version(version)

            # The same server with batch size 1, in a second process: its first Predict of each
            # adapter is a cold load (never loaded there), timed by the client, from the store.
            one_env = {
                **env,
                "TEXTFT_INFERENCE_MAX_BATCH_SIZE": "1",
                "TEXTFT_METRICS_PORT": "0",
                "TEXTFT_TRAINER_ADDR": addresses["trainer"],  # it resolves versions through the stack's trainer
                "TEXTFT_DATASET_ADDR": addresses["dataset"],
                "TEXTFT_HOME": str(home / "home-batch1"),  # its own adapter cache directory
                "TEXTFT_STORE_DIR": str(Settings.from_env(env).store.local_dir),  # the same store
            }
            one = start_service("inference", one_env, log=log)  # the stack's log, closed with it
            extra.append(one)
            one_addresses = {**addresses, "inference": one.address}
            one_client = Client(addresses["dataset"], addresses["trainer"], one.address, api_key=key, timeout=600)
            one_client.predict(cls_versions[0], [TEXTS[0]])  # the base model loads with the first adapter
            cold_client, warm_client = [], []
            for version in cls_versions[1:]:
                t = time.perf_counter()
                one_client.predict(version, [TEXTS[1]])
                cold_client.append(time.perf_counter() - t)
                t = time.perf_counter()
                one_client.predict(version, [TEXTS[1]])
                warm_client.append(time.perf_counter() - t)
            figures["adapter_cold_predict_client_s_median"] = round(statistics.median(cold_client), 3)
            figures["adapter_warm_predict_client_s_median"] = round(statistics.median(warm_client), 3)

            # -- classification: served (16 clients, mixed / single adapter; batch 32 / batch 1) vs pipeline --
            n = args.requests
            mixed_plan = [(cls_versions[i % len(cls_versions)], cls_texts[i % len(cls_texts)]) for i in range(n)]
            single_plan = [(cls_versions[0], text) for _, text in mixed_plan]
            baseline = Baseline(store, base_dir, uris(cls_versions), "classification", home / "baseline")
            baseline.run(mixed_plan[: 2 * len(cls_versions)])  # warm-up
            _served(addresses, key, mixed_plan[: args.clients * 2], args.clients, None)
            before = parse(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode())
            _served(one_addresses, key, mixed_plan[: args.clients * 2], args.clients, None)
            _served_batched(addresses, key, mixed_plan[: 2 * len(cls_versions)], args.texts_per_request)
            runs: dict[str, list[float]] = {"mixed": [], "single": [], "pipeline": [], "batch1": [], "batched": []}
            server_cpu, client_cpu = [], []
            for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits all three alike
                cpu0, own0 = _cpu_s(inference_pid), _cpu_s(os.getpid())
                runs["mixed"].append(_served(addresses, key, mixed_plan, args.clients, None))
                server_cpu.append((_cpu_s(inference_pid) - cpu0) / n)
                client_cpu.append((_cpu_s(os.getpid()) - own0) / n)
                runs["single"].append(_served(addresses, key, single_plan, args.clients, None))
                runs["pipeline"].append(baseline.run(mixed_plan))
                runs["batched"].append(_served_batched(addresses, key, mixed_plan, args.texts_per_request))
                runs["batch1"].append(_served(one_addresses, key, mixed_plan, args.clients, None))
            after = parse(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode())
            served_mixed, served_single, base_s = (statistics.median(runs[k]) for k in ("mixed", "single", "pipeline"))
            passes = after["textft_inference_batch_rows_count"] - before["textft_inference_batch_rows_count"]
            rows = after["textft_inference_batch_rows_sum"] - before["textft_inference_batch_rows_sum"]
            figures["cls_requests"] = n
            figures["cls_served_mixed_rps"] = round(n / served_mixed, 1)
            figures["cls_served_single_rps"] = round(n / served_single, 1)
            figures["cls_pipeline_rps"] = round(n / base_s, 1)
            figures["cls_speedup_vs_pipeline"] = round(base_s / served_mixed, 2)
            batched_s = statistics.median(runs["batched"])
            figures["cls_texts_per_request"] = args.texts_per_request
            figures["cls_batched_texts_s"] = round(n / batched_s, 1)
            figures["cls_batched_speedup_vs_pipeline"] = round(base_s / batched_s, 2)
            batch1_s = statistics.median(runs["batch1"])
            figures["cls_served_batch1_rps"] = round(n / batch1_s, 1)
            figures["cls_speedup_vs_batch1"] = round(batch1_s / served_mixed, 2)
            one_client.close()
            figures["cls_mixed_vs_single"] = round(served_single / served_mixed, 2)
            figures["cls_mean_batch_rows"] = round(rows / max(1, passes), 1)
            # Where a served request's time goes (16 clients over 4 adapters; medians of the rounds).
            figures["cls_served_ms_per_request"] = round(1000 * served_mixed / n, 2)
            figures["cls_server_cpu_ms_per_request"] = round(1000 * statistics.median(server_cpu), 2)
            figures["cls_client_cpu_ms_per_request"] = round(1000 * statistics.median(client_cpu), 2)
            figures["cls_pipeline_ms_per_request"] = round(1000 * base_s / n, 2)
            del baseline

            # -- generation: tokens/s, same comparison (greedy, fixed length) --
            g = args.gen_requests
            gen = {"max_new_tokens": args.new_tokens, "ignore_eos": True}
            gen_mixed = [(gen_versions[i % len(gen_versions)], f"repeat: {WORDS[i % len(WORDS)]}") for i in range(g)]
            gen_single = [(gen_versions[0], text) for _, text in gen_mixed]
            gbase = Baseline(store, base_dir, uris(gen_versions), "generation", home / "baseline-gen")
            gbase.run(gen_mixed[:4], args.new_tokens)
            _served(addresses, key, gen_mixed[: args.clients], args.clients, gen)
            gruns: dict[str, list[float]] = {"mixed": [], "single": [], "pipeline": []}
            for _ in range(args.rounds):
                gruns["mixed"].append(_served(addresses, key, gen_mixed, args.clients, gen))
                gruns["single"].append(_served(addresses, key, gen_single, args.clients, gen))
                gruns["pipeline"].append(gbase.run(gen_mixed, args.new_tokens))
            served_gmixed, served_gsingle, gbase_s = (
                statistics.median(gruns[k]) for k in ("mixed", "single", "pipeline")
            )
            tokens = g * args.new_tokens
            figures["gen_requests"] = g
            figures["gen_new_tokens"] = args.new_tokens
            figures["gen_served_mixed_tok_s"] = round(tokens / served_gmixed, 1)
            figures["gen_served_single_tok_s"] = round(tokens / served_gsingle, 1)
            figures["gen_pipeline_tok_s"] = round(tokens / gbase_s, 1)
            figures["gen_speedup_vs_pipeline"] = round(gbase_s / served_gmixed, 2)
            figures["gen_mixed_vs_single"] = round(served_gsingle / served_gmixed, 2)
            client.close()
        finally:
            for service in extra:
                service.stop()
            stack.stop()
            log.close()
            if moto is not None:
                moto.stop()

    figures["load_average_at_end"] = os.getloadavg()[0]
    figures["goal_speedup"] = GOAL_SPEEDUP
    figures["goal_mixed_vs_single"] = GOAL_MIXED
    figures["speedup_goal_met"] = (
        figures["cls_batched_speedup_vs_pipeline"] >= GOAL_CLS_VS_PIPELINE
        and figures["gen_speedup_vs_pipeline"] >= GOAL_SPEEDUP
    )
    figures["mixed_goal_met"] = (
        figures["cls_mixed_vs_single"] >= GOAL_MIXED and figures["gen_mixed_vs_single"] >= GOAL_MIXED
    )
    _print(figures)
    if args.part == "all":
        gen_figures = generation_bench(args)
        _print_generation(gen_figures)
        figures.update(gen_figures)
    return figures


def _print(f: dict[str, Any]) -> None:
    rows = [
        ("base model", f["base_model"]),
        (
            "machine",
            f"{f['cpus']} CPUs ({f['device']}), torch threads {f['torch_threads']}, medians of {f['rounds']} "
            f"interleaved rounds, load average {f['load_average_at_start']:.1f} -> {f['load_average_at_end']:.1f}",
        ),
        (f"classification, {f['clients']} clients x {f['adapters']} adapters (req/s)", f"{f['cls_served_mixed_rps']}"),
        (f"classification, {f['clients']} clients x 1 adapter (req/s)", f"{f['cls_served_single_rps']}"),
        ("classification, pipeline(texts, batch_size=16) per adapter (req/s)", f"{f['cls_pipeline_rps']}"),
        ("classification, same server with batch size 1 (req/s)", f"{f['cls_served_batch1_rps']}"),
        ("  speedup served/batched pipeline", f"{f['cls_speedup_vs_pipeline']}x"),
        (
            f"classification, each adapter's texts in requests of {f['cls_texts_per_request']}, one client (texts/s)",
            f"{f['cls_batched_texts_s']}",
        ),
        ("  speedup over the pipeline, same input (goal >= 1.5)", f"{f['cls_batched_speedup_vs_pipeline']}x"),
        ("  speedup served/batch size 1", f"{f['cls_speedup_vs_batch1']}x"),
        ("  mixed/single adapter (goal >= 0.8)", f"{f['cls_mixed_vs_single']}x"),
        ("  mean texts per forward pass", f"{f['cls_mean_batch_rows']}"),
        (
            "  served ms/request: wall, server CPU, client CPU",
            f"{f['cls_served_ms_per_request']}, {f['cls_server_cpu_ms_per_request']}, "
            f"{f['cls_client_cpu_ms_per_request']} (pipeline {f['cls_pipeline_ms_per_request']})",
        ),
        (
            f"generation {f['gen_new_tokens']} tokens, {f['clients']} clients x {f['adapters']} adapters (tok/s)",
            f"{f['gen_served_mixed_tok_s']}",
        ),
        (f"generation, {f['clients']} clients x 1 adapter (tok/s)", f"{f['gen_served_single_tok_s']}"),
        ("generation, pipeline one at a time (tok/s)", f"{f['gen_pipeline_tok_s']}"),
        ("  speedup served/pipeline (goal >= 3)", f"{f['gen_speedup_vs_pipeline']}x"),
        ("  mixed/single adapter (goal >= 0.8)", f"{f['gen_mixed_vs_single']}x"),
        ("first load (base model + adapter), s", f"{f['first_load_with_base_s']}"),
        ("adapter cold load from the store (median, server-timed), s", f"{f['adapter_cold_load_s_median']}"),
        (
            "first Predict of a never-loaded adapter / a warm one, client-timed (median), s",
            f"{f['adapter_cold_predict_client_s_median']} / {f['adapter_warm_predict_client_s_median']}",
        ),
        ("store", f"{f['store']}"),
        ("adapter file size, KiB", f"{f['adapter_file_kb']}"),
        ("RSS added per extra adapter, MiB", f"{f['rss_per_extra_adapter_mb']}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])


# ---- generation: continuous vs static batching, open-loop Poisson arrivals ----
class _Timeline:
    """Stands in for a stream's event queue: timestamps what the loop hands over."""

    def __init__(self, submitted: float, done: threading.Event, left: list[int]) -> None:
        self.submitted, self.done, self.left = submitted, done, left
        self.first: float | None = None
        self.gaps: list[float] = []
        self.last = submitted
        self.tokens = 0
        self.finished: float | None = None

    def put(self, item: tuple[str, Any]) -> None:
        kind, value = item
        now = time.perf_counter()
        if kind == "text":
            if self.first is None:
                self.first = now
            else:
                self.gaps.append(now - self.last)
            self.last = now
            return
        if kind == "end":
            self.tokens = value[1]
        self.finished = now
        if self.first is None:
            self.first = now
        self.left[0] -= 1
        if self.left[0] == 0:
            self.done.set()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class GenerationBench:
    """One base model with up to `adapters` LoRA adapters (random weights, in
    this process), served by the engine's static lane and by its continuous
    batcher in turn, under the same arrival schedule."""

    def __init__(self, args: Any, workdir: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from textft_services.common.config import Settings
        from textft_services.common.tinymodels import build_tiny_gpt_neo
        from textft_services.inference.engine import Adapter, Base, Engine
        from textft_services.modeling.loading import fused_activations

        base_dir = build_tiny_gpt_neo(
            workdir / "gen-base", corpus=TEXTS, vocab_size=1024, hidden_size=args.hidden, num_layers=args.layers
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(base_dir))
        model.config.pad_token_id = self.tokenizer.pad_token_id
        # Output lengths that vary as real ones do: EOS gets a logit bias, so sampled rows end
        # after a geometric number of tokens (mean near --mean-new-tokens) or at max_new_tokens.
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[self.tokenizer.eos_token_id] = args.eos_bias
        model.lm_head = head
        model.config.tie_word_embeddings = False
        fused_activations(model)  # as the server's loader does: the same model on both sides
        self.params = sum(p.numel() for p in model.parameters())
        torch.manual_seed(0)
        peft: Any = None
        self.names = [f"g{i}" for i in range(max(args.adapter_counts))]
        for name in self.names:
            config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
            peft = get_peft_model(model, config, adapter_name=name) if peft is None else peft
            if name != self.names[0]:
                peft.add_adapter(name, config)
        for pname, param in peft.named_parameters():
            if "lora_B" in pname:
                torch.nn.init.normal_(param, std=0.02)
        peft.eval()
        settings = Settings(
            inference_max_batch_size=args.gen_batch,
            inference_batch_wait_ms=args.batch_wait_ms,
            inference_queue_size=100_000,
        )
        self.engine = Engine(settings, store=None, trainer=object())  # type: ignore[arg-type]
        self.base = Base(("bench", "TEXT_GENERATION", 0), peft, self.tokenizer, device=torch.device("cpu"))
        self.base.mixer.install(peft)
        self.adapters = {
            n: Adapter(n, n, self.base, "TEXT_GENERATION", [], False, "{text}\n", 512, 0, 0.0, "bench")
            for n in self.names
        }
        self.args = args

    def run(self, mode: str, adapters: int, schedule: list[tuple[float, int, str]]) -> dict[str, float]:
        """Submits `schedule` ((arrival offset s, adapter index, prompt)) open loop; returns figures."""
        from textft.v1 import inference_pb2
        from textft_services.inference.batcher import GENERATE, STREAM, Admission, Lane
        from textft_services.inference.continuous import ContinuousBatcher
        from textft_services.inference.metrics import InferenceMetrics

        engine, base, args = self.engine, self.base, self.args
        metrics = InferenceMetrics()
        admission = Admission(100_000, metrics)
        params = inference_pb2.GenerationParameters(
            max_new_tokens=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0
        )
        done, left = threading.Event(), [len(schedule)]
        timelines: list[_Timeline] = []
        if mode == "static":
            runner: Any = Lane(
                "bench", lambda works: engine._run(base, works), admission, metrics, args.batch_wait_ms, args.gen_batch
            )
        else:
            runner = ContinuousBatcher(
                "bench",
                lambda *a: engine._step(base, *a),
                base.device,
                self.tokenizer.pad_token_id,
                base.model.config.max_position_embeddings,
                admission,
                metrics,
                args.gen_batch,
                args.gen_batch * (args.max_new_tokens + 32),
                max_waiting_steps=(
                    engine.settings.inference_max_waiting_steps
                    if args.max_waiting_steps < 0
                    else args.max_waiting_steps
                ),
            )
        try:
            started = time.perf_counter()
            for offset, index, prompt in schedule:
                delay = started + offset - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)  # open loop: arrivals do not wait for answers
                adapter = self.adapters[self.names[index % adapters]]
                now = time.perf_counter()
                timeline = _Timeline(now, done, left)
                timelines.append(timeline)
                if mode == "static":
                    work = engine._work(adapter, GENERATE, [prompt], params, None)

                    def finished(future: Any, t: _Timeline = timeline) -> None:
                        prediction = future.result()[0]
                        t.put(("end", (0, prediction.generation.generated_tokens)))

                    work.future.add_done_callback(finished)
                    runner.submit(work)
                else:
                    work = engine._work(adapter, STREAM, [prompt], params, None)
                    work.events = timeline  # type: ignore[assignment]
                    runner.submit(work, engine._rows(work))
            if not done.wait(600):
                raise RuntimeError(f"{mode}: requests still running after 600 s")
            ended = max(t.finished or 0.0 for t in timelines)
        finally:
            runner.close()
        tokens = sum(t.tokens for t in timelines)
        ttft = [(t.first or t.submitted) - t.submitted for t in timelines]
        gaps = [g for t in timelines for g in t.gaps]
        return {
            "tok_s": tokens / (ended - started),
            "ttft_p50": _pct(ttft, 0.5),
            "ttft_p99": _pct(ttft, 0.99),
            "itl_p99": _pct(gaps, 0.99),
            "mean_tokens": tokens / len(timelines),
        }


def generation_bench(args: Any) -> dict[str, Any]:
    """Continuous vs static batching under the same Poisson schedules, rounds interleaved."""
    import random

    import torch

    torch.set_num_threads(args.torch_threads)
    figures: dict[str, Any] = {
        "gen_rates_rps": args.rates,
        "poisson_requests": args.poisson_requests,
        "gen_max_new_tokens": args.max_new_tokens,
        "gen_batch": args.gen_batch,
        "gen_rounds": args.gen_rounds,
    }
    prompts = [f"repeat: {w} and {x}" for w in WORDS for x in WORDS]
    with tempfile.TemporaryDirectory(prefix="textft-bench-generation-") as tmp:
        bench = GenerationBench(args, Path(tmp))
        figures["gen_base_model"] = (
            f"GPT-Neo hidden {args.hidden}, {args.layers} layers, {bench.params / 1e6:.1f}M parameters, LoRA r=8 q/v"
        )
        schedules = {}
        for rate in args.rates:
            rng = random.Random(0)
            offset, schedule = 0.0, []
            for i in range(args.poisson_requests):
                offset += rng.expovariate(rate)
                schedule.append((offset, i, prompts[rng.randrange(len(prompts))]))
            schedules[rate] = schedule
        bench.run("continuous", 1, schedules[args.rates[0]][:8])  # warm-up
        bench.run("static", 1, schedules[args.rates[0]][:8])
        cases = [
            (rate, mode, k)
            for rate in args.rates
            for mode, k in [("continuous", 1)] + [(m, k) for k in args.adapter_counts for m in ("static", "continuous")]
        ]
        results: dict[tuple[float, str, int], list[dict[str, float]]] = {c: [] for c in cases}
        for _ in range(args.gen_rounds):  # interleaved: a noisy neighbour hits every case alike
            for rate, mode, k in cases:
                results[(rate, mode, k)].append(bench.run(mode, k, schedules[rate]))
    med = {c: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for c, rs in results.items()}
    figures["gen_cases"] = [
        {"rate": rate, "mode": mode, "adapters": k, **{key: round(v, 4) for key, v in m.items()}}
        for (rate, mode, k), m in med.items()
    ]
    ratios = {}
    most = max(args.adapter_counts)
    for rate in args.rates:
        for k in args.adapter_counts:
            s_, c_ = med[(rate, "static", k)], med[(rate, "continuous", k)]
            ratios[f"{rate:g}/s {k} adapters: continuous/static tok/s"] = round(c_["tok_s"] / s_["tok_s"], 2)
            ratios[f"{rate:g}/s {k} adapters: continuous/static TTFT p99"] = round(c_["ttft_p99"] / s_["ttft_p99"], 3)
        ratios[f"{rate:g}/s continuous {most} adapters / 1 adapter tok/s"] = round(
            med[(rate, "continuous", most)]["tok_s"] / med[(rate, "continuous", 1)]["tok_s"], 2
        )
    figures["gen_ratios"] = ratios
    return figures


def _print_generation(f: dict[str, Any]) -> None:
    print(
        f"generation: {f['gen_base_model']}; {f['poisson_requests']} requests per case, Poisson arrivals, sampled "
        f"(T=1, EOS-biased: lengths vary), max_new_tokens {f['gen_max_new_tokens']}, {f['gen_batch']} rows per batch, "
        f"medians of {f['gen_rounds']} interleaved rounds; static answers unary (TTFT = its answer), continuous streams"
    )
    print(
        f"{'rate/s':>6} {'mode':<11} {'adapters':>8} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p99':>8} {'tok/req':>7}"
    )
    for r in f["gen_cases"]:
        itl = "-" if r["mode"] == "static" else f"{1000 * r['itl_p99']:.0f}ms"
        print(
            f"{r['rate']:>6g} {r['mode']:<11} {r['adapters']:>8} {r['tok_s']:>8.1f} {1000 * r['ttft_p50']:>7.0f}ms "
            f"{1000 * r['ttft_p99']:>7.0f}ms {itl:>8} {r['mean_tokens']:>7.1f}"
        )
    for key, value in f["gen_ratios"].items():
        print(f"  {key}: {value}x")
    sys.stdout.flush()
