"""A training job's overhead on Ray vs as a local child process.

    python -m bench launcher                  # 3 rounds of a 10-step job on each launcher
    python -m bench launcher --rounds=5

One dataset service and two trainer services on one store: one with the local
launcher (the default: the job is a child process of the trainer) and one
with TEXTFT_LAUNCHER=ray, connected through Ray Client to a local Ray head
started here (`ray start --head`, 2 CPUs, loopback). Each round runs the same
10-step LoRA classification job on a tiny GPT-Neo on each trainer, in
alternating order, and times CreateModelVersion to READY. Printed: each
round, the medians and their ratio (Ray / local; 1.0 is no overhead).
Needs textft-services[ray] (make install has it).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

TRAINER_CONFIG = {"max_steps": 10, "per_device_train_batch_size": 8, "save_strategy": "no", "eval_strategy": "no"}


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench launcher", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from tests.support.rayhead import RAY_LOOPBACK, ray_head
    from textft import Client
    from textft_services.common.config import Settings
    from textft_services.common.store import open_store
    from textft_services.common.tinymodels import build_tiny_gpt_neo
    from textft_services.stack import local_env, start_service

    with tempfile.TemporaryDirectory() as tmp, ray_head() as head:
        work = Path(tmp)
        env = local_env(work / "home", {**os.environ, "TEXTFT_API_KEY": "tft_bench_" + secrets.token_hex(16)})
        env.update(RAY_LOOPBACK, TEXTFT_AUTH="on", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        # One store for all; each trainer its own home and so its own queue (replicas on one queue would
        # take each other's jobs, whatever their launcher), each with a model of its own.
        env["TEXTFT_STORE_DIR"] = str(work / "store")
        store = open_store(Settings.from_env(env).store)
        store.upload_dir(build_tiny_gpt_neo(work / "tiny"), "base-models/bench-gpt-neo")
        rng = random.Random(3)
        rows = ["text,label"] + [
            f"the film was {rng.choice(['good', 'bad'])} {i},{rng.choice('pn')}" for i in range(200)
        ]
        with open(work / "services.log", "w") as log:
            dataset = start_service("dataset", env, log=log)
            env["TEXTFT_DATASET_ADDR"] = dataset.address
            trainers = {
                "local": start_service("trainer", {**env, "TEXTFT_HOME": str(work / "local")}, log=log),
                "ray": start_service(
                    "trainer",
                    {
                        **env,
                        "TEXTFT_HOME": str(work / "ray"),
                        "TEXTFT_LAUNCHER": "ray",
                        "TEXTFT_RAY_ADDRESS": head.client_address,
                        "TEXTFT_RAY_NUM_CPUS": "1",
                    },
                    log=log,
                ),
            }
            clients = {
                n: Client(dataset.address, t.address, api_key=env["TEXTFT_API_KEY"]) for n, t in trainers.items()
            }
            try:
                first = clients["local"]
                first.create_dataset("bench")
                version = first.upload_dataset("bench", ("\n".join(rows) + "\n").encode(), format="csv").name
                for name, client in clients.items():
                    client.create_model(f"bench-{name}", task="classification")
                times: dict[str, list[float]] = {"local": [], "ray": []}
                for i in range(args.rounds):
                    order = ["local", "ray"] if i % 2 == 0 else ["ray", "local"]
                    for name in order:
                        client = clients[name]
                        started = time.perf_counter()
                        run = client.train(
                            f"bench-{name}",
                            version,
                            "templates/gpt-neo-125m-lora-text-classification",
                            model_config={"pretrained_model_name_or_path": "store://base-models/bench-gpt-neo"},
                            trainer_config=TRAINER_CONFIG,
                        )
                        list(client.watch(run.name, timeout=1800))
                        done = client.get_model_version(run.name)
                        if done.state != done.STATE_READY:
                            raise RuntimeError(f"{name}: {run.name} ended {done.state}: {done.failure.message}")
                        times[name].append(time.perf_counter() - started)
                        print(f"  round {i + 1} {name:<5} {times[name][-1]:6.1f} s", flush=True)
            finally:
                for client in clients.values():
                    client.close()
                for trainer in trainers.values():
                    trainer.stop()
                dataset.stop()
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    print(f"Ray head started in {head.started_in:.1f} s")
    print(f"median create -> READY: local {local:.1f} s, ray {ray:.1f} s; ray / local = {ray / local:.2f}x")
    return {"rounds": args.rounds, "local_s": times["local"], "ray_s": times["ray"], "ratio": ray / local}
