"""The gathered mixed-adapter LoRA path (services/inference/mixed.py) on its
own, against PEFT's `adapter_names` path and one-by-one forwards: adapters of
different ranks, one that leaves layers alone, a classification head per
adapter, greedy generation, and the fallbacks to PEFT's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from support import assert_numerically_close, assert_same_greedy
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from textft_services.common.tinymodels import build_tiny_gpt_neo
from textft_services.inference.mixed import MixedLoRA

pytestmark = pytest.mark.unit

TEXTS = [f"the film was {w} from start to end" for w in ["great", "awful", "fine", "dull", "superb", "bland"]]
ALL = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt_neo(tmp_path_factory.mktemp("mixed") / "base", corpus=TEXTS, hidden_size=64, num_layers=2)


def _adapters(model: Any, task: str, specs: list[tuple[int, list[str]]]) -> PeftModel:
    torch.manual_seed(0)
    peft: Any = None
    for i, (rank, targets) in enumerate(specs):
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type=task)
        if peft is None:
            peft = get_peft_model(model, config, adapter_name=f"a{i}")
        else:
            peft.add_adapter(f"a{i}", config)
    for name, param in peft.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(param, std=0.5)  # LoRA B starts at zero: make every adapter count
    return peft.eval()


def _batch(base_dir: Path, texts: list[str], side: str = "right") -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = side
    return tokenizer, tokenizer(texts, return_tensors="pt", padding=True)


def test_classification_rows_get_their_adapter_and_head(base_dir: Path) -> None:
    tokenizer, batch = _batch(base_dir, TEXTS)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=3, pad_token_id=tokenizer.pad_token_id
    )
    # a2 has another rank and leaves the MLP alone (a zero slot there).
    peft = _adapters(model, "SEQ_CLS", [(4, ALL), (8, ALL), (2, ["q_proj", "v_proj"])])
    mixer = MixedLoRA()
    assert mixer.install(peft)
    names = ["a0", "a1", "a2", "a1", "a0", "a2"]
    with torch.no_grad():
        want_peft = peft(**batch, adapter_names=names).logits
        with mixer.rows(names):
            got = peft(**batch).logits
        assert len(mixer._stacks) == 2 * 6 + 1  # every LoRA layer and the head took the gathered path
        one_by_one = []
        for i, name in enumerate(names):
            peft.set_adapter(name)
            single = {k: v[i : i + 1, : int(batch["attention_mask"][i].sum())] for k, v in batch.items()}
            one_by_one.append(peft(**single).logits)
        plain = peft(**batch).logits  # outside rows(): PEFT's forward, the active adapter for every row
    assert_numerically_close(got, want_peft)
    assert_numerically_close(got, torch.cat(one_by_one))
    assert not torch.allclose(plain, got, atol=1e-3)  # the adapters (and heads) really differ
    assert mixer.names is None


def test_greedy_generation_matches_peft(base_dir: Path) -> None:
    tokenizer, batch = _batch(base_dir, TEXTS[:4], side="left")
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    model.config.pad_token_id = tokenizer.pad_token_id
    peft = _adapters(model, "CAUSAL_LM", [(4, ALL), (8, ["c_fc", "c_proj"])])
    mixer = MixedLoRA()
    assert mixer.install(peft)
    names = ["a1", "a0", "a0", "a1"]
    kwargs = {
        "max_new_tokens": 6,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "output_scores": True,
        "return_dict_in_generate": True,
    }
    with torch.no_grad():
        want = peft.generate(**batch, adapter_names=names, **kwargs)
        with mixer.rows(names):
            got = peft.generate(**batch, **kwargs)
    assert_same_greedy(got, want)


def test_stacks_follow_adapter_changes(base_dir: Path) -> None:
    tokenizer, batch = _batch(base_dir, TEXTS[:2])
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    peft = _adapters(model, "SEQ_CLS", [(4, ALL), (4, ALL), (4, ALL)])
    mixer = MixedLoRA()
    mixer.install(peft)
    with torch.no_grad():
        with mixer.rows(["a0", "a2"]):
            peft(**batch)
        peft.set_adapter("a0")
        peft.delete_adapter("a1")
        mixer.forget()
        with mixer.rows(["a2", "a0"]):
            got = peft(**batch).logits
        want = peft(**batch, adapter_names=["a2", "a0"]).logits
    assert_numerically_close(got, want)


def test_unsupported_layers_fall_back_to_peft(base_dir: Path) -> None:
    tokenizer, batch = _batch(base_dir, TEXTS[:2])
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    # LoRA on the embedding: a layer type the mixer does not wrap, so the
    # engine must keep PEFT's own mixed path for this model.
    peft = _adapters(model, "SEQ_CLS", [(4, ["q_proj", "wte"]), (4, ["q_proj", "wte"])])
    mixer = MixedLoRA()
    assert not mixer.install(peft)
    assert not mixer.supported

    # DoRA: wrapped, but its layers run PEFT's path, which refuses mixed batches
    # as it always has (the engine then runs one pass per adapter).
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="SEQ_CLS")
    dora = get_peft_model(model, config, adapter_name="d0")
    dora.add_adapter("d1", config)
    dora.eval()
    mixer = MixedLoRA()
    assert mixer.install(dora)
    with torch.no_grad(), mixer.rows(["d0", "d1"]), pytest.raises(ValueError):
        dora(**batch)


def test_a_request_of_many_texts_runs_in_length_sorted_batches_in_order(base_dir: Path) -> None:
    """More texts than max_batch_size: forwards of at most that many rows, and
    every text's scores equal its own one-text forward, in the request's order."""
    from textft.v1 import inference_pb2
    from textft_services.common.config import Settings
    from textft_services.inference.batcher import CLASSIFY
    from textft_services.inference.engine import Adapter, Base, Engine

    tokenizer, _ = _batch(base_dir, TEXTS)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=3, pad_token_id=tokenizer.pad_token_id
    )
    peft = _adapters(model, "SEQ_CLS", [(4, ALL), (8, ALL)])
    engine = Engine(Settings(inference_max_batch_size=4), store=None, trainer=object())  # type: ignore[arg-type]
    base = Base(("tiny", "TEXT_CLASSIFICATION", 3), peft, tokenizer, device=torch.device("cpu"))
    assert base.mixer.install(peft)
    adapters = {
        n: Adapter(n, n, base, "TEXT_CLASSIFICATION", ["x", "y", "z"], False, "{text}", 64, 0, 0.0, "tiny")
        for n in ("a0", "a1")
    }
    rows: list[int] = []
    peft.get_base_model().register_forward_pre_hook(
        lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    params = inference_pb2.GenerationParameters()
    texts = [t * (1 + i % 3) for i, t in enumerate(TEXTS + TEXTS[::-1])]  # 12 texts of three lengths
    works = [engine._work(adapters["a0"], CLASSIFY, texts, params, None)]
    works.append(engine._work(adapters["a1"], CLASSIFY, texts[:3], params, None))
    engine._run(base, works)
    assert rows and max(rows) <= 4 and sum(rows) == 15, rows
    for work in works:
        for text, got in zip(work.texts, work.future.result(5), strict=True):
            alone = engine._work(work.adapter, CLASSIFY, [text], params, None)
            engine._run(base, [alone])
            want = alone.future.result(5)[0]
            assert [s.label for s in got.classification.scores] == [s.label for s in want.classification.scores]
            for a, b in zip(got.classification.scores, want.classification.scores, strict=True):
                assert abs(a.score - b.score) < 1e-5


def test_fused_activations_give_the_same_outputs(base_dir: Path) -> None:
    """The inference side swaps GPT-Neo's Python tanh-GELU for torch's fused one: same logits to float rounding."""
    from transformers.activations import GELUTanh, NewGELUActivation

    from textft_services.modeling.loading import fused_activations

    _, batch = _batch(base_dir, TEXTS)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    with torch.inference_mode():
        before = model(**batch).logits
        layers = sum(isinstance(m, NewGELUActivation) for m in model.modules())
        assert layers > 0 and fused_activations(model) == layers
        assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
        assert sum(isinstance(m, GELUTanh) for m in model.modules()) == layers
        assert torch.allclose(model(**batch).logits, before, atol=1e-5)
