"""Inference domain: resolve a model version through TrainerService's RPC, load
its base model once (shared by all of its adapters) and its adapter from the
store, keep adapters in an LRU bounded by count and bytes (and base models by
count), and predict through the micro-batching lanes of batcher.py.

Adapters are read and checked (textft.json: task, labels, base model) before
any weights load, as LoRAX does. An adapter with requests in flight is pinned:
eviction or unload retires it from the cache at once and frees its weights
when its last request finishes.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import queue
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from textft import Client
from textft.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, Unavailable
from textft.v1 import common_pb2, inference_pb2, trainer_pb2

from ..common import basemodels, devices, names
from ..common.config import Settings
from ..common.store import ObjectStore
from ..modeling.loading import (
    fused_activations,
    load_base_model,
    load_tokenizer,
    read_adapter_manifest,
    struct_dict,
)
from .batcher import CLASSIFY, GENERATE, STREAM, Admission, Lane, Work
from .continuous import ContinuousBatcher, Row
from .metrics import InferenceMetrics
from .mixed import MixedLoRA

log = logging.getLogger("textft.inference")
MV = trainer_pb2.ModelVersion
Gen = inference_pb2.Generation
DEFAULT_MAX_NEW_TOKENS = 64
# READY versions are remembered this long, so a hot path costs no trainer RPC;
# a deleted version stops resolving at most this much later.
RESOLVE_TTL_S = 5.0
MAX_NEW_TOKENS = 2048
# Registers a callback run when the RPC ends (grpc.ServicerContext.add_callback).
OnRpcDone = Callable[[Callable[[], None]], bool]


@dataclass(eq=False)
class Base:
    """A base model shared by the adapters of one (base model, task, label count)."""

    key: tuple[str, str, int]
    model: Any = field(repr=False)  # a PeftModel once the first adapter is loaded
    tokenizer: Any = field(repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set[str] = field(default_factory=set)
    lane: Lane | None = None  # classification, and generation when batching is static
    gen: ContinuousBatcher | None = None  # generation when batching is continuous
    device: Any = None  # where inputs go (torch.device)
    mixed_ok: bool = True  # PEFT mixed-adapter batches work on this model
    mixer: MixedLoRA = field(default_factory=MixedLoRA, repr=False)  # mixed-adapter batches (mixed.py)

    @cached_property
    def keeps_logits(self) -> bool:
        """The causal LM's forward takes logits_to_keep (every recent transformers one does)."""
        forward = self.model.get_base_model().forward if hasattr(self.model, "get_base_model") else self.model.forward
        return "logits_to_keep" in inspect.signature(forward).parameters


@dataclass(eq=False)
class Adapter:
    version: str
    adapter_name: str
    base: Base = field(repr=False)
    task: str
    label_names: list[str]
    multi_label: bool
    prompt_template: str
    max_length: int
    nbytes: int
    load_seconds: float
    base_model: str
    last_used: float = field(default_factory=time.time)
    pins: int = 0  # requests in flight
    retired: bool = False  # out of the cache; weights freed when pins reach 0


_serial = itertools.count(1)


def _adapter_name(version: str) -> str:
    """PEFT adapter names become module keys: no dots or slashes. A serial keeps
    a reloaded version apart from a retired copy still finishing requests."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", version) + f"-{next(_serial)}"


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        trainer: Client | None = None,
        metrics: InferenceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.trainer = trainer or Client(trainer_target=settings.trainer_addr, api_key=settings.service_key)
        self.metrics = metrics or InferenceMetrics()
        self.cache_dir = settings.home / "inference" / "adapters"
        self.bases: dict[tuple[str, str, int], Base] = {}
        self.adapters: OrderedDict[str, Adapter] = OrderedDict()  # LRU: least recently used first
        self.lock = threading.RLock()  # the maps above
        self.load_lock = threading.RLock()  # cold loads and drops, one at a time
        self.admission = Admission(settings.inference_queue_size, self.metrics)
        self.resolved: dict[str, tuple[float, trainer_pb2.ModelVersion]] = {}
        self.continuous = settings.inference_generation_batching == "continuous"
        self._placement: devices.Placement | None = None

    @property
    def placement(self) -> devices.Placement:
        """Device and dtype of every base model (chosen once, on the first load)."""
        if self._placement is None:
            self._placement = devices.place(self.settings.inference_device, self.settings.inference_dtype)
            log.info("inference models run on %s", self._placement.describe())
        return self._placement

    # ---- resolution ----
    def resolve(self, name: str, field_name: str = "model_version") -> trainer_pb2.ModelVersion:
        """The READY version `name` means (a version, or a model's latest READY one)."""
        now = time.monotonic()
        hit = self.resolved.get(name)
        if hit is not None and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
        version = self._resolve(name, field_name)
        if len(self.resolved) > 10_000:
            self.resolved.clear()
        self.resolved[name] = (now, version)
        return version

    def _resolve(self, name: str, field_name: str) -> trainer_pb2.ModelVersion:
        try:
            if names.is_model_name(name):
                model = self.trainer.get_model(name)
                if not model.latest_ready_version:
                    raise FailedPrecondition(f"model {name} has no READY version yet", reason="MODEL_NOT_READY")
                name = model.latest_ready_version
            names.parse_model_version(name, field_name)
            version = self.trainer.get_model_version(name)
        except Unauthenticated:
            raise Unavailable(
                "the inference service could not authenticate to the trainer (check TEXTFT_SERVICE_KEY, or TEXTFT_API_KEYS: the first key must be the same on every service)"
            ) from None
        if version.state != MV.STATE_READY:
            raise FailedPrecondition(
                f"model version {version.name} is {MV.State.Name(version.state)}, not READY",
                reason="MODEL_VERSION_NOT_READY",
            )
        return version

    # ---- loading and the LRU ----
    def load(self, name: str, pin: bool = False) -> Adapter:
        """The version's adapter, loaded if need be; `pin` holds it in memory
        until release() (one per request in flight)."""
        version = self.resolve(name)
        with self.lock:
            adapter = self._hit(version.name, pin)
        if adapter is not None:
            return adapter
        with self.load_lock:  # one cold load at a time, however many requests wait for it
            with self.lock:
                adapter = self._hit(version.name, pin)
            if adapter is not None:
                return adapter
            self.metrics.cache_misses.inc()
            adapter = self._cold_load(version)
            with self.lock:
                self.adapters[version.name] = adapter
                adapter.pins += int(pin)
            self._evict()
            self._export_cache()
            return adapter

    def _hit(self, version: str, pin: bool) -> Adapter | None:
        adapter = self.adapters.get(version)
        if adapter is None:
            return None
        self.metrics.cache_hits.inc()
        self.adapters.move_to_end(version)
        adapter.last_used = time.time()
        adapter.pins += int(pin)
        return adapter

    def release(self, adapter: Adapter) -> None:
        with self.lock:
            adapter.pins -= 1
            drop = adapter.retired and adapter.pins == 0
        if drop:
            self._drop(adapter)

    def _base_for(self, key: tuple[str, str, int], local: Any, model_config: dict[str, Any]) -> Base:
        with self.lock:
            base = self.bases.get(key)
        if base is not None:
            return base
        started = time.monotonic()
        base_name, task, num_labels = key
        path = basemodels.resolve(base_name, self.store, self.settings.base_model_cache)
        # The device and dtype are this server's choice (TEXTFT_INFERENCE_DEVICE/DTYPE), not the training run's.
        skip = {"pretrained_model_name_or_path", "dtype", "torch_dtype", "device_map"}
        kwargs = {k: v for k, v in model_config.items() if k not in skip}
        placement = self.placement
        kwargs.update(placement.load_kwargs())
        tokenizer, _ = load_tokenizer({}, str(local))  # saved with the adapter
        # The trainer's loader: the base is shared by every adapter of its shape,
        # so its labels are positions (each adapter maps them to its own names).
        labels = [f"LABEL_{i}" for i in range(num_labels)]
        model = load_base_model(task == "TEXT_CLASSIFICATION", path, kwargs, tokenizer, labels, multi=False)
        fused_activations(model)
        if not placement.sharded:
            model.to(placement.device)
        model.eval()
        base = Base(key, model, tokenizer, device=devices.input_device(model))
        if task == "TEXT_GENERATION" and self.continuous:
            base.gen = ContinuousBatcher(
                f"{base_name}:{task}",
                lambda *args: self._step(base, *args),
                base.device,
                tokenizer.pad_token_id,
                getattr(model.config, "max_position_embeddings", None),
                self.admission,
                self.metrics,
                self.settings.inference_max_batch_size,
                self.settings.inference_max_batch_tokens,
                lambda: not base.mixed_ok,
                self.settings.inference_max_waiting_steps,
            )
        base.lane = Lane(
            f"{base_name}:{task}:{num_labels}",
            lambda works: self._run(base, works),
            self.admission,
            self.metrics,
            self.settings.inference_batch_wait_ms,
            self.settings.inference_max_batch_size,
        )
        seconds = time.monotonic() - started
        self.metrics.base_load_seconds.observe(seconds)
        log.info("loaded base model %s (%s) in %.2fs", base_name, task, seconds)
        with self.lock:
            self.bases[key] = base
        return base

    def _cold_load(self, version: trainer_pb2.ModelVersion) -> Adapter:
        import torch
        from peft import PeftModel

        started = time.monotonic()
        adapter_name = _adapter_name(version.name)
        local = self.cache_dir / adapter_name
        if local.exists():
            shutil.rmtree(local)
        try:
            self.store.download_dir(version.adapter_uri, local)
        except NotFound:
            raise FailedPrecondition(
                f"the adapter of {version.name} is missing from the store ({version.adapter_uri})"
            ) from None
        manifest = read_adapter_manifest(local)  # textft.json, as the trainer wrote it
        model_config = struct_dict(manifest.model_config)
        task, labels = manifest.task, list(manifest.label_names)
        base_name = model_config["pretrained_model_name_or_path"]
        base = self._base_for((base_name, task, len(labels)), local, model_config)
        with base.lock, torch.no_grad():
            if isinstance(base.model, PeftModel):
                base.model.load_adapter(str(local), adapter_name=adapter_name)
            else:
                base.model = PeftModel.from_pretrained(base.model, str(local), adapter_name=adapter_name)
            base.model.eval()
            base.mixer.install(base.model)  # the adapter may have added layers
            base.adapters.add(adapter_name)
        nbytes = sum(p.stat().st_size for p in local.glob("adapter_model.*"))
        seconds = time.monotonic() - started
        self.metrics.load_seconds.observe(seconds)
        log.info("loaded %s on %s in %.2fs (%d adapter bytes)", version.name, base_name, seconds, nbytes)
        return Adapter(
            version=version.name,
            adapter_name=adapter_name,
            base=base,
            task=task,
            label_names=labels,
            multi_label=manifest.multi_label,
            prompt_template=manifest.prompt_template or "{text}\n",
            max_length=manifest.max_length or 512,
            nbytes=nbytes,
            load_seconds=seconds,
            base_model=base_name,
        )

    def _evict(self) -> None:
        """Least recently used adapters leave the cache past the count or byte
        bound, and every adapter of base models past the base-model bound."""
        victims: list[Adapter] = []
        with self.lock:
            keep_bases: list[Base] = []
            for adapter in reversed(self.adapters.values()):  # most recent first
                if adapter.base not in keep_bases:
                    keep_bases.append(adapter.base)
            keep_bases = keep_bases[: max(1, self.settings.inference_max_base_models)]
            for version, adapter in list(self.adapters.items()):
                if adapter.base not in keep_bases:
                    victims.append(self.adapters.pop(version))
            while len(self.adapters) > 1 and (
                len(self.adapters) > self.settings.inference_max_adapters
                or sum(a.nbytes for a in self.adapters.values()) > self.settings.inference_max_adapter_bytes
            ):
                victims.append(self.adapters.popitem(last=False)[1])
        for victim in victims:
            self.metrics.evictions.inc(reason="lru")
            self._retire(victim)

    def _retire(self, adapter: Adapter) -> None:
        with self.lock:
            adapter.retired = True
            busy = adapter.pins > 0
        if busy:
            log.info("retired %s; its weights go when its %d request(s) finish", adapter.version, adapter.pins)
        else:
            self._drop(adapter)

    def _drop(self, adapter: Adapter) -> None:
        base = adapter.base
        with self.load_lock:
            with base.lock:
                base.adapters.discard(adapter.adapter_name)
                if base.adapters:
                    base.model.delete_adapter(adapter.adapter_name)
                    base.mixer.forget()
            if not base.adapters:  # last adapter of this base: free the base too
                with self.lock:
                    self.bases.pop(base.key, None)
                if base.lane is not None:
                    base.lane.close()
                if base.gen is not None:
                    base.gen.close()
                log.info("unloaded base model %s (%s)", base.key[0], base.key[1])
        shutil.rmtree(self.cache_dir / adapter.adapter_name, ignore_errors=True)
        log.info("unloaded %s", adapter.version)
        self._export_cache()

    def unload(self, name: str) -> None:
        names.parse_model_version(name, "model_version")
        with self.lock:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise NotFound(f"model version {name} is not loaded", reason="NOT_LOADED")
        self.metrics.evictions.inc(reason="unload")
        self._retire(adapter)

    def _export_cache(self) -> None:
        with self.lock:
            self.metrics.loaded_adapters.set(len(self.adapters))
            self.metrics.loaded_bases.set(len(self.bases))
            self.metrics.adapter_bytes.set(sum(a.nbytes for a in self.adapters.values()))

    def loaded(self) -> list[inference_pb2.LoadedModelVersion]:
        with self.lock:
            adapters = list(self.adapters.values())
        out = []
        for a in adapters:
            item = inference_pb2.LoadedModelVersion(
                model_version=a.version,
                task=common_pb2.Task.Value("TASK_" + a.task),
                base_model=a.base_model,
                adapter_bytes=a.nbytes,
                load_seconds=a.load_seconds,
            )
            item.last_used_time.FromSeconds(int(a.last_used))
            out.append(item)
        return out

    def close(self) -> None:
        with self.lock:
            bases = list(self.bases.values())
        for base in bases:
            if base.lane is not None:
                base.lane.close()
            if base.gen is not None:
                base.gen.close()

    # ---- requests ----
    def check_inputs(
        self, texts: list[str], params: inference_pb2.GenerationParameters, field_name: str = "texts"
    ) -> None:
        if not texts:
            raise InvalidArgument.for_field(field_name, "at least one text is required")
        if len(texts) > self.settings.inference_max_batch_texts:
            raise InvalidArgument.for_field(
                field_name, f"at most {self.settings.inference_max_batch_texts} texts per request, got {len(texts)}"
            )
        for i, text in enumerate(texts):
            if len(text) > self.settings.inference_max_input_chars:
                where = f"{field_name}[{i}]" if field_name == "texts" else field_name
                raise InvalidArgument.for_field(
                    where, f"{len(text)} characters, the limit is {self.settings.inference_max_input_chars}"
                )
        if not 0 <= params.max_new_tokens <= MAX_NEW_TOKENS:
            raise InvalidArgument.for_field(
                "generation.max_new_tokens",
                f"must be between 0 (default {DEFAULT_MAX_NEW_TOKENS}) and {MAX_NEW_TOKENS}",
            )
        if params.temperature < 0:
            raise InvalidArgument.for_field("generation.temperature", "must be 0 (greedy) or positive")
        if not 0 <= params.top_p <= 1:
            raise InvalidArgument.for_field("generation.top_p", "must be in [0, 1]")
        if params.top_k < 0:
            raise InvalidArgument.for_field("generation.top_k", "must be 0 (off) or positive")
        most, longest = self.settings.inference_max_stop_sequences, self.settings.inference_max_stop_chars
        if len(params.stop) > most:
            raise InvalidArgument.for_field("generation.stop", f"at most {most} stop sequences, got {len(params.stop)}")
        for i, stop in enumerate(params.stop):
            if len(stop) > longest:
                raise InvalidArgument.for_field(
                    f"generation.stop[{i}]", f"{len(stop)} characters, the limit is {longest}"
                )

    def _work(self, adapter: Adapter, kind: str, texts: list[str], params: Any, deadline: float | None) -> Work:
        if kind == CLASSIFY:
            key: Any = (CLASSIFY, adapter.max_length)
        elif kind == GENERATE and not params.HasField("seed"):  # a seeded request samples alone
            key = (
                GENERATE,
                adapter.max_length,
                params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                round(params.temperature, 6),
                round(params.top_p, 6) if params.temperature > 0 else 0,
                params.top_k if params.temperature > 0 else 0,
                params.ignore_eos,
            )
        else:
            key = object()
        work = Work(adapter=adapter, kind=kind, texts=texts, params=params, key=key, deadline=deadline)
        if kind == STREAM:
            work.events = queue.Queue()
        return work

    def _submit(self, work: Work, on_done: OnRpcDone | None) -> None:
        lane = work.adapter.base.lane
        assert lane is not None
        lane.submit(work)
        if on_done is not None and not on_done(lambda: lane.abandon(work)):
            lane.abandon(work)  # the RPC had already ended

    def predict(
        self,
        name: str,
        texts: list[str],
        params: inference_pb2.GenerationParameters,
        deadline: float | None = None,
        on_done: OnRpcDone | None = None,
    ) -> inference_pb2.PredictResponse:
        self.check_inputs(texts, params)
        adapter = self.load(name, pin=True)
        try:
            kind = CLASSIFY if adapter.task == "TEXT_CLASSIFICATION" else GENERATE
            work = self._work(adapter, kind, texts, params, deadline)
            if kind == GENERATE and adapter.base.gen is not None:
                self._join(work, on_done)
            else:
                self._submit(work, on_done)
            predictions = work.future.result()
        finally:
            self.release(adapter)
        return inference_pb2.PredictResponse(
            model_version=adapter.version, task=common_pb2.Task.Value("TASK_" + adapter.task), predictions=predictions
        )

    def predict_stream(
        self,
        name: str,
        text: str,
        params: inference_pb2.GenerationParameters,
        deadline: float | None = None,
        on_done: OnRpcDone | None = None,
    ) -> Iterator[inference_pb2.PredictStreamResponse]:
        """Yields text deltas as tokens are produced; the last message carries
        the finish reason. Stop sequences end generation early."""
        self.check_inputs([text], params, field_name="text")
        adapter = self.load(name, pin=True)
        try:
            if adapter.task != "TEXT_GENERATION":
                raise InvalidArgument.for_field(
                    "model_version", f"{adapter.version} is a {adapter.task} model; PredictStream is for generation"
                )
            work = self._work(adapter, STREAM, [text], params, deadline)
            if adapter.base.gen is not None:
                self._join(work, on_done)
                yield from self._relay_rows(work)
            else:
                self._submit(work, on_done)
                yield from self._relay(work)
        finally:
            self.release(adapter)

    # ---- continuous batching (continuous.py runs the loop; these are the RPC side and the forward) ----
    def _rows(self, work: Work) -> list[Row]:
        """The request's texts as rows: prompts tokenized here, on the RPC's thread, not the loop's."""
        import torch

        adapter, params = work.adapter, work.params
        tokenizer = adapter.base.tokenizer
        prompts = [adapter.prompt_template.format(text=t) for t in work.texts]
        encoded = tokenizer(prompts, truncation=True, max_length=adapter.max_length)["input_ids"]
        fallback = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        stops = tuple(s for s in params.stop if s)
        rows = []
        for i, ids in enumerate(encoded):
            generator = None
            if params.temperature > 0 and params.HasField("seed"):
                # Each row its own stream of random numbers: the same seed gives the same text whatever shares the batch.
                generator = torch.Generator(device=adapter.base.device).manual_seed(params.seed + i)
            rows.append(
                Row(
                    work=work,
                    index=i,
                    prompt=list(ids) or fallback,
                    adapter_name=adapter.adapter_name,
                    max_new=params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                    tokenizer=tokenizer,
                    eos=None if params.ignore_eos else tokenizer.eos_token_id,
                    stops=stops,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    generator=generator,
                    incremental=work.kind == STREAM or bool(stops),
                )
            )
        return rows

    def _join(self, work: Work, on_done: OnRpcDone | None) -> None:
        gen = work.adapter.base.gen
        assert gen is not None
        gen.submit(work, self._rows(work))
        if on_done is not None and not on_done(lambda: gen.abandon(work)):
            gen.abandon(work)  # the RPC had already ended

    def _relay_rows(self, work: Work) -> Iterator[inference_pb2.PredictStreamResponse]:
        """The stream's text deltas as the loop produces them, then the finish."""
        assert work.events is not None
        while True:
            kind, value = work.events.get()
            if kind == "error":
                raise value
            if kind == "end":
                finish, tokens = value
                yield inference_pb2.PredictStreamResponse(finish_reason=finish, generated_tokens=tokens)
                return
            yield inference_pb2.PredictStreamResponse(text=value)

    def _step(self, base: Base, names: list[str], ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """One forward of a running batch (prefill or decode), each row with its
        adapter; the last position's logits. Called by the loop thread, which is
        already in inference mode."""
        model = base.model
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "cache": cache,
            "use_cache": True,
        }
        if base.keeps_logits:
            inputs["logits_to_keep"] = 1  # the last position's logits only: a prefill needs no more
        unique = list(dict.fromkeys(names))
        with base.lock:  # classification lanes and adapter loads share the model
            if len(unique) == 1 and (model.active_adapter == unique[0] or not base.mixer.supported):
                self._activate(base, unique[0])
                out = model(**inputs)
            elif base.mixer.supported:
                # Rows change between steps: gathered per row, no joining per step. The active adapter
                # plays no part here, so none is set: set_adapter walks every module (measured: 44% of a
                # one-row prefill's time with 64 adapters loaded, when each arrival switched it).
                with base.mixer.rows(names, gather=True):
                    out = model(**inputs)
            else:
                if model.active_adapter not in unique:
                    self._activate(base, unique[0])
                try:
                    out = model(**inputs, adapter_names=names)  # PEFT's own mixed-adapter path
                except (TypeError, ValueError) as exc:
                    # Rows of one adapter per step from now on (the batcher asks mixed_ok).
                    log.warning("mixed-adapter batches unsupported on %s (%s)", base.key[0], exc)
                    base.mixed_ok = False
                    raise
        return out.logits[:, -1]

    def _relay(self, work: Work) -> Iterator[inference_pb2.PredictStreamResponse]:
        tokenizer = work.adapter.base.tokenizer
        stops = [s for s in work.params.stop if s]
        ids: list[int] = []
        sent = ""
        finish = Gen.FINISH_REASON_LENGTH
        assert work.events is not None
        while True:
            kind, value = work.events.get()
            if kind == "error":
                raise value
            if kind == "end":
                break
            for token in value:
                if token == tokenizer.eos_token_id and not work.params.ignore_eos:
                    finish = Gen.FINISH_REASON_EOS
                    work.outcome = "eos"  # before the RPC ends and its callback marks the work cancelled
                    break
                ids.append(token)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:  # a stop sequence: send what precedes it and stop generating
                work.outcome = "stopped"
                work.cancelled.set()
                if text[:cut] != sent:
                    yield inference_pb2.PredictStreamResponse(text=text[len(sent) : cut])
                finish = Gen.FINISH_REASON_STOP
                break
            # Hold back an incomplete character and a tail that may begin a stop sequence.
            ready = len(text.rstrip("\ufffd"))
            for s in stops:
                for n in range(min(len(s) - 1, ready), 0, -1):
                    if text[:ready].endswith(s[:n]):
                        ready = min(ready, len(text[:ready]) - n)
                        break
            if ready > len(sent):
                yield inference_pb2.PredictStreamResponse(text=text[len(sent) : ready])
                sent = text[:ready]
            if finish == Gen.FINISH_REASON_EOS:
                break
        if finish != Gen.FINISH_REASON_STOP:
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > len(sent):
                yield inference_pb2.PredictStreamResponse(text=text[len(sent) :])
        yield inference_pb2.PredictStreamResponse(finish_reason=finish, generated_tokens=len(ids))

    # ---- forward passes (lane worker threads) ----
    def _run(self, base: Base, works: list[Work]) -> None:
        rows = sum(w.rows for w in works)
        adapters = {w.adapter.adapter_name for w in works}
        self.metrics.batch_rows.observe(rows)
        self.metrics.batch_requests.observe(len(works))
        self.metrics.batch_adapters.observe(len(adapters))
        if len(adapters) > 1:
            self.metrics.mixed_batches.inc()
        kind = works[0].kind
        if kind == STREAM:
            self._stream(base, works[0])
            return
        texts = [t for w in works for t in w.texts]
        if kind == GENERATE:
            texts = [w.adapter.prompt_template.format(text=t) for w in works for t in w.texts]
        names_per_row = [w.adapter.adapter_name for w in works for _ in w.texts]
        fn = self._classify if kind == CLASSIFY else self._generate
        if kind == CLASSIFY and len(texts) > self.settings.inference_max_batch_size:
            # A request of many texts: forwards of at most max_batch_size rows, texts of similar
            # length together (by characters: no tokenizing twice), so few pad tokens are computed
            # and other requests' batches get the model between them.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            size = self.settings.inference_max_batch_size
            outputs: list[Any] = [None] * len(texts)
            for start in range(0, len(order), size):
                chunk = order[start : start + size]

                def forward_chunk(names: list[str] | None, rows: list[int] | None = None, c: list[int] = chunk) -> Any:
                    return fn(base, works, texts, names, c if rows is None else [c[r] for r in rows])

                names = [names_per_row[i] for i in chunk]
                for i, value in zip(chunk, self._forward_rows(base, names, forward_chunk), strict=True):
                    outputs[i] = value
        else:

            def forward(names: list[str] | None, rows: list[int] | None = None) -> list[Any]:
                return fn(base, works, texts, names, rows)

            outputs = self._forward_rows(base, names_per_row, forward)
        i = 0
        for work in works:
            work.succeed(outputs[i : i + work.rows])
            i += work.rows

    def _forward_rows(self, base: Base, names: list[str], forward: Callable[..., list[Any]]) -> list[Any]:
        """`forward` over rows with these adapters, mixed in one pass where the model allows it."""
        try:
            return self._mixed(base, names, forward)
        except (TypeError, ValueError) as exc:
            if len(set(names)) == 1 or not base.mixed_ok:
                raise
            # Not every module type supports PEFT mixed batches: one pass per adapter instead.
            log.warning("mixed-adapter batches unsupported on %s (%s); grouping by adapter", base.key[0], exc)
            base.mixed_ok = False
            return self._mixed(base, names, forward)

    def _mixed(self, base: Base, names: list[str], forward: Callable[..., list[Any]]) -> list[Any]:
        """Runs `forward` once with per-row adapter names, or, where a batch
        holds one adapter or mixed batches are off, once per adapter."""
        import torch

        unique = list(dict.fromkeys(names))
        with base.lock, torch.inference_mode():
            if len(unique) == 1 or base.mixed_ok:
                if len(unique) == 1:
                    self._activate(base, unique[0])
                    return forward(None)
                if base.model.active_adapter not in unique:  # it must exist for modules_to_save heads
                    self._activate(base, unique[0])
                if base.mixer.supported:  # every adapter layer takes its rows' adapters from the mixer
                    with base.mixer.rows(names):
                        return forward(None)
                return forward(names)  # PEFT's own mixed-adapter path
            out: list[Any] = [None] * len(names)
            for name in unique:
                rows = [i for i, n in enumerate(names) if n == name]
                self._activate(base, name)
                for i, value in zip(rows, forward(None, rows), strict=True):
                    out[i] = value
            return out

    @staticmethod
    def _activate(base: Base, name: str) -> None:
        """set_adapter, skipped when `name` is already active (it walks every module)."""
        if base.model.active_adapter != name:
            base.model.set_adapter(name)

    def _classify(
        self, base: Base, works: list[Work], texts: list[str], names: list[str] | None, rows: list[int] | None = None
    ) -> list[inference_pb2.Prediction]:
        import torch

        row_works = [w for w in works for _ in w.texts]
        if rows is not None:
            texts, row_works = [texts[i] for i in rows], [row_works[i] for i in rows]
        tokenizer = base.tokenizer
        tokenizer.padding_side = "right"
        batch = tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=works[0].adapter.max_length
        )
        extra = {"adapter_names": names} if names is not None else {}
        logits = base.model(**batch.to(base.device), **extra, use_cache=False).logits.float()
        # Scores and their order for the whole batch at once, one tolist() each.
        multi = [w.adapter.multi_label for w in row_works]
        if all(multi):
            scores = torch.sigmoid(logits)
        elif not any(multi):
            scores = torch.softmax(logits, dim=-1)
        else:
            flags = torch.tensor(multi, device=logits.device).unsqueeze(1)
            scores = torch.where(flags, torch.sigmoid(logits), torch.softmax(logits, dim=-1))
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)
        ranked = torch.gather(scores, -1, order).tolist()
        pb = inference_pb2
        out = []
        for work, row_order, row_scores in zip(row_works, order.tolist(), ranked, strict=True):
            labels = work.adapter.label_names
            scored = [pb.LabelScore(label=labels[i], score=s) for i, s in zip(row_order, row_scores, strict=True)]
            out.append(pb.Prediction(classification=pb.Classification(scores=scored)))
        return out

    def _generate_kwargs(self, base: Base, params: inference_pb2.GenerationParameters) -> dict[str, Any]:
        max_new = params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": base.tokenizer.pad_token_id}
        if params.ignore_eos:
            kwargs["min_new_tokens"] = max_new
        if params.temperature > 0:
            # Explicit, so 0 means off here as in the API (generate() would default top_k to 50).
            kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p or 1.0)
        else:
            kwargs["do_sample"] = False
        return kwargs

    def _generate(
        self, base: Base, works: list[Work], prompts: list[str], names: list[str] | None, rows: list[int] | None = None
    ) -> list[inference_pb2.Prediction]:
        import torch

        row_works = [w for w in works for _ in w.texts]
        if rows is not None:
            prompts, row_works = [prompts[i] for i in rows], [row_works[i] for i in rows]
        params = works[0].params
        tokenizer = base.tokenizer
        tokenizer.padding_side = "left"  # batched generation continues from the right edge
        batch = tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=True, max_length=works[0].adapter.max_length
        )
        tokenizer.padding_side = "right"
        if params.HasField("seed"):
            torch.manual_seed(params.seed)
        extra = {"adapter_names": names} if names is not None else {}
        generated = base.model.generate(**batch.to(base.device), **extra, **self._generate_kwargs(base, params))
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        out = []
        for work, ids in zip(row_works, new_tokens.tolist(), strict=True):
            finish = Gen.FINISH_REASON_LENGTH
            if tokenizer.eos_token_id in ids and not work.params.ignore_eos:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
                finish = Gen.FINISH_REASON_EOS
            self.metrics.generated_tokens.inc(len(ids))
            text = tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in work.params.stop if s and s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], Gen.FINISH_REASON_STOP
            out.append(
                inference_pb2.Prediction(generation=Gen(text=text, generated_tokens=len(ids), finish_reason=finish))
            )
        return out

    def _stream(self, base: Base, work: Work) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        events = work.events
        assert events is not None
        metrics = self.metrics

        class Relay(BaseStreamer):
            """Hands each new token to the RPC thread (the first put is the prompt)."""

            def __init__(self) -> None:
                self.prompt_seen = False
                self.tokens = 0

            def put(self, value: Any) -> None:
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                ids = value.reshape(-1).tolist()
                self.tokens += len(ids)
                metrics.generated_tokens.inc(len(ids))
                events.put(("tokens", ids))

            def end(self) -> None:
                pass

        class StopWhenCancelled(StoppingCriteria):
            """Ends generation once the RPC is cancelled or its stream has finished."""

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), work.cancelled.is_set(), dtype=torch.bool)

        adapter = work.adapter
        tokenizer = base.tokenizer
        relay = Relay()
        prompt = adapter.prompt_template.format(text=work.texts[0])
        batch = tokenizer([prompt], return_tensors="pt", truncation=True, max_length=adapter.max_length)
        ok = False
        try:
            with base.lock, torch.inference_mode():  # as every forward pass (tensors made in it stay in it)
                self._activate(base, adapter.adapter_name)
                if work.params.HasField("seed"):
                    torch.manual_seed(work.params.seed)
                base.model.generate(
                    **batch.to(base.device),
                    streamer=relay,
                    stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
                    **self._generate_kwargs(base, work.params),
                )
            ok = True
        finally:
            # Outcomes: completed (max_new_tokens), eos, stopped (a stop sequence), cancelled (the RPC ended).
            outcome = work.outcome or ("cancelled" if work.cancelled.is_set() else "completed")
            outcome = outcome if ok else "error"
            metrics.streams.inc(outcome=outcome)
            log.info("stream for %s ended (%s) after %d tokens", adapter.version, outcome, relay.tokens)
            if ok:  # on error the lane hands the exception to the RPC thread instead
                events.put(("end", outcome))
        work.succeed(relay.tokens)
