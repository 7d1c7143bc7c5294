"""The training job: one process per model version.

Self-contained on purpose: its inputs are the version's name and the store's
address (environment), so any launcher (a local child process, a Kubernetes
Job) can run it. It reads `job.json` and the dataset rows from the store,
trains LoRA with transformers' Trainer and PEFT, evaluates, and writes the
adapter (exactly as `save_pretrained` writes it) and metrics.json back.

It reports to its launcher as JSON lines on stdout prefixed with
EVENT_PREFIX; anything else a library prints there is treated as a log line.
Exit code 0 means READY; a failure is reported as an event before exiting 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common import basemodels
from ..common.config import Settings
from ..common.logs import setup_logging
from ..common.store import ObjectStore, open_store

EVENT_PREFIX = "TEXTFT_EVENT "
EXIT_FAILED = 3
PROMPT_TEMPLATE = "{text}\n"  # generation: the model sees the text, then learns to continue with the target
log = logging.getLogger("textft.worker")


class JobFailure(Exception):
    def __init__(self, reason: str, message: str, field: str = "", rows: list[int] | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.field, self.rows = reason, message, field, rows or []


class Emitter:
    """Writes events for the launcher; never raises (a closed pipe must not kill training)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, kind: str, **fields: Any) -> None:
        try:
            self.stream.write(EVENT_PREFIX + json.dumps({"type": kind, **fields}) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def state(self, state: str) -> None:
        self.emit("state", state=state)

    def log(self, message: str) -> None:
        self.emit("log", message=message)


@dataclass
class Prepared:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    skipped: int
    split_source: str
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False


def _read_rows(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    with store.open(key) as f:
        return [json.loads(line) for line in f if line.strip()]


def _format_issues(issues: list[dict[str, Any]], limit: int = 5) -> str:
    parts = [f"row {i['row']}: {i.get('code', '')} {i.get('message', '')}".strip() for i in issues[:limit]]
    return "; ".join(parts)


def prepare_rows(job: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> Prepared:
    """Task checks, the invalid-data tolerance, and the train/eval split."""
    task = job["task"]
    label_names: list[str] = list(job.get("label_names") or [])
    task_issues: list[dict[str, Any]] = []
    valid: list[dict[str, Any]] = []
    for row in rows:
        text = row.get("text") or ""
        if task == "TEXT_CLASSIFICATION":
            labels = row.get("labels") or []
            unknown = [lab for lab in labels if lab not in label_names]
            if not labels or unknown:
                task_issues.append(
                    {
                        "row": row["row"],
                        "code": "MISSING_LABEL" if not labels else "UNKNOWN_LABEL",
                        "message": f"labels {labels}",
                    }
                )
                continue
        else:
            target = row.get("target") or ""
            if not target:
                task_issues.append({"row": row["row"], "code": "MISSING_TARGET", "message": "no target text"})
                continue
            prompt_len = len(tokenizer(PROMPT_TEMPLATE.format(text=text))["input_ids"])
            if prompt_len >= max_length - 1:
                task_issues.append(
                    {
                        "row": row["row"],
                        "code": "TOO_LONG_AFTER_TOKENIZATION",
                        "message": f"prompt is {prompt_len} tokens, max_length {max_length} leaves no room for the target",
                    }
                )
                continue
        valid.append(row)

    stats = job.get("dataset_stats", {})
    total = int(stats.get("row_count", len(rows)))
    invalid = int(stats.get("invalid_row_count", 0)) + len(task_issues)
    tolerance = float(job.get("invalid_data_tolerance_percent", 0.0))
    share = 100.0 * invalid / total if total else 0.0
    issues = sorted([*job.get("dataset_issues", []), *task_issues], key=lambda i: i["row"])
    if invalid and share > tolerance:
        raise JobFailure(
            "MODEL_TRAINING_INVALID_DATA_TOLERANCE_EXCEEDED",
            f"{invalid} of {total} rows ({share:.1f}%) are invalid, above invalid_data_tolerance_percent={tolerance:g}. "
            f"First: {_format_issues(issues)}. Fix the rows or raise the tolerance to skip them.",
            field="invalid_data_tolerance_percent",
            rows=[int(i["row"]) for i in issues[:20]],
        )
    if not valid:
        raise JobFailure("MODEL_TRAINING_INSUFFICIENT_DATA", "no valid rows to train on", field="dataset_version")
    multi_label = any(len(r.get("labels") or []) > 1 for r in valid)
    if task == "TEXT_CLASSIFICATION" and len({lab for r in valid for lab in r["labels"]}) < 2 and not multi_label:
        raise JobFailure(
            "MODEL_TRAINING_INSUFFICIENT_DATA",
            f"classification needs at least 2 distinct labels among valid rows, found {sorted({lab for r in valid for lab in r['labels']})}",
            field="dataset_version",
        )

    explicit_eval = [r for r in valid if r.get("split") == "eval"]
    if explicit_eval:
        train = [r for r in valid if r.get("split") != "eval"]
        source = "split column"
        evaluation = explicit_eval
    else:
        seed = int(job["configs"]["trainer_config"].get("seed", 42))
        shuffled = list(valid)
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, len(shuffled) // 10) if len(shuffled) >= 5 else 0
        evaluation, train = shuffled[:n_eval], shuffled[n_eval:]
        source = f"random 10% holdout (seed {seed})" if n_eval else "none (fewer than 5 rows): evaluated on train"
        if not evaluation:
            evaluation = train
    return Prepared(train, evaluation, invalid, source, label_names, multi_label)


def _encode_classification(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int, label_names: list[str], multi_label: bool
) -> list[dict[str, Any]]:
    index = {name: i for i, name in enumerate(label_names)}
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    out = []
    for i, row in enumerate(rows):
        if multi_label:
            label: Any = [0.0] * len(label_names)
            for lab in row["labels"]:
                label[index[lab]] = 1.0
        else:
            label = index[row["labels"][0]]
        out.append(
            {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": label}
        )
    return out


def _encode_generation(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Prompt tokens are masked with -100: the loss is on the target only."""
    out = []
    for row in rows:
        prompt = tokenizer(PROMPT_TEMPLATE.format(text=row["text"]))["input_ids"]
        target = tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        target = target[: max_length - len(prompt)]
        ids = prompt + target
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + target})
    return out


def _progress_callback(emitter: Emitter, total_rows: int) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]
        """Turns Trainer logs into progress events with samples/s and ETA."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.last_emit = 0.0

        def _progress(self, state: Any) -> dict[str, Any]:
            elapsed = time.monotonic() - self.start
            step, total = state.global_step, max(state.max_steps, 1)
            eta = elapsed / step * (total - step) if step else None
            return {
                "step": step,
                "total_steps": total,
                "epoch": float(state.epoch or 0.0),
                "percent": 100.0 * step / total,
                "eta_seconds": eta,
            }

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            now = time.monotonic()
            if now - self.last_emit >= 1.0:
                self.last_emit = now
                emitter.emit("progress", **self._progress(state))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            elapsed = time.monotonic() - self.start
            samples = (
                state.global_step
                * args.per_device_train_batch_size
                * args.gradient_accumulation_steps
                * max(args.world_size, 1)
            )
            emitter.emit(
                "progress",
                **self._progress(state),
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0)),
                samples_per_second=samples / elapsed if elapsed > 0 else 0.0,
            )

    return ProgressCallback()


def evaluate_classification(
    model: Any, encoded: list[dict[str, Any]], collator: Any, label_names: list[str], multi_label: bool, batch_size: int
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label ROC AUC with curve points, confusion matrix, loss."""
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

    model.eval()
    logits_all, labels_all, losses = [], [], []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collator(encoded[start : start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch)
            losses.append(float(out.loss) * len(batch["input_ids"]))
            logits_all.append(out.logits.float().cpu().numpy())
            labels_all.append(batch["labels"].cpu().numpy())
    logits, labels = np.concatenate(logits_all), np.concatenate(labels_all)
    n_labels = len(label_names)
    if multi_label:
        scores = 1 / (1 + np.exp(-logits))
        onehot = labels.astype(int)
        predicted = (scores >= 0.5).astype(int)
        accuracy = float((predicted == onehot).all(axis=1).mean())
        macro_f1 = float(f1_score(onehot, predicted, average="macro", zero_division=0))
        cm = np.zeros((n_labels, n_labels), dtype=int)
    else:
        shifted = logits - logits.max(axis=1, keepdims=True)
        scores = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        predicted = scores.argmax(axis=1)
        labels = labels.astype(int)
        onehot = np.eye(n_labels, dtype=int)[labels]
        accuracy = float(accuracy_score(labels, predicted))
        macro_f1 = float(f1_score(labels, predicted, average="macro", labels=list(range(n_labels)), zero_division=0))
        cm = confusion_matrix(labels, predicted, labels=list(range(n_labels)))
    per_label, curves = {}, []
    for i, name in enumerate(label_names):
        if 0 < onehot[:, i].sum() < len(onehot):  # AUC needs both classes present
            per_label[name] = float(roc_auc_score(onehot[:, i], scores[:, i]))
            fpr, tpr, _ = roc_curve(onehot[:, i], scores[:, i])
            keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 50)).astype(int))
            curves.append(
                {"label": name, "false_positive_rate": fpr[keep].tolist(), "true_positive_rate": tpr[keep].tolist()}
            )
    metrics = {"accuracy": accuracy, "macro_f1": macro_f1, "loss": sum(losses) / len(encoded)}
    if per_label:
        metrics["roc_auc"] = float(np.mean(list(per_label.values())))
    return {
        "metrics": metrics,
        "roc_auc_per_label": per_label,
        "roc_curves": curves,
        "label_names": label_names,
        "confusion_matrix": [int(x) for x in np.asarray(cm).ravel()],
        "example_count": len(encoded),
    }


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    encoded: list[dict[str, Any]],
    collator: Any,
    batch_size: int,
    max_exact: int = 32,
) -> dict[str, Any]:
    """Loss and perplexity on target tokens; exact match of greedy generations on a sample."""
    import torch

    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collator(encoded[start : start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch)
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total_loss += float(out.loss) * tokens
            total_tokens += tokens
        loss = total_loss / max(total_tokens, 1)
        matches = 0
        sample = rows[:max_exact]
        tokenizer.padding_side = "left"  # batched generation needs left padding
        for start in range(0, len(sample), batch_size):
            chunk = sample[start : start + batch_size]
            prompts = [PROMPT_TEMPLATE.format(text=r["text"]) for r in chunk]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
            longest = max(len(tokenizer(r["target"])["input_ids"]) for r in chunk) + 2
            generated = model.generate(
                **inputs, max_new_tokens=longest, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row, ids in zip(chunk, generated[:, inputs["input_ids"].shape[1] :], strict=True):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                matches += int(text.strip() == row["target"].strip())
        tokenizer.padding_side = "right"
    return {
        "metrics": {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact_match": matches / max(len(sample), 1),
        },
        "example_count": len(encoded),
    }


def run_job(
    job: dict[str, Any], store: ObjectStore, settings: Settings, workdir: Path, emitter: Emitter
) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    configs = job["configs"]
    model_kwargs = dict(configs["model_config"])
    tokenizer_kwargs = dict(configs["tokenizer_config"])
    peft_kwargs = {k: v for k, v in configs["peft_config"].items() if k != "peft_type"}
    trainer_kwargs = dict(configs["trainer_config"])
    classification = job["task"] == "TEXT_CLASSIFICATION"

    emitter.state("PREPARING_DATA")
    base_name = model_kwargs.pop("pretrained_model_name_or_path")
    base_path = basemodels.resolve(base_name, store, settings.base_model_cache)
    tok_name = tokenizer_kwargs.pop("pretrained_model_name_or_path", base_name)
    tok_path = basemodels.resolve(tok_name, store, settings.base_model_cache)
    tokenizer = AutoTokenizer.from_pretrained(tok_path, **tokenizer_kwargs)
    if tokenizer.pad_token is None:  # GPT-Neo has none: reuse EOS
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    max_length = min(int(tokenizer.model_max_length or 512), 4096)

    rows = _read_rows(store, job["rows_object"])
    prepared = prepare_rows(job, rows, tokenizer, max_length)
    emitter.log(
        f"{len(prepared.train)} train rows, {len(prepared.eval)} eval rows ({prepared.split_source}), {prepared.skipped} invalid rows skipped"
    )
    emitter.emit("data", train_rows=len(prepared.train), eval_rows=len(prepared.eval), skipped_rows=prepared.skipped)

    if classification:
        labels = prepared.label_names
        model_kwargs.setdefault(
            "problem_type", "multi_label_classification" if prepared.multi_label else "single_label_classification"
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            pad_token_id=tokenizer.pad_token_id,  # the tokenizer alone is not enough for batches > 1
            **model_kwargs,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        task_type = TaskType.SEQ_CLS  # PEFT adds the score head to modules_to_save itself
        train_set = _encode_classification(prepared.train, tokenizer, max_length, labels, prepared.multi_label)
        eval_set = _encode_classification(prepared.eval, tokenizer, max_length, labels, prepared.multi_label)
        collator = DataCollatorWithPadding(tokenizer)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        task_type = TaskType.CAUSAL_LM
        train_set = _encode_generation(prepared.train, tokenizer, max_length)
        eval_set = _encode_generation(prepared.eval, tokenizer, max_length)
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True)

    try:
        model = get_peft_model(model, LoraConfig(task_type=task_type, **peft_kwargs))
    except ValueError as e:  # e.g. target modules that do not exist in this model
        raise JobFailure(
            "MODEL_TRAINING_INVALID_PARAMS", f"peft_config rejected for {base_name}: {e}", field="peft_config"
        ) from None
    trainable, total = model.get_nb_trainable_parameters()
    emitter.log(f"base {base_name}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%)")

    out_dir = workdir / "out"
    args = TrainingArguments(output_dir=str(out_dir), disable_tqdm=True, remove_unused_columns=False, **trainer_kwargs)
    from datasets import Dataset

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_set),
        eval_dataset=Dataset.from_list(eval_set) if args.eval_strategy != "no" else None,
        data_collator=collator,
        callbacks=[_progress_callback(emitter, len(train_set))],
    )
    emitter.state("TRAINING")
    result = trainer.train()
    emitter.log(f"training done: {result.global_step} steps, train loss {result.training_loss:.4f}")

    emitter.state("EVALUATING")
    batch = args.per_device_eval_batch_size
    if classification:
        evaluation = evaluate_classification(
            model, eval_set, collator, prepared.label_names, prepared.multi_label, batch
        )
    else:
        evaluation = evaluate_generation(model, tokenizer, prepared.eval, eval_set, collator, batch)
    evaluation["metrics"]["train_loss"] = float(result.training_loss)
    emitter.emit("evaluation", **evaluation)

    emitter.state("UPLOADING")
    adapter_dir = workdir / "adapter"
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    lineage = {
        "base_model": base_name,
        "base_model_revision": basemodels.revision_of(model.get_base_model().config, base_name),
        "library_versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    (adapter_dir / "textft.json").write_text(
        json.dumps(
            {
                "model_version": job["name"],
                "task": job["task"],
                "label_names": prepared.label_names,
                "multi_label": prepared.multi_label,
                "prompt_template": PROMPT_TEMPLATE,
                "max_length": max_length,
                "model_config": configs["model_config"],
                "tokenizer_config": configs["tokenizer_config"],
                "lineage": lineage,
            },
            indent=1,
        )
    )
    prefix = job["adapter_prefix"]
    store.delete_prefix(prefix + "/")  # a retried job must not leave files of an earlier attempt
    store.upload_dir(adapter_dir, prefix)
    store.put_json(job["metrics_object"], evaluation)
    return {"adapter_uri": prefix, "lineage": lineage, "evaluation": evaluation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textft-train-job", description="Run one textft training job.")
    parser.add_argument("--job", required=True, help="store key of the job.json to run")
    parser.add_argument("--workdir", required=True, help="scratch directory of this job")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    setup_logging("train-job", settings.log_level, settings.log_format, settings.secrets())
    emitter = Emitter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # relative paths a library might write land in the job's directory
    try:
        store = open_store(settings.store)
        job = store.get_json(args.job)
        result = run_job(job, store, settings, workdir, emitter)
        emitter.emit("result", **result)
        return 0
    except JobFailure as failure:
        emitter.emit("failure", reason=failure.reason, message=failure.message, field=failure.field, rows=failure.rows)
        return EXIT_FAILED
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        for secret in settings.secrets():
            message = message.replace(secret, "***")
        reason = "MODEL_TRAINING_OUT_OF_MEMORY" if "out of memory" in message.lower() else "MODEL_TRAINING_CRASHED"
        emitter.emit("failure", reason=reason, message=message[:1000], field="", rows=[])
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
