"""Continuous batching (services/inference/continuous.py) with a real tiny
GPT-Neo and real PEFT adapters, through the engine's own forward: rows that
join a running batch between steps and leave it when done give exactly what
one-by-one greedy generate() gives; stop sequences, budgets, seeds, cancels
and deadlines act on rows, not on the whole batch.

What happens when is decided by a hook inside the forward (it runs on the
loop thread between steps), so nothing here depends on timing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from textft.errors import DeadlineExceeded, InvalidArgument
from textft.v1 import inference_pb2
from textft_services.common.config import Settings
from textft_services.common.tinymodels import build_tiny_gpt_neo
from textft_services.inference.batcher import GENERATE, STREAM, Admission, Work
from textft_services.inference.continuous import ContinuousBatcher, Row, sample
from textft_services.inference.engine import Adapter, Base, Engine
from textft_services.inference.metrics import InferenceMetrics

pytestmark = pytest.mark.unit

Gen = inference_pb2.Generation
PROMPTS = [
    "the quick brown fox",
    "hello",
    "my name is alice and my email is",
    "question: what is the capital of france? answer:",
    "translate to french: hello ->",
    "0123",
]
ALL = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
TIMEOUT = 60


class Model:
    """A base with three adapters (different ranks and targets) and the engine objects around it."""

    def __init__(self, directory: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        torch.manual_seed(0)
        peft: Any = None
        for i, (rank, targets) in enumerate([(4, ALL), (8, ALL), (2, ["q_proj", "v_proj"])]):
            config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type="CAUSAL_LM")
            if peft is None:
                peft = get_peft_model(model, config, adapter_name=f"a{i}")
            else:
                peft.add_adapter(f"a{i}", config)
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.3)  # LoRA B starts at zero: make every adapter count
        self.peft: PeftModel = peft.to(self.device).eval()
        self.engine = Engine(Settings(), store=None, trainer=object())  # type: ignore[arg-type]
        self.base = Base(("tiny", "TEXT_GENERATION", 0), self.peft, self.tokenizer, device=self.device)
        assert self.base.mixer.install(self.peft)
        self.adapters = {
            n: Adapter(n, n, self.base, "TEXT_GENERATION", [], False, "{text}", 256, 0, 0.0, "tiny")
            for n in ("a0", "a1", "a2")
        }

    def reference(self, adapter: str, prompt: str, max_new: int) -> list[int]:
        """One-by-one greedy generate() with that adapter alone (EOS ends it, not counted);
        under the base's lock, as the loop may still be running other rows."""
        with self.base.lock, torch.inference_mode():
            self.peft.set_adapter(adapter)
            batch = self.tokenizer([prompt], return_tensors="pt").to(self.device)
            out = self.peft.generate(
                **batch, max_new_tokens=max_new, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        ids = out[0, batch["input_ids"].shape[1] :].tolist()
        eos = self.tokenizer.eos_token_id
        return ids[: ids.index(eos)] if eos in ids else ids


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    directory = build_tiny_gpt_neo(tmp_path_factory.mktemp("continuous") / "base", corpus=PROMPTS)
    return Model(directory)


class Loop:
    """A ContinuousBatcher over the engine's forward, with a hook run before each forward."""

    def __init__(
        self, model: Model, max_rows: int = 32, max_tokens: int = 16384, queue_size: int = 64, waiting_steps: int = 0
    ) -> None:
        self.model = model
        self.metrics = InferenceMetrics()
        self.calls: list[list[str]] = []  # adapter names of each forward's rows
        self.hooks: dict[int, Callable[[], None]] = {}  # forward number -> action before it
        self.batcher = ContinuousBatcher(
            "tiny",
            self._forward,
            model.device,
            model.tokenizer.pad_token_id,
            model.peft.config.max_position_embeddings,
            Admission(queue_size, self.metrics),
            self.metrics,
            max_rows,
            max_tokens,
            max_waiting_steps=waiting_steps,
        )

    def _forward(self, names: list[str], *args: Any) -> Any:
        hook = self.hooks.pop(len(self.calls), None)
        if hook is not None:
            hook()
        self.calls.append(list(names))
        return self.model.engine._step(self.model.base, names, *args)

    def work(
        self, adapter: str, texts: list[str], kind: str = GENERATE, deadline: float | None = None, **params: Any
    ) -> Work:
        p = inference_pb2.GenerationParameters(**params)
        w = Work(
            adapter=self.model.adapters[adapter], kind=kind, texts=texts, params=p, key=object(), deadline=deadline
        )
        if kind == STREAM:
            w.events = queue.Queue()
        return w

    def submit(self, work: Work) -> Work:
        self.batcher.submit(work, self.model.engine._rows(work))
        return work


@pytest.fixture()
def loop(model: Model) -> Iterator[Loop]:
    made = Loop(model)
    yield made
    made.batcher.close()


def texts_of(work: Work) -> list[tuple[str, int, int]]:
    return [
        (p.generation.text, p.generation.generated_tokens, p.generation.finish_reason)
        for p in work.future.result(TIMEOUT)
    ]


def expected(model: Model, adapter: str, prompt: str, max_new: int) -> tuple[str, int, int]:
    ids = model.reference(adapter, prompt, max_new)
    finish = Gen.FINISH_REASON_LENGTH if len(ids) == max_new else Gen.FINISH_REASON_EOS
    return model.tokenizer.decode(ids, skip_special_tokens=True), len(ids), finish


def stream_events(work: Work) -> list[tuple[str, Any]]:
    assert work.events is not None
    out = []
    while True:
        kind, value = work.events.get(timeout=TIMEOUT)
        out.append((kind, value))
        if kind in ("end", "error"):
            return out


def test_rows_joining_and_leaving_equal_one_by_one_greedy(model: Model, loop: Loop) -> None:
    plan = [("a0", PROMPTS[0], 12), ("a1", PROMPTS[1], 5), ("a2", PROMPTS[2], 9)]
    late = [("a1", PROMPTS[3], 10), ("a0", PROMPTS[4], 3), ("a2", PROMPTS[5], 14), ("a0", PROMPTS[2], 7)]
    first = [loop.work(a, [p], max_new_tokens=n) for a, p, n in plan]
    later = [loop.work(a, [p], max_new_tokens=n) for a, p, n in late]
    # The late requests arrive while the first ones decode: two before the 3rd forward, two before the 6th.
    loop.hooks[2] = lambda: [loop.submit(w) for w in later[:2]]
    loop.hooks[5] = lambda: [loop.submit(w) for w in later[2:]]
    for w in first:
        loop.submit(w)
    for (adapter, prompt, n), w in zip(plan + late, first + later, strict=True):
        assert texts_of(w) == [expected(model, adapter, prompt, n)], (adapter, prompt)
    sizes = [len(c) for c in loop.calls]
    assert max(sizes) >= 5  # late rows did share steps with the running ones
    assert any(len(set(c)) > 1 for c in loop.calls)  # mixed adapters in one step
    assert sizes[-1] < max(sizes)  # finished rows left the batch


def test_a_request_of_many_texts_is_spread_over_steps_by_the_token_budget(model: Model) -> None:
    prompts = [PROMPTS[3]] * 12  # one length: every row costs the same
    cost = len(model.tokenizer(PROMPTS[3])["input_ids"]) + 6
    loop = Loop(model, max_rows=32, max_tokens=4 * cost + cost // 2)  # four rows in flight at most
    try:
        work = loop.submit(loop.work("a1", prompts, max_new_tokens=6, ignore_eos=True))
        got = texts_of(work)
        text = model.tokenizer.decode(model.reference("a1", PROMPTS[3], 6), skip_special_tokens=True)
        assert got == [(text, 6, Gen.FINISH_REASON_LENGTH)] * 12
        assert max(len(c) for c in loop.calls) == 4
        assert loop.metrics.batch_rows.render()[-1].endswith(" 3")  # three prefills of four rows
        assert loop.metrics.prefill_tokens.value() >= sum(len(model.tokenizer(p)["input_ids"]) for p in prompts)
    finally:
        loop.batcher.close()


def test_stop_sequence_is_cut_and_streamed_text_never_contains_it(model: Model, loop: Loop) -> None:
    full, _, _ = expected(model, "a0", PROMPTS[0], 20)
    assert len(full) >= 6
    stop = full[3:5]
    cut = full[: full.find(stop)]
    unary = loop.submit(loop.work("a0", [PROMPTS[0]], max_new_tokens=20, stop=[stop]))
    stream = loop.submit(loop.work("a0", [PROMPTS[0]], kind=STREAM, max_new_tokens=20, stop=[stop]))
    ((text, _, finish),) = texts_of(unary)
    assert (text, finish) == (cut, Gen.FINISH_REASON_STOP)
    events = stream_events(stream)
    streamed = "".join(v for k, v in events if k == "text")
    assert streamed == cut and events[-1][0] == "end" and events[-1][1][0] == Gen.FINISH_REASON_STOP


def test_stream_and_predict_agree(model: Model, loop: Loop) -> None:
    stream = loop.submit(loop.work("a2", [PROMPTS[3]], kind=STREAM, max_new_tokens=15))
    unary = loop.submit(loop.work("a2", [PROMPTS[3]], max_new_tokens=15))
    events = stream_events(stream)
    ((text, tokens, finish),) = texts_of(unary)
    assert "".join(v for k, v in events if k == "text") == text
    assert events[-1] == ("end", (finish, tokens))


def test_a_short_predict_finishes_while_a_long_stream_goes_on(model: Model, loop: Loop) -> None:
    stream = loop.work("a0", [PROMPTS[0]], kind=STREAM, max_new_tokens=200, ignore_eos=True)
    short = loop.work("a1", [PROMPTS[1]], max_new_tokens=3, ignore_eos=True)
    checked = threading.Event()
    loop.hooks[3] = lambda: loop.submit(short)  # arrives while the stream generates
    loop.hooks[20] = lambda: checked.wait(TIMEOUT)  # the stream cannot finish before the check below
    loop.submit(stream)
    assert len(texts_of(short)) == 1  # it completed ...
    assert not stream.future.done()  # ... while the stream still runs
    checked.set()
    events = stream_events(stream)
    assert events[-1] == ("end", (Gen.FINISH_REASON_LENGTH, 200))


def test_arrivals_wait_a_few_steps_to_be_prefilled_together(model: Model) -> None:
    loop = Loop(model, waiting_steps=3)
    try:
        running = loop.work("a0", PROMPTS, max_new_tokens=20, ignore_eos=True)  # six rows, one submission
        late = loop.work("a1", [PROMPTS[1]], max_new_tokens=4, ignore_eos=True)
        loop.hooks[1] = lambda: loop.submit(late)  # one arrival against six running rows
        loop.submit(running)
        assert len(texts_of(running)) == 6
        assert texts_of(late) == [expected(model, "a1", PROMPTS[1], 4)]
        sizes = [len(c) for c in loop.calls]
        # forward 0: prefill of 6; decodes 1, 2, 3 without it; then its prefill (1 row) and decodes of 7.
        assert sizes[:6] == [6, 6, 6, 6, 1, 7], sizes
    finally:
        loop.batcher.close()


def test_a_full_batch_waits_for_free_rows_before_a_prefill(model: Model) -> None:
    """A prefill is a forward of its own: one row leaving a full batch of five
    does not start one for the single row that could join, however many wait;
    two free rows against three running do."""
    loop = Loop(model, max_rows=5, waiting_steps=100)
    try:
        first = loop.work("a0", [PROMPTS[0]], max_new_tokens=2, ignore_eos=True)
        second = loop.work("a1", [PROMPTS[1]], max_new_tokens=3, ignore_eos=True)
        long = [loop.work("a0", [PROMPTS[2 + i % 2]], max_new_tokens=12, ignore_eos=True) for i in range(3)]
        short = [loop.work("a1", [PROMPTS[4 + i % 2]], max_new_tokens=5, ignore_eos=True) for i in range(4)]
        loop.hooks[0] = lambda: [loop.submit(w) for w in [second, *long, *short]]
        compactions: list[int] = []
        loop.hooks[8] = lambda: compactions.append(loop.batcher.compactions)  # after the prefill of 2
        loop.submit(first)
        for w, n in [(first, 2), (second, 3)] + [(w, 12) for w in long] + [(w, 5) for w in short]:
            assert texts_of(w)[0][1] == n
        sizes = [len(c) for c in loop.calls]
        # prefill and decode of the first row; prefill of 5 and two decodes (the second row leaves);
        # two decodes of 5 slots, 4 rows and a free slot, while three rows wait for the one free row
        # (a slot is compacted away only once a third are free); the first short row leaves, and two
        # free rows against three running: a prefill of 2 into the two free slots, then decodes of 5.
        assert sizes[:9] == [1, 1, 5, 5, 5, 5, 5, 2, 5], sizes
        assert compactions == [0]
    finally:
        loop.batcher.close()


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(model: Model, loop: Loop) -> None:
    params = {"max_new_tokens": 12, "temperature": 1.5, "top_k": 50, "top_p": 0.95, "seed": 7, "ignore_eos": True}
    alone = texts_of(loop.submit(loop.work("a0", [PROMPTS[0]], **params)))
    crowd = [loop.work("a1", [p], max_new_tokens=12) for p in PROMPTS]
    again = loop.work("a0", [PROMPTS[0]], **params)
    for w in [*crowd[:3], again, *crowd[3:]]:
        loop.submit(w)
    assert texts_of(again) == alone
    other = texts_of(loop.submit(loop.work("a0", [PROMPTS[0]], **{**params, "seed": 8})))
    assert other != alone  # the seed matters (12 tokens sampled at temperature 1.5)


def test_cancelled_stream_leaves_the_batch_at_the_next_step(model: Model, loop: Loop) -> None:
    keep = loop.work("a1", [PROMPTS[2]], max_new_tokens=30, ignore_eos=True)
    gone = loop.work("a0", [PROMPTS[0]], kind=STREAM, max_new_tokens=200, ignore_eos=True)
    loop.hooks[4] = lambda: loop.batcher.abandon(gone)  # the client goes away during the 5th forward's wait
    loop.submit(keep)
    loop.submit(gone)
    assert texts_of(keep)[0][1] == 30
    assert [k for k, _ in stream_events(gone)][-1] == "error"
    rows = [len(c) for c in loop.calls]
    assert rows[4] == 2 and rows[5] == 1  # the 5th step still had it; the 6th did not
    assert loop.metrics.streams.value(outcome="cancelled") == 1


def test_expired_request_is_dropped_before_any_compute(model: Model, loop: Loop) -> None:
    busy = loop.work("a1", [PROMPTS[3]], max_new_tokens=10, ignore_eos=True)
    late = loop.work("a0", ["never computed"], deadline=time.monotonic() + 3600, max_new_tokens=5)

    def arrive_then_expire() -> None:
        loop.submit(late)
        late.deadline = time.monotonic() - 1  # its deadline passes while it waits

    loop.hooks[2] = arrive_then_expire
    loop.submit(busy)
    with pytest.raises(DeadlineExceeded):
        late.future.result(TIMEOUT)
    assert texts_of(busy)[0][1] == 10
    assert all(len(c) == 1 for c in loop.calls)  # no forward ever had a second row
    assert loop.metrics.dropped.value(reason="deadline") == 1


def test_rows_stop_at_the_models_context(model: Model, loop: Loop) -> None:
    limit = model.peft.config.max_position_embeddings
    work = loop.submit(loop.work("a0", ["word " * (limit + 50)], max_new_tokens=40, ignore_eos=True))
    ((_, tokens, finish),) = texts_of(work)
    assert finish == Gen.FINISH_REASON_LENGTH and 1 <= tokens < 40


def test_stop_sequences_capped(model: Model) -> None:
    engine, settings = model.engine, model.engine.settings
    too_many = inference_pb2.GenerationParameters(stop=["x"] * (settings.inference_max_stop_sequences + 1))
    with pytest.raises(InvalidArgument) as many:
        engine.check_inputs(["hi"], too_many)
    assert [v.field for v in many.value.violations] == ["generation.stop"]
    too_long = inference_pb2.GenerationParameters(stop=["ok", "y" * (settings.inference_max_stop_chars + 1)])
    with pytest.raises(InvalidArgument) as long:
        engine.check_inputs(["hi"], too_long)
    assert [v.field for v in long.value.violations] == ["generation.stop[1]"]


def _sample_one(logits: torch.Tensor, row: Row) -> int:
    """The per-row sampler the batched one replaced (temperature, then top-k, then top-p)."""
    if row.temperature == 0:
        return int(logits.argmax())
    scores = logits.float() / row.temperature
    if row.top_k:
        kth = torch.topk(scores, min(row.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if 0 < row.top_p < 1:
        ordered, order = torch.sort(scores, descending=True)
        drop = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) > row.top_p
        scores = scores.scatter(0, order, ordered.masked_fill(drop, -float("inf")))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=row.generator))


def test_batched_sampler_equals_per_row_sampling(model: Model) -> None:
    """Greedy rows take the argmax and seeded rows draw exactly what one-by-one
    sampling with the same generator draws, whatever their neighbours' settings."""
    torch.manual_seed(3)
    vocab = 300
    settings = [
        (0.0, 0, 0.0),
        (1.0, 0, 1.0),
        (0.7, 5, 0.0),
        (1.3, 0, 0.9),
        (1.0, 40, 0.5),
        (0.0, 3, 0.2),
        (2.0, 1, 0.0),
    ]

    def rows(seed: int) -> list[Row]:
        return [
            Row(
                None,  # type: ignore[arg-type]
                i,
                [1],
                "a0",
                4,
                model.tokenizer,
                eos=0,
                temperature=t,
                top_k=k,
                top_p=p,
                generator=torch.Generator().manual_seed(seed + i),
            )
            for i, (t, k, p) in enumerate(settings)
        ]

    draws = set()
    for trial in range(20):
        logits = torch.randn(len(settings), vocab) * 3
        tokens, listed = sample(logits.clone(), rows(100 * trial))
        assert listed == [_sample_one(logits[i], r) for i, r in enumerate(rows(100 * trial))]
        assert tokens.tolist() == listed
        draws.add(tuple(listed))
    assert len(draws) > 1  # the draws depend on the logits and seeds at all


def test_batched_sampler_respects_top_k_and_ignore_eos_without_seeds(model: Model) -> None:
    eos = model.tokenizer.eos_token_id
    logits = torch.zeros(4, 50)
    logits[:, eos] = 100.0  # EOS would win every draw
    logits[:, 7] = logits[:, 9] = 10.0  # the two best other tokens
    rows = [Row(None, i, [1], "a0", 4, model.tokenizer, eos=None, temperature=1.0, top_k=2) for i in range(4)]  # type: ignore[arg-type]
    rows[3].temperature = 0.0  # greedy, EOS masked
    for _ in range(20):
        _, tokens = sample(logits.clone(), rows)
        assert set(tokens) <= {7, 9}


def test_a_lone_row_of_another_adapter_runs_without_switching_the_active_one(model: Model, loop: Loop) -> None:
    model.reference("a0", PROMPTS[0], 1)  # a0 is now the active adapter
    got = texts_of(loop.submit(loop.work("a2", [PROMPTS[1]], max_new_tokens=6)))
    # set_adapter walks every module; the per-row gathered path needs no active adapter.
    assert model.peft.active_adapter == "a0"
    assert loop.calls and all(c == ["a2"] for c in loop.calls)
    assert got == [expected(model, "a2", PROMPTS[1], 6)]
