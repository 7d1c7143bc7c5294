"""Training throughput, measured side by side in one run.

    python -m bench trainer                 # default sizes
    python -m bench trainer --steps=60      # a quicker run (the harness needs the = form)

(a) service vs plain: the same LoRA classification job (same rows, model,
    TrainingArguments) run as a textft job through the real stack (dataset +
    trainer services, CreateModelVersion -> WatchModelVersion until READY) and
    as a plain HF Trainer + PEFT script. Both are measured the same way: the
    HF Trainer's own train_samples_per_second (trainer.train() wall time,
    including its dataloader and callbacks; our job adds progress events).
    End-to-end wall time (process start to result; for the service, RPC to
    READY, which includes data preparation, evaluation and upload) is
    reported beside it. Goal (issue 4): train-phase ratio >= 0.95.
(b) padding on variable-length data: our defaults (dynamic padding in the
    collator + train_sampling_strategy=group_by_length, the worker's own code)
    vs naive padding="max_length" with random batches, in train samples/s.
    Goal: >= 1.5x.

Every run is a fresh child process (as a job is); rounds alternate the two
sides so drift in machine load hits both. The table compares the best run of
each side (the one least disturbed by other load on the machine); medians are
in the returned figures too. The model is a tiny-but-not-trivial
GPT-Neo built offline (hidden 256, 4 layers), so compute dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_SERVICE_RATIO = 0.95
GOAL_PADDING_RATIO = 1.5
WORDS = [
    "the",
    "a",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "ending",
    "music",
    "camera",
    "light",
    "dark",
    "cast",
    "script",
    "dialogue",
    "pace",
]
POS, NEG = ["great", "wonderful", "superb", "moving"], ["boring", "awful", "dull", "clumsy"]
RESULT_PREFIX = "BENCH_RESULT "


def make_rows(n: int, seed: int, min_words: int, max_words: int, skew: bool) -> list[dict[str, str]]:
    """Sentiment rows; with skew, most rows are short and a few long (real text)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        if skew:
            length = min(max_words, max(min_words, int(rng.lognormvariate(2.6, 0.8))))
        else:
            length = rng.randint(min_words, max_words)
        words = [rng.choice(WORDS) for _ in range(length)]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label == "pos" else NEG))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def to_csv(rows: list[dict[str, str]]) -> bytes:
    return ("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)).encode()


def trainer_config(steps: int, batch: int) -> dict[str, Any]:
    """The template's defaults that matter here, made explicit for both sides."""
    return {
        "max_steps": steps,
        "per_device_train_batch_size": batch,
        "learning_rate": 2e-4,
        "logging_steps": 10,
        "train_sampling_strategy": "group_by_length",
        "save_strategy": "no",
        "report_to": "none",
        "seed": 42,
    }


# ---- child processes ----
def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """A plain HF Trainer + PEFT script, as a user would write it."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    labels = ["neg", "pos"]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model_dir"], num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        ),
    )
    rows = spec["rows"]
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [labels.index(r["label"]) for r in rows]})
    data = data.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=spec["out_dir"], disable_tqdm=True, **spec["trainer_config"])
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    return {"train_samples_per_second": result.metrics["train_samples_per_second"], "steps": result.global_step}


def child_padding(spec: dict[str, Any]) -> dict[str, Any]:
    """The job's own collator (tokenising per batch) and length-grouped sampler
    (variant "defaults") vs padding to max_length with random batches
    (variant "max_length")."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer, default_data_collator

    from textft_services.modeling import data
    from textft_services.modeling.collate import make_collator
    from textft_services.trainer import worker

    labels = ["neg", "pos"]
    tokenizer, max_length = worker.load_tokenizer({}, spec["model_dir"])
    model = worker.load_base_model(True, spec["model_dir"], {}, tokenizer, labels, False)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        ),
    )
    rows = [{"text": r["text"], "labels": [r["label"]]} for r in spec["rows"]]
    config = dict(spec["trainer_config"])
    args = worker.build_training_args(config, Path(spec["out_dir"]))
    tokens = sum(len(ids) for ids in tokenizer([r["text"] for r in rows], truncation=True)["input_ids"])
    if spec["variant"] == "defaults":  # the job's own path: rows as stored, tokenised per batch
        dataset = Dataset.from_dict({"text": [r["text"] for r in rows], "labels": [r["labels"] for r in rows]})
        collator = make_collator(True, tokenizer, max_length, labels, False)
        trainer = worker.job_trainer(data.text_lengths(dataset, with_target=False))(
            model=model, args=args, train_dataset=dataset, data_collator=collator
        )
    else:
        config["train_sampling_strategy"] = "random"
        args = worker.build_training_args(config, Path(spec["out_dir"]))
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length, padding="max_length")
        dataset = Dataset.from_list(
            [
                {"input_ids": ids, "attention_mask": mask, "labels": labels.index(r["labels"][0])}
                for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows, strict=True)
            ]
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    result = trainer.train()
    return {
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "steps": result.global_step,
        "mean_tokens_per_row": tokens / len(rows),
        "max_length": max_length,
    }


def _run_child(kind: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    spec_path = work / f"spec-{secrets.token_hex(4)}.json"
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_trainer", "--child", kind, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        check=False,
    )
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len(RESULT_PREFIX) :]), "wall_seconds": wall}


# ---- the service side ----
class ServiceSide:
    """Dataset + trainer services on a local store, as `textft up` starts them."""

    def __init__(self, work: Path, model_dir: Path) -> None:
        from textft_services.common.config import Settings
        from textft_services.common.store import open_store
        from textft_services.stack import local_env, start_service

        home = work / "home"
        env = local_env(home, {**os.environ, "TEXTFT_API_KEY": "tft_bench_" + secrets.token_hex(16)})
        env.update(TEXTFT_AUTH="on", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        open_store(Settings.from_env(env).store).upload_dir(model_dir, "base-models/bench-gpt-neo")
        self.log = open(work / "services.log", "w")  # noqa: SIM115 - closed in close()
        self.dataset = start_service("dataset", env, log=self.log)
        env["TEXTFT_DATASET_ADDR"] = self.dataset.address
        self.trainer = start_service("trainer", env, log=self.log)
        from textft import Client

        self.client = Client(self.dataset.address, self.trainer.address, api_key=env["TEXTFT_API_KEY"])
        self.client.create_model("bench", task="classification")
        self.runs = 0

    def train(self, rows: list[dict[str, str]], config: dict[str, Any]) -> dict[str, Any]:
        self.runs += 1
        dataset = f"bench-{self.runs}"
        self.client.create_dataset(dataset)
        version = self.client.upload_dataset(dataset, to_csv(rows), task="classification", format="csv")
        started = time.perf_counter()
        run = self.client.train(
            "bench",
            version.name,
            "templates/gpt-neo-125m-lora-text-classification",
            model_config={"pretrained_model_name_or_path": "store://base-models/bench-gpt-neo"},
            trainer_config=config,
        )
        done = self.client.wait(run.name, timeout=1800)
        wall = time.perf_counter() - started
        if done.state != done.STATE_READY:
            raise RuntimeError(f"bench job {run.name} ended {done.state}: {done.failure.message}")
        return {
            "train_samples_per_second": done.evaluation.metrics["train_samples_per_second"],
            "steps": done.progress.step,
            "wall_seconds": wall,
        }

    def close(self) -> None:
        self.client.close()
        self.trainer.stop()
        self.dataset.stop()
        self.log.close()


def _median(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["train_samples_per_second"] for r in runs)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run of (a) (default 120)")
    parser.add_argument("--padding-steps", type=int, default=40, help="optimizer steps per run of (b) (default 40)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison (default 3)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child", choices=["plain", "padding"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = child_plain(spec) if args.child == "plain" else child_padding(spec)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return result

    from textft_services.common.tinymodels import build_tiny_gpt_neo

    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    corpus = [r["text"] for r in make_rows(400, 99, 5, 40, False)]
    model_dir = build_tiny_gpt_neo(
        work / "model",
        corpus=corpus,
        vocab_size=1024,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=8,
        max_position_embeddings=256,
    )
    print(
        f"model: GPT-Neo hidden {args.hidden}, {args.layers} layers (built offline); {args.steps} steps x batch {args.batch}"
    )
    config = trainer_config(args.steps, args.batch)

    # (a) the same job through the service and as a plain script.
    rows_a = make_rows(512, 1, 8, 48, False)
    service = ServiceSide(work, model_dir)
    plain_runs, service_runs = [], []
    try:
        for i in range(args.rounds):
            out = str(work / f"plain-{i}")
            spec = {"model_dir": str(model_dir), "rows": rows_a, "trainer_config": config, "out_dir": out}
            pair = [
                ("plain", lambda s=spec: _run_child("plain", s, work)),
                ("service", lambda: service.train(rows_a, config)),
            ]
            for name, run in pair if i % 2 == 0 else pair[::-1]:
                result = run()
                (plain_runs if name == "plain" else service_runs).append(result)
                print(
                    f"  round {i + 1} {name:<8} {result['train_samples_per_second']:8.1f} samples/s  wall {result['wall_seconds']:.1f}s"
                )
    finally:
        service.close()
    plain_sps = max(r["train_samples_per_second"] for r in plain_runs)
    service_sps = max(r["train_samples_per_second"] for r in service_runs)
    plain_wall = min(r["wall_seconds"] for r in plain_runs)
    service_wall = min(r["wall_seconds"] for r in service_runs)

    # (b) variable-length rows: our defaults vs padding to max_length.
    rows_b = make_rows(512, 2, 3, 200, True)
    padding_runs: dict[str, list[dict[str, Any]]] = {"defaults": [], "max_length": []}
    for i in range(args.rounds):
        variants = ["defaults", "max_length"] if i % 2 == 0 else ["max_length", "defaults"]
        for variant in variants:
            spec = {
                "model_dir": str(model_dir),
                "rows": rows_b,
                "trainer_config": {**config, "max_steps": args.padding_steps},
                "out_dir": str(work / f"pad-{variant}-{i}"),
                "variant": variant,
            }
            result = _run_child("padding", spec, work)
            padding_runs[variant].append(result)
            print(f"  round {i + 1} {variant:<10} {result['train_samples_per_second']:8.1f} samples/s")
    defaults_sps = max(r["train_samples_per_second"] for r in padding_runs["defaults"])
    naive_sps = max(r["train_samples_per_second"] for r in padding_runs["max_length"])
    info = padding_runs["defaults"][0]

    figures = {
        "model": {
            "hidden_size": args.hidden,
            "layers": args.layers,
            "steps": args.steps,
            "padding_steps": args.padding_steps,
            "batch": args.batch,
        },
        "service_vs_plain": {
            "plain_train_samples_per_second": plain_sps,
            "service_train_samples_per_second": service_sps,
            "train_phase_ratio": _ratio(service_sps, plain_sps),
            "plain_wall_seconds": plain_wall,
            "service_wall_seconds": service_wall,
            "wall_ratio": _ratio(plain_wall, service_wall),
            "median_train_phase_ratio": _ratio(_median(service_runs), _median(plain_runs)),
            "runs": {"plain": plain_runs, "service": service_runs},
            "goal": GOAL_SERVICE_RATIO,
        },
        "padding": {
            "defaults_train_samples_per_second": defaults_sps,
            "max_length_train_samples_per_second": naive_sps,
            "ratio": _ratio(defaults_sps, naive_sps),
            "median_ratio": _ratio(_median(padding_runs["defaults"]), _median(padding_runs["max_length"])),
            "runs": padding_runs,
            "mean_tokens_per_row": info["mean_tokens_per_row"],
            "max_length": info["max_length"],
            "goal": GOAL_PADDING_RATIO,
        },
    }
    a, b = figures["service_vs_plain"], figures["padding"]
    print()
    print(
        f"best of {args.rounds} runs per side; median ratios: (a) {a['median_train_phase_ratio']:.2f}, (b) {b['median_ratio']:.2f}"
    )
    print(f"{'measure':<46} {'ours':>10} {'baseline':>10} {'ratio':>7} {'goal':>6}")
    print(
        f"{'(a) train samples/s: service job vs plain':<46} {service_sps:>10.1f} {plain_sps:>10.1f} "
        f"{a['train_phase_ratio']:>7.2f} {'>=0.95':>6}"
    )
    print(
        f"{'(a) end-to-end wall s (plain/service)':<46} {service_wall:>10.1f} {plain_wall:>10.1f} "
        f"{a['wall_ratio']:>7.2f} {'-':>6}"
    )
    print(
        f"{'(b) train samples/s: defaults vs max_length':<46} {defaults_sps:>10.1f} {naive_sps:>10.1f} "
        f"{b['ratio']:>7.2f} {'>=1.5':>6}"
    )
    print(f"    (b) rows average {b['mean_tokens_per_row']:.0f} tokens, max_length {b['max_length']}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
