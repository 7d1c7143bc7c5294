"""The training job: one process per model version.

Self-contained on purpose: a typed spec in (textft.internal.v1.TrainingJobSpec,
read from the store key it is given; credentials from the environment), typed
events out (JobEvent lines on stdout, events.py), so any launcher (a local
child process today, a cluster later) runs the same job. It reads the rows
through the dataset version's rows manifest, trains LoRA with transformers'
Trainer and PEFT, evaluates, and writes the adapter (exactly as
`save_pretrained` writes it, plus textft.json, an AdapterManifest) and
metrics.json back. Exit code 0 means READY; a failure is reported as an event
before exiting 3.

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
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format

from textft.errors import FailedPrecondition, InvalidArgument, Unavailable
from textft.internal.v1 import job_pb2
from textft.v1 import common_pb2, trainer_pb2

from ..common import basemodels
from ..common import rows as stored_rows
from ..common.config import Settings
from ..common.logs import setup_logging
from ..common.store import ObjectStore, open_store
from ..modeling import data
from ..modeling.collate import PROMPT_TEMPLATE, make_collator
from ..modeling.data import JobFailure
from ..modeling.loading import (
    adapter_manifest_dict,
    load_base_model,
    load_tokenizer,
    read_adapter_manifest,
    struct_dict,
    write_adapter_manifest,
)
from ..modeling.metrics import evaluate
from . import checkpoints, configs, modelcard
from .events import Emitter

MV = trainer_pb2.ModelVersion

EXIT_FAILED = 3
EXIT_ORPHANED = 4  # the launcher went away (its lifeline pipe closed)
STORE_UNAVAILABLE = "MODEL_TRAINING_STORE_UNAVAILABLE"
log = logging.getLogger("textft.worker")
T = TypeVar("T")


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

        def _progress(self, state: Any) -> common_pb2.Progress:
            elapsed = time.monotonic() - self.start
            step, total = state.global_step, max(state.max_steps, 1)
            done = step - self.start_step
            progress = common_pb2.Progress(
                step=step, total_steps=total, epoch=float(state.epoch or 0.0), percent_completed=100.0 * step / total
            )
            if done > 0:
                progress.time_remaining.FromMilliseconds(int(elapsed / done * (total - step) * 1000))
            return progress

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if control.should_log:  # on_log reports this step, with its loss: no step twice
                return
            now = time.monotonic()
            if now - self.last_emit >= 1.0:
                self.last_emit = now
                emitter.emit(job_pb2.JobEvent(progress=job_pb2.JobProgress(progress=self._progress(state))))

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
            progress = job_pb2.JobProgress(
                progress=self._progress(state),
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0)),
                samples_per_second=samples / elapsed if elapsed > 0 else 0.0,
            )
            emitter.emit(job_pb2.JobEvent(progress=progress))

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


def build_training_args(trainer_kwargs: dict[str, Any], out_dir: Path, world_size: int = 1) -> Any:
    """TrainingArguments as the job uses them: the job's directory, no tqdm,
    our collators see the stored columns (they tokenise), gloo for DDP on CPU."""
    import torch
    from transformers import TrainingArguments

    kwargs = dict(trainer_kwargs)
    if world_size > 1 and not torch.cuda.is_available():
        kwargs.setdefault("ddp_backend", "gloo")
    return TrainingArguments(output_dir=str(out_dir), disable_tqdm=True, remove_unused_columns=False, **kwargs)


def spec_configs(spec: job_pb2.TrainingJobSpec) -> dict[str, dict[str, Any]]:
    """The spec's four configs as typed dicts (Struct numbers are floats until validated)."""
    sections = ("model_config", "peft_config", "tokenizer_config", "trainer_config")
    return configs.validate({section: struct_dict(getattr(spec, section)) for section in sections})


def run_job(
    spec: job_pb2.TrainingJobSpec, store: ObjectStore, settings: Settings, workdir: Path, emitter: Emitter
) -> job_pb2.JobResult | None:
    """Trains, evaluates and uploads; returns the result on rank 0, None on other ranks."""
    import peft
    import torch
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model

    resolved = spec_configs(spec)
    model_kwargs = dict(resolved["model_config"])
    tokenizer_kwargs = dict(resolved["tokenizer_config"])
    peft_kwargs = {k: v for k, v in resolved["peft_config"].items() if k != "peft_type"}
    trainer_kwargs = dict(resolved["trainer_config"])
    classification = spec.task == common_pb2.TASK_TEXT_CLASSIFICATION
    ckpt_prefix = checkpoints.checkpoints_prefix(spec.output_prefix)
    retry = StoreRetry(settings.store_retry_seconds, emitter)

    emitter.state(MV.STATE_PREPARING_DATA)
    base_name = model_kwargs.pop("pretrained_model_name_or_path")
    base_path = retry("reading the base model", lambda: basemodels.resolve(base_name, store, settings.base_model_cache))
    tok_name = tokenizer_kwargs.pop("pretrained_model_name_or_path", base_name)
    tok_path = retry(
        "reading the tokenizer",
        lambda: basemodels.resolve(
            tok_name, store, settings.base_model_cache, "tokenizer_config.pretrained_model_name_or_path"
        ),
    )
    tokenizer, max_length = load_tokenizer(tokenizer_kwargs, tok_path)

    rows = retry("reading the dataset rows", lambda: read_rows(store, spec.rows_manifest_object, settings))
    prepared = data.prepare(
        rows,
        classification,
        list(spec.label_names),
        lambda text: len(tokenizer(PROMPT_TEMPLATE.format(text=text))["input_ids"]),
        max_length,
        spec.dataset_row_count,
        spec.dataset_invalid_row_count,
        [{"row": i.row, "code": i.code, "message": i.message} for i in spec.dataset_issues],
        spec.invalid_data_tolerance_percent,
        int(trainer_kwargs.get("seed", 42)),
    )
    emitter.log(
        f"{len(prepared.train)} train rows, {len(prepared.eval)} eval rows ({prepared.split_source}), {prepared.skipped} invalid rows skipped"
    )
    summary = job_pb2.DataSummary(
        train_rows=len(prepared.train), eval_rows=len(prepared.eval), skipped_rows=prepared.skipped
    )
    emitter.emit(job_pb2.JobEvent(data=summary))

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
    if settings.rank == 0 and out_dir.exists():  # checkpoints of an earlier attempt: the store's are the truth
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
    args = build_training_args(trainer_kwargs, out_dir, settings.world_size)
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
        resume_dir = workdir / f"resume-rank{settings.rank}"
        resume_from = retry(
            f"downloading checkpoint step {step}", lambda: checkpoints.download(store, ckpt_prefix, step, resume_dir)
        )
    emitter.state(MV.STATE_TRAINING)
    if resume_from is not None:
        emitter.log(f"resumed from step {step} (checkpoint {ckpt_prefix}/step-{step})")
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    speed = float(result.metrics.get("train_samples_per_second", 0.0))
    runtime = float(result.metrics.get("train_runtime", 0.0))
    emitter.log(
        f"training done: {result.global_step} steps in {runtime:.2f}s ({speed:.1f} samples/s), "
        f"train loss {result.training_loss:.4f}"
    )
    if settings.rank != 0:
        return None

    emitter.state(MV.STATE_EVALUATING)
    batch = args.per_device_eval_batch_size
    evaluation = evaluate(classification, model, tokenizer, eval_set, collator, labels, multi, batch)
    evaluation["metrics"]["train_loss"] = float(result.training_loss)
    evaluation["metrics"]["train_samples_per_second"] = speed
    evaluation["metrics"]["train_runtime_seconds"] = runtime
    emitter.emit(job_pb2.JobEvent(evaluation=to_evaluation(evaluation)))

    emitter.state(MV.STATE_UPLOADING)
    adapter_dir = workdir / "adapter"
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    lineage = trainer_pb2.Lineage(
        base_model=base_name,
        base_model_revision=basemodels.revision_of(model.get_base_model().config, base_name),
        library_versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    )
    manifest = job_pb2.AdapterManifest(
        model_version=spec.model_version,
        task=common_pb2.Task.Name(spec.task).removeprefix("TASK_"),
        label_names=prepared.label_names,
        multi_label=prepared.multi_label,
        prompt_template=PROMPT_TEMPLATE,
        max_length=max_length,
        model_config=spec.model_config,
        tokenizer_config=spec.tokenizer_config,
        lineage=lineage,
    )
    write_adapter_manifest(adapter_dir, manifest)
    # Over PEFT's own placeholder card: how to load this adapter without textft.
    card = modelcard.render(adapter_manifest_dict(manifest), spec.dataset_version, spec.template)
    (adapter_dir / "README.md").write_text(card)
    prefix = f"{spec.output_prefix}/adapter"

    def upload_adapter() -> None:
        # From scratch each time: a retried upload (or job) never leaves files of an earlier attempt.
        store.delete_prefix(prefix + "/")
        store.upload_dir(adapter_dir, prefix)

    retry("uploading the adapter", upload_adapter)
    retry("uploading metrics", lambda: store.put_json(f"{spec.output_prefix}/metrics.json", evaluation))
    return job_pb2.JobResult(adapter_uri=prefix, lineage=lineage, world_size=settings.world_size)


def to_evaluation(evaluation: dict[str, Any]) -> trainer_pb2.Evaluation:
    return json_format.ParseDict(evaluation, trainer_pb2.Evaluation(), ignore_unknown_fields=True)


def evaluate_version(
    spec: job_pb2.TrainingJobSpec,
    store: ObjectStore,
    settings: Settings,
    workdir: Path,
    emitter: Emitter,
    max_generations: int = 200,
) -> trainer_pb2.Evaluation:
    """Evaluates the version's stored adapter on every usable row of another
    dataset version (EvaluateModelVersion), with the training job's metrics."""
    from peft import PeftModel

    classification = spec.task == common_pb2.TASK_TEXT_CLASSIFICATION
    retry = StoreRetry(settings.store_retry_seconds, Emitter(enabled=False))
    adapter_dir = workdir / "adapter"
    if adapter_dir.exists():
        import shutil

        shutil.rmtree(adapter_dir)
    retry("downloading the adapter", lambda: store.download_dir(f"{spec.output_prefix}/adapter", adapter_dir))
    meta = read_adapter_manifest(adapter_dir)
    labels, multi = list(meta.label_names), meta.multi_label
    model_config = configs.validate({"model_config": struct_dict(meta.model_config)})["model_config"]
    model_kwargs = {k: v for k, v in model_config.items() if k != "pretrained_model_name_or_path"}
    base_name = model_config["pretrained_model_name_or_path"]
    base_path = retry("reading the base model", lambda: basemodels.resolve(base_name, store, settings.base_model_cache))
    tokenizer, max_length = load_tokenizer({}, str(adapter_dir))
    max_length = min(max_length, meta.max_length or max_length)
    prompt_template = meta.prompt_template or PROMPT_TEMPLATE
    dataset_version = spec.evaluation.dataset_version
    manifest_key = spec.evaluation.rows_manifest_object
    rows = retry("reading the dataset rows", lambda: read_rows(store, manifest_key, settings))
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
    batch = int(spec_configs(spec)["trainer_config"].get("per_device_eval_batch_size", 16))
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
        _evaluation_progress(emitter),
    )
    evaluation["dataset_version"] = dataset_version
    evaluation["skipped_row_count"] = skipped
    return to_evaluation(evaluation)


def _evaluation_progress(emitter: Emitter, every: float = 1.0) -> Callable[[int, int], None]:
    """on_rows for an evaluation: a progress event at most every `every` seconds, and at the end."""
    started, last = time.monotonic(), 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every and done < total:
            return
        last = now
        progress = common_pb2.Progress(step=done, total_steps=total, percent_completed=100.0 * done / max(total, 1))
        if done:
            progress.time_remaining.FromMilliseconds(int((now - started) / done * (total - done) * 1000))
        emitter.emit(job_pb2.JobEvent(progress=job_pb2.JobProgress(progress=progress)))

    return report


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


def read_spec(store: ObjectStore, key: str) -> job_pb2.TrainingJobSpec:
    """The spec at key, for this store: a spec written for another store (the
    job's environment names a different one) is refused."""
    spec = json_format.ParseDict(store.get_json(key), job_pb2.TrainingJobSpec(), ignore_unknown_fields=True)
    if spec.store and spec.store != store.describe():
        raise JobFailure(
            "MODEL_TRAINING_STORE_MISMATCH",
            f"the job was written for the store {spec.store}, but its environment opens {store.describe()}; "
            "start it with the trainer service's store settings",
        )
    return spec


def parser() -> argparse.ArgumentParser:
    """The job's command line (what every launcher passes)."""
    parser = argparse.ArgumentParser(prog="textft-train-job", description="Run one textft training job.")
    parser.add_argument("--job", required=True, help="store key of the job's TrainingJobSpec (job.json)")
    parser.add_argument("--workdir", required=True, help="scratch directory of this job")
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
    emitter = Emitter(enabled=settings.rank == 0)
    workdir = Path(args.workdir)  # shared by the ranks of one node: only rank 0 writes outside out/
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # relative paths a library might write land in the job's directory
    try:
        retry = StoreRetry(settings.store_retry_seconds, emitter)
        store = retry("connecting to the store", lambda: open_store(settings.store))
        spec = retry("reading the job", lambda: read_spec(store, args.job))
        if spec.HasField("evaluation"):
            emitter.emit(job_pb2.JobEvent(evaluation=evaluate_version(spec, store, settings, workdir, emitter)))
            return 0
        result = run_job(spec, store, settings, workdir, emitter)
        if result is not None:
            emitter.emit(job_pb2.JobEvent(result=result))
        return 0
    except JobFailure as failure:
        emitter.failure(failure.reason, scrub(failure.message, settings), failure.field, failure.rows)
        return EXIT_FAILED
    except InvalidArgument as exc:  # a check at load time, e.g. a subfolder that leaves the base model
        field = exc.violations[0].field if exc.violations else ""
        emitter.failure("MODEL_TRAINING_INVALID_PARAMS", scrub(exc.message, settings)[:1000], field)
        return EXIT_FAILED
    except Exception as exc:
        # Through the logger, not traceback.print_exc(): its SecretFilter
        # scrubs API keys, store credentials and HF tokens from the traceback
        # before it reaches job.log.
        log.exception("the training job crashed")
        message = scrub(f"{type(exc).__name__}: {exc}", settings)
        reason = "MODEL_TRAINING_OUT_OF_MEMORY" if "out of memory" in message.lower() else "MODEL_TRAINING_CRASHED"
        emitter.failure(reason, message[:1000])
        return EXIT_FAILED


def scrub(message: str, settings: Settings) -> str:
    """message without the secrets of settings (what the log filter does for records)."""
    for secret in settings.secrets():
        message = message.replace(secret, "***")
    return message


if __name__ == "__main__":
    raise SystemExit(main())
