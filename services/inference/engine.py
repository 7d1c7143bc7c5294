"""Inference domain: resolve a model version through TrainerService's RPC, load
its base model once (shared by all of its adapters) and its adapter from the
store, keep adapters in an LRU bounded by count and bytes, and predict.

Adapters are read and checked (textft.json: task, labels, base model) before
any weights load, as LoRAX does.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from textft import Client
from textft.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated, Unavailable
from textft.v1 import common_pb2, inference_pb2, trainer_pb2

from ..common import basemodels, names
from ..common.config import Settings
from ..common.store import ObjectStore

log = logging.getLogger("textft.inference")
MV = trainer_pb2.ModelVersion
DEFAULT_MAX_NEW_TOKENS = 64
MAX_NEW_TOKENS = 2048


@dataclass
class Base:
    """A base model shared by the adapters of one (base model, task, label count)."""

    key: tuple[str, str, int]
    model: Any  # a PeftModel once the first adapter is loaded
    tokenizer: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set[str] = field(default_factory=set)


@dataclass
class Adapter:
    version: str
    adapter_name: str
    base: Base
    task: str
    label_names: list[str]
    multi_label: bool
    prompt_template: str
    max_length: int
    nbytes: int
    load_seconds: float
    base_model: str
    last_used: float = field(default_factory=time.time)


def _adapter_name(version: str) -> str:
    """PEFT adapter names become module keys: no dots or slashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", version)


class Engine:
    def __init__(self, settings: Settings, store: ObjectStore, trainer: Client | None = None) -> None:
        self.settings = settings
        self.store = store
        self.trainer = trainer or Client(trainer_target=settings.trainer_addr, api_key=settings.api_key)
        self.cache_dir = settings.home / "inference" / "adapters"
        self.bases: dict[tuple[str, str, int], Base] = {}
        self.adapters: OrderedDict[str, Adapter] = OrderedDict()
        self.lock = threading.RLock()
        self.loading: dict[str, threading.Lock] = {}

    # ---- resolution ----
    def resolve(self, name: str, field_name: str = "model_version") -> trainer_pb2.ModelVersion:
        try:
            if re.match(r"^models/[^/]+$", name or ""):
                names.parse_model(name, field_name)
                model = self.trainer.get_model(name)
                if not model.latest_ready_version:
                    raise FailedPrecondition(f"model {name} has no READY version yet", reason="MODEL_NOT_READY")
                name = model.latest_ready_version
            names.parse_model_version(name, field_name)
            version = self.trainer.get_model_version(name)
        except Unauthenticated:
            raise Unavailable(
                "the inference service could not authenticate to the trainer (check TEXTFT_API_KEY)"
            ) from None
        if version.state != MV.STATE_READY:
            raise FailedPrecondition(
                f"model version {version.name} is {MV.State.Name(version.state)}, not READY",
                reason="MODEL_VERSION_NOT_READY",
            )
        return version

    # ---- loading and the LRU ----
    def load(self, name: str) -> Adapter:
        version = self.resolve(name)
        with self.lock:
            adapter = self.adapters.get(version.name)
            if adapter is not None:
                self.adapters.move_to_end(version.name)
                adapter.last_used = time.time()
                return adapter
            gate = self.loading.setdefault(version.name, threading.Lock())
        with gate:  # one cold load per version, however many requests wait for it
            with self.lock:
                if version.name in self.adapters:
                    return self.adapters[version.name]
            adapter = self._cold_load(version)
            with self.lock:
                self.adapters[version.name] = adapter
                self.loading.pop(version.name, None)
                self._evict()
            return adapter

    def _cold_load(self, version: trainer_pb2.ModelVersion) -> Adapter:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        started = time.monotonic()
        local = self.cache_dir / _adapter_name(version.name)
        if local.exists():
            shutil.rmtree(local)
        try:
            self.store.download_dir(version.adapter_uri, local)
        except NotFound:
            raise FailedPrecondition(
                f"the adapter of {version.name} is missing from the store ({version.adapter_uri})"
            ) from None
        meta = json.loads((local / "textft.json").read_text())
        task, labels = meta["task"], list(meta.get("label_names") or [])
        base_name = meta["model_config"]["pretrained_model_name_or_path"]
        key = (base_name, task, len(labels))
        with self.lock:
            base = self.bases.get(key)
        if base is None:
            path = basemodels.resolve(base_name, self.store, self.settings.base_model_cache)
            kwargs = {k: v for k, v in meta["model_config"].items() if k != "pretrained_model_name_or_path"}
            tokenizer = AutoTokenizer.from_pretrained(str(local))  # saved with the adapter
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if task == "TEXT_CLASSIFICATION":
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=len(labels), pad_token_id=tokenizer.pad_token_id, **kwargs
                )
                model.config.pad_token_id = tokenizer.pad_token_id
            else:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
                if model.config.pad_token_id is None:
                    model.config.pad_token_id = tokenizer.pad_token_id
            model.eval()
            base = Base(key, model, tokenizer)
            with self.lock:
                self.bases[key] = base
        adapter_name = _adapter_name(version.name)
        with base.lock, torch.no_grad():
            if base.adapters:
                base.model.load_adapter(str(local), adapter_name=adapter_name)
            else:
                base.model = PeftModel.from_pretrained(base.model, str(local), adapter_name=adapter_name)
                base.model.eval()
            base.adapters.add(adapter_name)
        nbytes = sum(p.stat().st_size for p in local.glob("adapter_model.*"))
        seconds = time.monotonic() - started
        log.info("loaded %s on %s in %.2fs (%d adapter bytes)", version.name, base_name, seconds, nbytes)
        return Adapter(
            version=version.name,
            adapter_name=adapter_name,
            base=base,
            task=task,
            label_names=labels,
            multi_label=bool(meta.get("multi_label")),
            prompt_template=meta.get("prompt_template", "{text}\n"),
            max_length=int(meta.get("max_length", 512)),
            nbytes=nbytes,
            load_seconds=seconds,
            base_model=base_name,
        )

    def _evict(self) -> None:
        """Least recently used adapters go first, past the count or byte bound."""
        while len(self.adapters) > 1 and (
            len(self.adapters) > self.settings.inference_max_adapters
            or sum(a.nbytes for a in self.adapters.values()) > self.settings.inference_max_adapter_bytes
        ):
            _, victim = self.adapters.popitem(last=False)
            self._drop(victim)

    def _drop(self, adapter: Adapter) -> None:
        base = adapter.base
        with base.lock:
            base.adapters.discard(adapter.adapter_name)
            if base.adapters:
                base.model.delete_adapter(adapter.adapter_name)
        if not base.adapters:  # last adapter of this base: free the base too
            with self.lock:
                self.bases.pop(base.key, None)
        shutil.rmtree(self.cache_dir / adapter.adapter_name, ignore_errors=True)
        log.info("unloaded %s", adapter.version)

    def unload(self, name: str) -> None:
        names.parse_model_version(name, "model_version")
        with self.lock:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise NotFound(f"model version {name} is not loaded", reason="NOT_LOADED")
        self._drop(adapter)

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

    # ---- prediction ----
    def check_inputs(self, texts: list[str], params: inference_pb2.GenerationParameters) -> None:
        if not texts:
            raise InvalidArgument.for_field("texts", "at least one text is required")
        if len(texts) > self.settings.inference_max_batch_texts:
            raise InvalidArgument.for_field(
                "texts", f"at most {self.settings.inference_max_batch_texts} texts per request, got {len(texts)}"
            )
        for i, text in enumerate(texts):
            if len(text) > self.settings.inference_max_input_chars:
                raise InvalidArgument.for_field(
                    f"texts[{i}]", f"{len(text)} characters, the limit is {self.settings.inference_max_input_chars}"
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

    def predict(
        self, name: str, texts: list[str], params: inference_pb2.GenerationParameters
    ) -> inference_pb2.PredictResponse:
        self.check_inputs(texts, params)
        adapter = self.load(name)
        if adapter.task == "TEXT_CLASSIFICATION":
            predictions = self._classify(adapter, texts)
        else:
            predictions = self._generate(adapter, texts, params)
        return inference_pb2.PredictResponse(
            model_version=adapter.version, task=common_pb2.Task.Value("TASK_" + adapter.task), predictions=predictions
        )

    def _classify(self, adapter: Adapter, texts: list[str]) -> list[inference_pb2.Prediction]:
        import torch

        base = adapter.base
        with base.lock, torch.no_grad():
            base.model.set_adapter(adapter.adapter_name)
            base.tokenizer.padding_side = "right"
            batch = base.tokenizer(
                texts, return_tensors="pt", padding=True, truncation=True, max_length=adapter.max_length
            )
            logits = base.model(**batch.to(base.model.device)).logits.float()
        scores = torch.sigmoid(logits) if adapter.multi_label else torch.softmax(logits, dim=-1)
        out = []
        for row in scores.tolist():
            ranked = sorted(zip(adapter.label_names, row, strict=True), key=lambda x: -x[1])
            out.append(
                inference_pb2.Prediction(
                    classification=inference_pb2.Classification(
                        scores=[inference_pb2.LabelScore(label=label, score=score) for label, score in ranked]
                    )
                )
            )
        return out

    def _generate(
        self, adapter: Adapter, texts: list[str], params: inference_pb2.GenerationParameters
    ) -> list[inference_pb2.Prediction]:
        import torch

        base = adapter.base
        tokenizer = base.tokenizer
        max_new = params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tokenizer.pad_token_id}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature)
            if params.top_p:
                kwargs["top_p"] = params.top_p
            if params.top_k:
                kwargs["top_k"] = params.top_k
        else:
            kwargs["do_sample"] = False
        prompts = [adapter.prompt_template.format(text=t) for t in texts]
        with base.lock, torch.no_grad():
            base.model.set_adapter(adapter.adapter_name)
            tokenizer.padding_side = "left"  # batched generation continues from the right edge
            batch = tokenizer(
                prompts, return_tensors="pt", padding=True, truncation=True, max_length=adapter.max_length
            )
            if params.HasField("seed"):
                torch.manual_seed(params.seed)
            generated = base.model.generate(**batch.to(base.model.device), **kwargs)
            tokenizer.padding_side = "right"
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        out = []
        for ids in new_tokens.tolist():
            finish = inference_pb2.Generation.FINISH_REASON_LENGTH
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
                finish = inference_pb2.Generation.FINISH_REASON_EOS
            text = tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in params.stop if s and s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], inference_pb2.Generation.FINISH_REASON_STOP
            out.append(
                inference_pb2.Prediction(
                    generation=inference_pb2.Generation(text=text, generated_tokens=len(ids), finish_reason=finish)
                )
            )
        return out
