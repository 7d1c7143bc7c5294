"""The training job: one process per model version.

Self-contained on purpose: its inputs are the version's name and the store's
address (environment), so any launcher (a local child process, a Kubernetes
Job) can run it. It reads `job.json` and the dataset rows from the store,
trains LoRA with transformers' Trainer and PEFT, evaluates, and writes the
adapter (exactly as `save_pretrained` writes it) and metrics.json back.

It reports to its launcher as JSON lines on stdout prefixed with
EVENT_PREFIX; anything else a library prints there is treated as a log line.
Exit code 0 means READY; a failure is reported as an event before exiting 3.

Checkpoints: whenever the Trainer saves (trainer_config.save_strategy), the
checkpoint is uploaded to the store (checkpoints.py); a job that finds complete
checkpoints of its version in the store resumes from the newest one, so a
re-run after a crash or a trainer restart continues where it left off.

Store outages: every store read and write of the job goes through StoreRetry,
which retries while the store is unavailable (capped exponential backoff, for
TEXTFT_STORE_RETRY_SECONDS per operation) and reports each retry as a log
event; past that budget the job FAILS with MODEL_TRAINING_STORE_UNAVAILABLE.
Every retried operation is idempotent (an upload starts over from scratch).

Under torchrun (several processes, DDP) every rank trains; only rank 0 emits
events, evaluates and uploads. `--evaluate` runs the evaluation of a finished
version against another dataset version, with the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from textft.errors import Unavailable

from ..common import basemodels
from ..common import rows as stored_rows
from ..common.config import Settings
from ..common.logs import setup_logging
from ..common.store import ObjectStore, open_store
from ..modeling import data
from ..modeling.collate import PROMPT_TEMPLATE, batches, make_collator
from ..modeling.data import JobFailure
from . import checkpoints, modelcard

EVENT_PREFIX = "TEXTFT_EVENT "
EXIT_FAILED = 3
EXIT_ORPHANED = 4  # the launcher went away (its lifeline pipe closed)
STORE_UNAVAILABLE = "MODEL_TRAINING_STORE_UNAVAILABLE"
log = logging.getLogger("textft.worker")
T = TypeVar("T")


def parse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The launcher's side of Emitter: the events among a job's stdout lines
    (each a dict with its "type"); other lines and broken JSON are skipped."""
    for line in lines:
        if line.startswith(EVENT_PREFIX):
            try:
                yield json.loads(line[len(EVENT_PREFIX) :])
            except json.JSONDecodeError:
                continue


def rank() -> int:
    """This process's global rank under torchrun; 0 when run alone."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class Emitter:
    """Writes events for the launcher; never raises (a closed pipe must not kill
    training). Silent on ranks other than 0, so a DDP job reports once."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.enabled = enabled

    def emit(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        try:
            self.stream.write(EVENT_PREFIX + json.dumps({"type": kind, **fields}) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def state(self, state: str) -> None:
        self.emit("state", state=state)

    def log(self, message: str) -> None:
        self.emit("log", message=message)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a store that went away raises: Unavailable from the store's own
    calls, and urllib3's errors from a response cut while it is being read."""
    try:
        from urllib3.exceptions import HTTPError
    except ImportError:  # no S3 client installed: only the local store
        return (Unavailable,)
    return (Unavailable, HTTPError)


class StoreRetry:
    """Runs one store operation of the job, again and again while the store is
    unavailable: capped exponential backoff, for at most `budget` seconds per
    operation, each retry reported as a log event (watchers see it). Past the
    budget: JobFailure MODEL_TRAINING_STORE_UNAVAILABLE. Operations passed in
    must be idempotent (they may run again after failing half way)."""

    def __init__(
        self,
        budget: float,
        emitter: Emitter,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = max(0.0, budget)
        self.emitter = emitter
        self.first_delay, self.max_delay = first_delay, max_delay
        self.sleep, self.clock = sleep, clock
        self.retries = 0  # over the job's lifetime
        self.transient = _transient_errors()

    def __call__(self, what: str, operation: Callable[[], T]) -> T:
        deadline = self.clock() + self.budget
        delay, attempt = self.first_delay, 0
        while True:
            try:
                result = operation()
            except self.transient as exc:
                attempt += 1
                detail = exc.message if isinstance(exc, Unavailable) else f"{type(exc).__name__}"
                left = deadline - self.clock()
                if left <= 0:
                    raise JobFailure(
                        STORE_UNAVAILABLE,
                        f"the object store was unavailable while {what} and did not come back within "
                        f"{self.budget:g}s ({attempt} attempts; last error: {detail}). Check that the store "
                        "(MINIO_ENDPOINT) is reachable, then create a new version to train again; "
                        "TEXTFT_STORE_RETRY_SECONDS sets how long a job waits for the store.",
                    ) from None
                wait = min(delay, left)
                self.retries += 1
                message = (
                    f"object store unavailable while {what}, retrying (attempt {attempt}) in {wait:.1f}s: {detail}"
                )
                log.warning("%s", message)
                self.emitter.log(message)
                self.sleep(wait)
                delay = min(delay * 2, self.max_delay)
                continue
            if attempt:
                self.emitter.log(f"object store available again: {what} succeeded after {attempt} retries")
            return result


def read_rows(store: ObjectStore, rows_manifest_object: str, settings: Settings) -> Any:
    """A dataset version's rows (memory-mapped, through its rows manifest)."""
    from textft.errors import FailedPrecondition

    try:
        manifest = stored_rows.load_manifest(store, rows_manifest_object)
        return data.open_rows(store, manifest, settings.rows_cache)
    except FailedPrecondition as e:
        raise JobFailure("DATASET_VERSION_UNREADABLE", e.message, field="dataset_version") from None


def job_trainer(lengths: Any) -> Any:
    """transformers' Trainer whose length-grouped sampler orders by the lengths
    computed from Arrow (its own would read a column of the dataset per index)."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class JobTrainer(Trainer):  # type: ignore[misc]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if self.args.train_sampling_strategy == "group_by_length":
                size = self.args.train_batch_size * self.args.gradient_accumulation_steps
                return LengthGroupedSampler(size, lengths=lengths)
            return super()._get_train_sampler(train_dataset)

    return JobTrainer


def _progress_callback(emitter: Emitter, total_rows: int) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]
        """Turns Trainer logs into progress events with samples/s and ETA."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.start_step = 0
            self.last_emit = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.start = time.monotonic()
            self.start_step = state.global_step  # not 0 when resumed from a checkpoint

        def _progress(self, state: Any) -> dict[str, Any]:
            elapsed = time.monotonic() - self.start
            step, total = state.global_step, max(state.max_steps, 1)
            done = step - self.start_step
            eta = elapsed / done * (total - step) if done > 0 else None
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
                (state.global_step - self.start_step)
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


def _checkpoint_callback(store: ObjectStore, prefix: str, emitter: Emitter, keep: int | None, retry: StoreRetry) -> Any:
    from transformers import TrainerCallback

    class CheckpointUploader(TrainerCallback):  # type: ignore[misc]
        """After each save, the Trainer's local checkpoint goes to the store (rank 0)."""

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if not state.is_world_process_zero:
                return
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not local.is_dir():
                return
            started = time.monotonic()
            step = state.global_step
            target = retry(f"uploading checkpoint step {step}", lambda: checkpoints.upload(store, local, prefix, step))
            retry("pruning old checkpoints", lambda: checkpoints.prune(store, prefix, keep))
            emitter.log(f"checkpoint step {state.global_step} saved to {target} in {time.monotonic() - started:.1f}s")

    return CheckpointUploader()


def evaluate_classification(
    model: Any, rows: Any, collator: Any, label_names: list[str], multi_label: bool, batch_size: int
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label ROC AUC with curve points, confusion matrix, loss."""
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

    model.eval()
    logits_all, labels_all, losses = [], [], []
    with torch.no_grad():
        for chunk in batches(rows, batch_size):
            batch = collator(chunk)
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
    metrics = {"accuracy": accuracy, "macro_f1": macro_f1, "loss": sum(losses) / len(rows)}
    if per_label:
        metrics["roc_auc"] = float(np.mean(list(per_label.values())))
    return {
        "metrics": metrics,
        "roc_auc_per_label": per_label,
        "roc_curves": curves,
        "label_names": label_names,
        "confusion_matrix": [int(x) for x in np.asarray(cm).ravel()],
        "example_count": len(rows),
    }


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    rows: Any,
    collator: Any,
    batch_size: int,
    max_exact: int = 32,
    prompt_template: str = PROMPT_TEMPLATE,
) -> dict[str, Any]:
    """Loss and perplexity on target tokens; exact match and ROUGE-L (F-measure,
    Google's rouge-score package) of greedy generations on a sample."""
    import torch
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])

    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for chunk in batches(rows, batch_size):
            batch = collator(chunk)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model(**batch)
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total_loss += float(out.loss) * tokens
            total_tokens += tokens
        loss = total_loss / max(total_tokens, 1)
        matches, rouge_l = 0, 0.0
        sample = rows.select(range(min(max_exact, len(rows))))
        tokenizer.padding_side = "left"  # batched generation needs left padding
        for chunk in batches(sample, batch_size):
            prompts = [prompt_template.format(text=r["text"]) for r in chunk]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
            longest = max(len(tokenizer(r["target"])["input_ids"]) for r in chunk) + 2
            generated = model.generate(
                **inputs, max_new_tokens=longest, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row, ids in zip(chunk, generated[:, inputs["input_ids"].shape[1] :], strict=True):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                matches += int(text.strip() == row["target"].strip())
                rouge_l += scorer.score(row["target"], text)["rougeL"].fmeasure
        tokenizer.padding_side = "right"
    return {
        "metrics": {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact_match": matches / max(len(sample), 1),
            "rouge_l": rouge_l / max(len(sample), 1),
        },
        "example_count": len(rows),
    }


@dataclass
class Loaded:
    """A tokenizer and a base model made ready for the job's task."""

    tokenizer: Any
    model: Any
    base_name: str
    max_length: int


def load_tokenizer(tokenizer_kwargs: dict[str, Any], path: str) -> tuple[Any, int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
    if tokenizer.pad_token is None:  # GPT-Neo has none: reuse EOS
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer, min(int(tokenizer.model_max_length or 512), 4096)


def load_base_model(
    classification: bool, base_path: str, model_kwargs: dict[str, Any], tokenizer: Any, labels: list[str], multi: bool
) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if classification:
        kwargs = dict(model_kwargs)
        kwargs.setdefault("problem_type", "multi_label_classification" if multi else "single_label_classification")
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            pad_token_id=tokenizer.pad_token_id,  # the tokenizer alone is not enough for batches > 1
            **kwargs,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        return model
    model = AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def evaluate(
    classification: bool,
    model: Any,
    tokenizer: Any,
    rows: Any,
    collator: Any,
    labels: list[str],
    multi: bool,
    batch_size: int,
    max_generations: int = 32,
    prompt_template: str = PROMPT_TEMPLATE,
) -> dict[str, Any]:
    """The version's metrics on rows (a datasets.Dataset), tokenised batch by batch."""
    if classification:
        return evaluate_classification(model, rows, collator, labels, multi, batch_size)
    return evaluate_generation(model, tokenizer, rows, collator, batch_size, max_generations, prompt_template)


def build_training_args(trainer_kwargs: dict[str, Any], out_dir: Path) -> Any:
    """TrainingArguments as the job uses them: the job's directory, no tqdm,
    our collators see the stored columns (they tokenise), gloo for DDP on CPU."""
    import torch
    from transformers import TrainingArguments

    kwargs = dict(trainer_kwargs)
    if world_size() > 1 and not torch.cuda.is_available():
        kwargs.setdefault("ddp_backend", "gloo")
    return TrainingArguments(output_dir=str(out_dir), disable_tqdm=True, remove_unused_columns=False, **kwargs)


def run_job(
    job: dict[str, Any], store: ObjectStore, settings: Settings, workdir: Path, emitter: Emitter
) -> dict[str, Any] | None:
    """Trains, evaluates and uploads; returns the result on rank 0, None on other ranks."""
    import peft
    import torch
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model

    configs = job["configs"]
    model_kwargs = dict(configs["model_config"])
    tokenizer_kwargs = dict(configs["tokenizer_config"])
    peft_kwargs = {k: v for k, v in configs["peft_config"].items() if k != "peft_type"}
    trainer_kwargs = dict(configs["trainer_config"])
    classification = job["task"] == "TEXT_CLASSIFICATION"
    version_prefix = job["metrics_object"].rsplit("/", 1)[0]
    ckpt_prefix = job.get("checkpoints_prefix") or checkpoints.checkpoints_prefix(version_prefix)
    retry = StoreRetry(settings.store_retry_seconds, emitter)

    emitter.state("PREPARING_DATA")
    base_name = model_kwargs.pop("pretrained_model_name_or_path")
    base_path = retry("reading the base model", lambda: basemodels.resolve(base_name, store, settings.base_model_cache))
    tok_name = tokenizer_kwargs.pop("pretrained_model_name_or_path", base_name)
    tok_path = retry("reading the tokenizer", lambda: basemodels.resolve(tok_name, store, settings.base_model_cache))
    tokenizer, max_length = load_tokenizer(tokenizer_kwargs, tok_path)

    rows = retry("reading the dataset rows", lambda: read_rows(store, job["rows_manifest_object"], settings))
    stats = job.get("dataset_stats", {})
    prepared = data.prepare(
        rows,
        classification,
        list(job.get("label_names") or []),
        lambda text: len(tokenizer(PROMPT_TEMPLATE.format(text=text))["input_ids"]),
        max_length,
        int(stats.get("row_count", 0)),
        int(stats.get("invalid_row_count", 0)),
        list(job.get("dataset_issues", [])),
        float(job.get("invalid_data_tolerance_percent", 0.0)),
        int(configs["trainer_config"].get("seed", 42)),
    )
    emitter.log(
        f"{len(prepared.train)} train rows, {len(prepared.eval)} eval rows ({prepared.split_source}), {prepared.skipped} invalid rows skipped"
    )
    emitter.emit("data", train_rows=len(prepared.train), eval_rows=len(prepared.eval), skipped_rows=prepared.skipped)

    labels, multi = prepared.label_names, prepared.multi_label
    model = load_base_model(classification, base_path, model_kwargs, tokenizer, labels, multi)
    task_type = TaskType.SEQ_CLS if classification else TaskType.CAUSAL_LM  # SEQ_CLS saves the score head itself
    train_set, eval_set = rows.select(prepared.train), rows.select(prepared.eval)
    lengths = data.text_lengths(rows, with_target=not classification)[prepared.train]
    collator = make_collator(classification, tokenizer, max_length, labels, multi)

    try:
        model = get_peft_model(model, LoraConfig(task_type=task_type, **peft_kwargs))
    except ValueError as e:  # e.g. target modules that do not exist in this model
        raise JobFailure(
            "MODEL_TRAINING_INVALID_PARAMS", f"peft_config rejected for {base_name}: {e}", field="peft_config"
        ) from None
    trainable, total = model.get_nb_trainable_parameters()
    emitter.log(f"base {base_name}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%)")

    out_dir = workdir / "out"
    if rank() == 0 and out_dir.exists():  # checkpoints of an earlier attempt: the store's are the truth
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
    args = build_training_args(trainer_kwargs, out_dir)
    if args.world_size > 1:
        emitter.log(f"distributed: {args.world_size} processes, backend {args.ddp_backend or 'default'}")
    callbacks = [_progress_callback(emitter, len(train_set))]
    if args.save_strategy != "no":
        callbacks.append(_checkpoint_callback(store, ckpt_prefix, emitter, args.save_total_limit, retry))
    trainer = job_trainer(lengths)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set if args.eval_strategy != "no" else None,
        data_collator=collator,
        callbacks=callbacks,
    )
    resume_from = None
    step = retry("listing checkpoints", lambda: checkpoints.latest_step(store, ckpt_prefix))
    if step is not None:
        resume_dir = workdir / f"resume-rank{rank()}"
        resume_from = retry(
            f"downloading checkpoint step {step}", lambda: checkpoints.download(store, ckpt_prefix, step, resume_dir)
        )
    emitter.state("TRAINING")
    if resume_from is not None:
        emitter.log(f"resumed from step {step} (checkpoint {ckpt_prefix}/step-{step})")
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    speed = float(result.metrics.get("train_samples_per_second", 0.0))
    runtime = float(result.metrics.get("train_runtime", 0.0))
    emitter.log(
        f"training done: {result.global_step} steps in {runtime:.2f}s ({speed:.1f} samples/s), "
        f"train loss {result.training_loss:.4f}"
    )
    if rank() != 0:
        return None

    emitter.state("EVALUATING")
    batch = args.per_device_eval_batch_size
    evaluation = evaluate(classification, model, tokenizer, eval_set, collator, labels, multi, batch)
    evaluation["metrics"]["train_loss"] = float(result.training_loss)
    evaluation["metrics"]["train_samples_per_second"] = speed
    evaluation["metrics"]["train_runtime_seconds"] = runtime
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
    meta = {
        "model_version": job["name"],
        "task": job["task"],
        "label_names": prepared.label_names,
        "multi_label": prepared.multi_label,
        "prompt_template": PROMPT_TEMPLATE,
        "max_length": max_length,
        "model_config": configs["model_config"],
        "tokenizer_config": configs["tokenizer_config"],
        "lineage": lineage,
    }
    (adapter_dir / "textft.json").write_text(json.dumps(meta, indent=1))
    # Over PEFT's own placeholder card: how to load this adapter without textft.
    card = modelcard.render(meta, job["dataset_version"], job.get("template", ""))
    (adapter_dir / "README.md").write_text(card)
    prefix = job["adapter_prefix"]

    def upload_adapter() -> None:
        # From scratch each time: a retried upload (or job) never leaves files of an earlier attempt.
        store.delete_prefix(prefix + "/")
        store.upload_dir(adapter_dir, prefix)

    retry("uploading the adapter", upload_adapter)
    retry("uploading metrics", lambda: store.put_json(job["metrics_object"], evaluation))
    return {"adapter_uri": prefix, "lineage": lineage, "evaluation": evaluation, "world_size": world_size()}


def evaluate_version(
    job: dict[str, Any],
    store: ObjectStore,
    settings: Settings,
    workdir: Path,
    dataset_version: str,
    rows_manifest_object: str,
    max_generations: int = 200,
) -> dict[str, Any]:
    """Evaluates the version's stored adapter on every usable row of another
    dataset version (EvaluateModelVersion), with the training job's metrics."""
    from peft import PeftModel

    classification = job["task"] == "TEXT_CLASSIFICATION"
    retry = StoreRetry(settings.store_retry_seconds, Emitter(enabled=False))
    adapter_dir = workdir / "adapter"
    if adapter_dir.exists():
        import shutil

        shutil.rmtree(adapter_dir)
    retry("downloading the adapter", lambda: store.download_dir(job["adapter_prefix"], adapter_dir))
    meta = json.loads((adapter_dir / "textft.json").read_text())
    labels, multi = list(meta.get("label_names") or []), bool(meta.get("multi_label"))
    model_kwargs = {k: v for k, v in meta["model_config"].items() if k != "pretrained_model_name_or_path"}
    base_name = meta["model_config"]["pretrained_model_name_or_path"]
    base_path = retry("reading the base model", lambda: basemodels.resolve(base_name, store, settings.base_model_cache))
    tokenizer, max_length = load_tokenizer({}, str(adapter_dir))
    max_length = min(max_length, int(meta.get("max_length", max_length)))
    prompt_template = meta.get("prompt_template", PROMPT_TEMPLATE)

    rows = retry("reading the dataset rows", lambda: read_rows(store, rows_manifest_object, settings))
    # A label the model was not trained on cannot be scored.
    usable_rows, skipped, first_skipped = data.usable_for_evaluation(rows, classification, labels)
    if not len(usable_rows):
        known = f" (the model knows labels {labels})" if classification else ""
        raise JobFailure(
            "EVALUATION_NO_USABLE_ROWS",
            f"{dataset_version} has no rows this model can be evaluated on{known}",
            field="dataset_version",
            rows=first_skipped,
        )
    usable = rows.select(usable_rows)
    model = load_base_model(classification, base_path, model_kwargs, tokenizer, labels, multi)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    collator = make_collator(classification, tokenizer, max_length, labels, multi)
    batch = int(job["configs"]["trainer_config"].get("per_device_eval_batch_size", 16))
    evaluation = evaluate(
        classification,
        model,
        tokenizer,
        usable,
        collator,
        labels,
        multi,
        batch,
        max_generations,
        prompt_template,
    )
    evaluation["dataset_version"] = dataset_version
    evaluation["skipped_row_count"] = skipped
    return evaluation


def _lifeline() -> None:
    """Exits when stdin reaches EOF: the launcher holds the pipe's other end, so
    a launcher that dies (even SIGKILLed) takes its jobs with it instead of
    leaving orphans that keep training and uploading beside a resumed run."""
    import threading

    fd = sys.stdin.fileno()

    def watch() -> None:
        # os.read on the raw descriptor: a daemon thread blocked inside
        # sys.stdin's buffered reader aborts the interpreter at exit.
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def parser() -> argparse.ArgumentParser:
    """The job's command line (what every launcher passes)."""
    parser = argparse.ArgumentParser(prog="textft-train-job", description="Run one textft training job.")
    parser.add_argument("--job", required=True, help="store key of the job.json to run")
    parser.add_argument("--workdir", required=True, help="scratch directory of this job")
    parser.add_argument(
        "--evaluate",
        metavar="DATASET_VERSION",
        help="instead of training, evaluate the version's adapter on this dataset version",
    )
    parser.add_argument(
        "--rows-manifest", metavar="KEY", help="with --evaluate: store key of that dataset version's rows manifest"
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (the local launcher keeps it open for the job's lifetime)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging("train-job", settings.log_level, settings.log_format, settings.secrets())
    if args.exit_on_stdin_eof:
        _lifeline()
    emitter = Emitter(enabled=rank() == 0)
    workdir = Path(args.workdir)  # shared by the ranks of one node: only rank 0 writes outside out/
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # relative paths a library might write land in the job's directory
    try:
        retry = StoreRetry(settings.store_retry_seconds, emitter if not args.evaluate else Emitter(enabled=False))
        store = retry("connecting to the store", lambda: open_store(settings.store))
        job = retry("reading the job", lambda: store.get_json(args.job))
        if args.evaluate:
            evaluation = evaluate_version(job, store, settings, workdir, args.evaluate, args.rows_manifest)
            emitter.emit("evaluation", **evaluation)
            return 0
        result = run_job(job, store, settings, workdir, emitter)
        if result is not None:
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
