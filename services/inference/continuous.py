"""Continuous (iteration-level) batching for generation, after TGI's CausalLM
batches (server/text_generation_server/models/causal_lm.py).

One loop thread per base model keeps a running batch: a slot per row with
its last token, a left-padded attention mask and a KV cache (slots.py, a
transformers DynamicCache whose layers keep spare columns) whose keys and
values are right-aligned, so every row's tokens end at the same column. Each
iteration of the loop:

1. drops rows whose request went away (cancelled RPC, passed deadline);
2. admits waiting rows, first come first served, while the batch stays within
   `max_rows` rows and `max_tokens` tokens in flight (prompt + max_new_tokens
   of every row); a row bigger than the whole budget runs alone. The new rows
   are prefilled together (left-padded, each with its own position ids), take
   their first token, and are written into the free slots of the running
   batch, then into new ones, left-padding whichever is shorter (TGI's
   `CausalLMBatch.concatenate`, without copying the running rows' cache);
3. compacts the batch if a third of its slots are free, then runs one
   decoding step for every slot, each row with its own adapter (the
   mixed-adapter layers of mixed.py), sampling parameters and seed;
4. frees the slots of finished rows (EOS, a stop sequence, max_new_tokens,
   the model's context) and drops the left columns no remaining row uses
   (`CausalLMBatch.filter`, as a moved window rather than a copy).

Text is detokenized incrementally (TGI's prefix/read offsets) for rows that
stream or have stop strings, the others once when they finish; stop
sequences are looked for only in the text that is new since the last token
(plus the stop's length less one, so one that straddles two tokens is seen).
Streams get text deltas as they are produced, holding back a tail that may
begin a stop sequence; a unary request's rows complete it together.

Results equal one-by-one generation: padded columns are masked out, position
ids count each row's own tokens, and greedy decoding takes the same argmax
(tests/test_inference_continuous.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textft.errors import Cancelled, DeadlineExceeded, TextftError, Unavailable
from textft.v1 import inference_pb2

from .batcher import STREAM, Admission, Work
from .metrics import InferenceMetrics
from .slots import SlotCache

log = logging.getLogger("textft.inference.continuous")
Gen = inference_pb2.Generation

# forward(adapter names per row, input_ids, attention_mask, position_ids, cache) -> last-position logits (rows x vocab)
Forward = Callable[[list[str], Any, Any, Any, Any], Any]


@dataclass(eq=False, repr=False)
class Row:
    """One text of a request, from admission to its finish."""

    work: Work
    index: int  # its position among the request's texts
    prompt: list[int]  # token ids
    adapter_name: str
    max_new: int
    tokenizer: Any = field(repr=False)
    eos: int | None = None  # None: ignore_eos (EOS is never sampled)
    stops: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    generator: Any = None  # a seeded torch.Generator, or None (the global RNG)
    incremental: bool = True  # detokenize as tokens come (streams, stop strings); else once at the end
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far (complete characters only)
    sent: int = 0  # characters of text already streamed
    finish: int = Gen.FINISH_REASON_UNSPECIFIED
    pending: Pending | None = None  # its request's bookkeeping, once admitted
    _prefix: int = 0  # incremental detokenization offsets (TGI's decode_token)
    _read: int = 0

    @property
    def cost(self) -> int:
        """Tokens this row may hold in the cache."""
        return len(self.prompt) + self.max_new

    @property
    def done(self) -> bool:
        return self.finish != Gen.FINISH_REASON_UNSPECIFIED

    @property
    def cached(self) -> int:
        """Columns of the KV cache this row uses (its last token is not in it yet)."""
        return len(self.prompt) + len(self.ids) - 1

    def push(self, token: int) -> str:
        """Takes one generated token; returns the text a stream may send now."""
        if not self.incremental:  # nobody reads the text before the end, no stop can cut it
            if self.eos is not None and token == self.eos:
                self.finish = Gen.FINISH_REASON_EOS
            else:
                self.ids.append(token)
                if len(self.ids) >= self.max_new:
                    self.finish = Gen.FINISH_REASON_LENGTH
            if self.done:
                self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            return ""
        if self.eos is not None and token == self.eos:
            self.finish = Gen.FINISH_REASON_EOS
            return self._flush()
        self.ids.append(token)
        before = len(self.text)
        self.text += self._decode()
        if self._stopped(before):
            return self._take(len(self.text))
        if len(self.ids) >= self.max_new:
            self.finish = Gen.FINISH_REASON_LENGTH
            return self._flush()
        return self._take(self._ready())

    def _stopped(self, before: int) -> bool:
        """Cuts the text at a stop sequence in what was added after `before` characters."""
        if not self.stops or len(self.text) == before:
            return False
        # Only new text can complete a stop sequence: search from where one ending in it could start.
        start = max(0, before - max(len(s) for s in self.stops) + 1)
        cuts = [c for c in (self.text.find(s, start) for s in self.stops) if c >= 0]
        if not cuts:
            return False
        self.text = self.text[: min(cuts)]
        self.finish = Gen.FINISH_REASON_STOP
        return True

    def _decode(self) -> str:
        prefix = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        new = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return new[len(prefix) :]
        return ""  # an incomplete character: wait for the next token

    def _flush(self) -> str:
        """At the end: whatever the last tokens decode to, complete or not."""
        prefix = self.tokenizer.decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        new = self.tokenizer.decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(new) > len(prefix):
            before = len(self.text)
            self.text += new[len(prefix) :]
            self._prefix = self._read = len(self.ids)
            self._stopped(before)  # the tail may hold a stop sequence too
        return self._take(len(self.text))

    def _ready(self) -> int:
        """How much of the text may be streamed: all but a tail that begins a stop sequence."""
        ready = len(self.text)
        for s in self.stops:
            for n in range(min(len(s) - 1, ready - self.sent), 0, -1):
                if self.text.endswith(s[:n]):
                    ready = min(ready, len(self.text) - n)
                    break
        return ready

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : upto], upto
        return delta


@dataclass(eq=False)
class Pending:
    """A request waiting for (some of) its rows to be admitted."""

    work: Work
    rows: deque[Row]
    results: list[Any]
    left: int  # rows not yet finished


class Running:
    """The running batch: a slot per row (None once its row has left), their
    last tokens, the mask and the KV cache (slots.py), all on one device."""

    def __init__(self, rows: list[Row], last: Any, mask: Any, cache: SlotCache) -> None:
        self.slots: list[Row | None] = list(rows)
        self.last, self.mask, self.cache = last, mask, cache

    @property
    def rows(self) -> list[Row]:
        """The rows still running, in slot order."""
        return [r for r in self.slots if r is not None]

    @property
    def free(self) -> int:
        """Slots whose row has left (computed, and ignored, until reused or compacted)."""
        return sum(r is None for r in self.slots)

    @property
    def tokens(self) -> int:
        return sum(r.cost for r in self.rows)

    def names(self) -> list[str]:
        """Each slot's adapter; a free slot borrows a running row's (its own may be unloaded by now)."""
        filler = next(r.adapter_name for r in self.slots if r is not None)
        return [r.adapter_name if r is not None else filler for r in self.slots]

    def leave(self, slots: list[int]) -> None:
        """Rows in `slots` leave; their slots stay, free, for the next prefill."""
        for i in slots:
            self.slots[i] = None
        self.trim()

    @property
    def sparse(self) -> bool:
        """A third of the slots or more are free: compacting saves more compute than it costs."""
        return self.free * 3 >= len(self.slots)

    def compact(self) -> None:
        """Keeps the running rows only (one copy of the cache)."""
        import torch

        keep = [i for i, r in enumerate(self.slots) if r is not None]
        if len(keep) != len(self.slots):
            index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
            self.slots = [self.slots[i] for i in keep]
            self.last, self.mask = self.last[index], self.mask[index]
            for layer in self.cache.slot_layers:
                layer.select(index)
        self.trim()

    def trim(self) -> None:
        """Drops the left columns no running row uses: the window's start moves, nothing is copied."""
        # Rows are right-aligned: counted on the host, not by a reduction and a sync on the device.
        start = self.mask.shape[1] - max(r.cached for r in self.rows)
        if start > 0:
            self.mask = self.mask[:, start:]
            for layer in self.cache.slot_layers:
                layer.trim(start)

    def join(self, other: Running) -> None:
        """`other`'s rows (just prefilled) take the free slots, then new ones;
        the narrower of the two windows is padded on the left."""
        import torch

        width, theirs = self.mask.shape[1], other.mask.shape[1]
        if theirs > width:  # left columns the running rows never use: masked
            self.mask = torch.cat([self.mask.new_zeros((self.mask.shape[0], theirs - width)), self.mask], dim=1)
            for layer in self.cache.slot_layers:
                layer.widen(theirs - width)
            width = theirs
        incoming = [i for i, r in enumerate(other.slots) if r is not None]
        free = [i for i, r in enumerate(self.slots) if r is None][: len(incoming)]
        extra = len(incoming) - len(free)
        if extra:  # new slots at the end: one copy of the cache, as a concatenation would
            self.mask = torch.cat([self.mask, self.mask.new_zeros((extra, width))])
            self.last = torch.cat([self.last, self.last.new_zeros(extra)])
            for layer in self.cache.slot_layers:
                layer.add_slots(extra)
            free += list(range(len(self.slots), len(self.slots) + extra))
            self.slots += [None] * extra
        device = self.mask.device
        slots = torch.tensor(free, dtype=torch.long, device=device)
        source = torch.tensor(incoming, dtype=torch.long, device=device)
        self.mask[slots] = 0
        self.mask[slots, width - theirs :] = other.mask[source]
        self.last[slots] = other.last[source]
        for mine, new in zip(self.cache.slot_layers, other.cache.slot_layers, strict=True):
            mine.put(slots, new.keys[source], new.values[source])
        for slot, i in zip(free, incoming, strict=True):
            self.slots[slot] = other.slots[i]


def sample(logits: Any, rows: list[Row]) -> tuple[Any, list[int]]:
    """One token per row, as a tensor on the logits' device and as a list (one
    host sync): argmax for greedy rows; temperature, top-k and top-p for
    sampling rows, computed for the whole batch at once from one host-to-device
    copy of the rows' settings. Seeded rows draw from their own generator (one
    multinomial each: a seed's text must not depend on its neighbours), the
    others in one multinomial from the global RNG. EOS is masked for rows that
    ignore it, as generate()'s min_new_tokens does."""
    import torch

    logits = logits.float()
    eos_id = rows[0].tokenizer.eos_token_id if rows else None
    banned = eos_id is not None and any(r.eos is None for r in rows)
    sampled = any(r.temperature > 0 for r in rows)
    if not banned and not sampled:
        tokens = logits.argmax(dim=-1)
        return tokens, tokens.tolist()
    # Per row: temperature (1 for greedy rows, whose draw is discarded), top-k, top-p, greedy, EOS banned.
    spec = torch.tensor(
        [[r.temperature or 1.0, r.top_k, r.top_p, r.temperature <= 0, r.eos is None] for r in rows],
        dtype=torch.float32,
    ).to(logits.device)
    if banned:
        logits[:, eos_id] = logits[:, eos_id].masked_fill(spec[:, 4] > 0, -float("inf"))
    tokens = logits.argmax(dim=-1)
    if not sampled:
        return tokens, tokens.tolist()
    scores = logits / spec[:, :1]
    ks = [min(r.top_k, scores.shape[-1]) if r.temperature > 0 else 0 for r in rows]
    if any(ks):  # each row's k-th best score; rows without top-k keep everything
        k = spec[:, 1:2].long().clamp(1, scores.shape[-1])
        kth = torch.topk(scores, max(ks), dim=-1).values.gather(1, k.clamp(max=max(ks)) - 1)
        kth = kth.masked_fill(spec[:, 1:2] <= 0, -float("inf"))
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if any(0 < r.top_p < 1 for r in rows if r.temperature > 0):  # the smallest set reaching each row's top_p
        top_p = spec[:, 2:3]
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = ((probs.cumsum(-1) - probs) > top_p) & (top_p > 0) & (top_p < 1)
        scores = scores.scatter(1, order, ordered.masked_fill(drop, -float("inf")))
    probs = scores.softmax(-1)
    draws = torch.multinomial(probs, 1).squeeze(1)  # the global RNG, for unseeded rows
    for i, row in enumerate(rows):
        if row.generator is not None and row.temperature > 0:
            draws[i] = torch.multinomial(probs[i], 1, generator=row.generator)[0]
    tokens = torch.where(spec[:, 3] > 0, tokens, draws)
    return tokens, tokens.tolist()


class ContinuousBatcher:
    """The waiting queue and running batch of one base model's generations."""

    def __init__(
        self,
        name: str,
        forward: Forward,
        device: Any,
        pad_id: int,
        max_positions: int | None,
        admission: Admission,
        metrics: InferenceMetrics,
        max_rows: int,
        max_tokens: int,
        one_adapter_at_a_time: Callable[[], bool] = lambda: False,
        max_waiting_steps: int = 0,
    ) -> None:
        self.name = name
        self.forward = forward
        self.device = device
        self.pad_id = pad_id
        self.max_positions = max_positions
        self.admission = admission
        self.metrics = metrics
        self.max_rows = max(1, max_rows)
        self.max_tokens = max(1, max_tokens)
        self.one_adapter = one_adapter_at_a_time  # mixed-adapter steps unsupported on this model
        self.waiting: deque[Pending] = deque()
        self.running: Running | None = None
        self.cond = threading.Condition()
        self.closed = False
        self.steps = 0  # decoding steps run (tests and the bench read it)
        self.compactions = 0  # copies of the cache to drop free slots (likewise)
        # TGI's max_waiting_tokens: while a batch runs, new arrivals are prefilled
        # after at most this many decoding steps (0: at once), or sooner once they
        # could join and are a third as many as the running rows: fewer, fuller prefills.
        self.max_waiting_steps = max(0, max_waiting_steps)
        self._since_prefill = 0
        self.thread = threading.Thread(target=self._loop, name=f"generate-{name}", daemon=True)
        self.thread.start()

    # ---- the RPC side ----
    def submit(self, work: Work, rows: list[Row]) -> None:
        if work.expired():
            self.metrics.dropped.inc(reason="deadline")
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        if self.max_positions is not None:
            for row in rows:  # the model's context bounds the prompt and what follows it
                row.prompt = row.prompt[-(self.max_positions - 1) :]
                row.max_new = max(1, min(row.max_new, self.max_positions - len(row.prompt)))
        pending = Pending(work, deque(rows), [None] * len(rows), len(rows))
        with self.cond:
            if self.closed:
                raise Unavailable("the base model was just unloaded; retry", reason="BASE_MODEL_UNLOADED")
            self.admission.acquire()
            self.waiting.append(pending)
            self.cond.notify()

    def abandon(self, work: Work) -> None:
        """The RPC ended: a waiting request leaves the queue now, a running one
        at the next step (the loop sees `cancelled`)."""
        work.cancelled.set()
        if work.future.done():
            return
        with self.cond:
            self.cond.notify()  # the loop may be idle-waiting on a queue that held only this request

    def close(self) -> None:
        with self.cond:
            self.closed = True
            waiting = list(self.waiting)
            self.waiting.clear()
            self.admission.release(len(waiting))
            self.cond.notify_all()
        for pending in waiting:
            pending.work.fail(Unavailable("the base model was unloaded while the request waited; retry"))

    # ---- the loop ----
    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.cond:
                    while not self.closed and not self.waiting and self.running is None:
                        self.cond.wait()
                    if self.closed:
                        break
                try:
                    self._iterate()
                except Exception as exc:  # the RPCs map it to INTERNAL (or its own status); details stay here
                    if not isinstance(exc, TextftError):
                        log.exception("generation step failed on %s", self.name)
                    self._fail_all(exc)
        if self.running is not None:
            self._fail_all(Unavailable("the base model was unloaded during generation; retry"))

    def _fail_all(self, exc: BaseException) -> None:
        works = {r.work for r in self.running.rows} if self.running is not None else set()
        self.running = None
        for work in works:
            work.fail(exc)
        self._export()

    def _iterate(self) -> None:
        self._drop_gone()
        new = self._admit() if self._prefill_now() else []
        if new:
            self._prefill(new)  # new rows take the free slots first
        if self.running is not None and self.running.rows:
            if self.running.sparse:
                self.running.compact()
                self.compactions += 1
            self._step()
        self._export()

    def _prefill_now(self) -> bool:
        """A prefill is a forward of its own, and on a small model most of a
        forward's cost is fixed: arrivals are prefilled together once the rows
        that could join now (those waiting, up to the free rows) are a third as
        many as those running, or after max_waiting_steps steps. Counting
        waiting rows alone, a full batch prefilled every step or two for the
        two or three rows that had just left it (measured: 76 prefills to 130
        decoding steps, 38% of the loop's time). A third and a half gave the
        same tokens/s; a third the lower TTFT p99 (bench/bench_inference.py)."""
        running = self.running
        if running is None or not running.rows or self._since_prefill >= self.max_waiting_steps:
            return True
        with self.cond:
            waiting = sum(len(p.rows) for p in self.waiting)
        joinable = min(waiting, self.max_rows - len(running.rows))
        return joinable > 0 and 3 * joinable >= len(running.rows)

    def _export(self) -> None:
        rows = len(self.running.rows) if self.running is not None else 0
        self.metrics.running_rows.set(rows, base=self.name)
        self.metrics.tokens_in_flight.set(self.running.tokens if self.running is not None else 0, base=self.name)

    def _drop_gone(self) -> None:
        """Rows whose request was cancelled or timed out leave the batch: no step is spent on them."""
        running = self.running
        if running is None:
            return
        now = time.monotonic()
        gone = {r.work for r in running.rows if r.work.cancelled.is_set() or r.work.expired(now)}
        if not gone:
            return
        for work in gone:
            reason = "deadline" if work.expired(now) else "cancelled"
            self._end_stream(work, reason)
            work.fail(DeadlineExceeded("deadline exceeded") if reason == "deadline" else Cancelled("cancelled"))
        self._leave([i for i, r in enumerate(running.slots) if r is not None and r.work in gone])

    def _leave(self, slots: list[int]) -> None:
        """Rows in `slots` leave the running batch."""
        assert self.running is not None
        if not slots:
            return
        if len(slots) == len(self.running.slots) - self.running.free:
            self.running = None
        else:
            self.running.leave(slots)

    def _admit(self) -> list[Row]:
        """Waiting rows that fit the budget, first come first served (the head
        is never overtaken, so a big request cannot be starved)."""
        now = time.monotonic()
        rows = len(self.running.rows) if self.running is not None else 0
        tokens = self.running.tokens if self.running is not None else 0
        adapters = {r.adapter_name for r in self.running.rows} if self.running is not None else set()
        taken: list[Row] = []
        with self.cond:
            while self.waiting:
                pending = self.waiting[0]
                work = pending.work
                if work.cancelled.is_set() or work.expired(now):
                    # Dropped before (more) compute is spent on it; rows already running leave at the next step.
                    self.waiting.popleft()
                    self.admission.release()
                    reason = "deadline" if work.expired(now) else "cancelled"
                    if len(pending.rows) == len(pending.results):
                        self.metrics.dropped.inc(reason=reason)
                    expired = DeadlineExceeded("deadline exceeded while queued")
                    work.fail(expired if reason == "deadline" else Cancelled("cancelled"))
                    continue
                row = pending.rows[0]
                if self.one_adapter():
                    names = adapters | {r.adapter_name for r in taken}
                    if names and row.adapter_name not in names:
                        break
                empty = rows == 0 and not taken
                if not empty and (rows + 1 > self.max_rows or tokens + row.cost > self.max_tokens):
                    break
                pending.rows.popleft()
                row.pending = pending
                taken.append(row)
                rows, tokens = rows + 1, tokens + row.cost
                if not pending.rows:
                    self.waiting.popleft()
                    self.admission.release()
        return taken

    def _prefill(self, rows: list[Row]) -> None:
        import torch

        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt, dtype=torch.long)
            mask[i, width - len(row.prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = SlotCache()
        names = [r.adapter_name for r in rows]
        self._since_prefill = 0
        logits = self.forward(names, ids, mask, positions, cache)
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.batch_requests.observe(len({id(r.work) for r in rows}))
        self.metrics.batch_adapters.observe(len(set(names)))
        self.metrics.prefill_tokens.inc(sum(len(r.prompt) for r in rows))
        batch = Running(rows, None, mask, cache)
        batch.last = self._take_tokens(batch, logits)
        done = [i for i, r in enumerate(rows) if r.done]
        if len(done) == len(rows):
            return
        for i in done:
            batch.slots[i] = None
        if self.running is None:
            batch.compact()
            self.running = batch
        else:
            self.running.join(batch)

    def _step(self) -> None:
        import torch

        running = self.running
        assert running is not None
        running.mask = torch.cat([running.mask, running.mask.new_ones((running.mask.shape[0], 1))], dim=1)
        positions = running.mask.sum(-1, keepdim=True) - 1
        names = running.names()
        logits = self.forward(names, running.last.unsqueeze(1), running.mask, positions, running.cache)
        self.steps += 1
        self._since_prefill += 1
        self.metrics.decode_steps.inc()
        if len(set(names)) > 1:
            self.metrics.mixed_batches.inc()
        running.last = self._take_tokens(running, logits)
        self._leave([i for i, r in enumerate(running.slots) if r is not None and r.done])

    def _take_tokens(self, batch: Running, logits: Any) -> Any:
        """Samples a token per running row (free slots are skipped), hands text
        to streams, completes finished rows; returns every slot's next input
        token (device)."""
        import torch

        rows = batch.rows
        if len(rows) == len(batch.slots):
            last, tokens = sample(logits, rows)
        else:
            live = torch.tensor(
                [i for i, r in enumerate(batch.slots) if r is not None], dtype=torch.long, device=logits.device
            )
            drawn, tokens = sample(logits[live], rows)
            last = torch.full((len(batch.slots),), self.pad_id, dtype=drawn.dtype, device=drawn.device)
            last[live] = drawn
        kept = 0
        for row, token in zip(rows, tokens, strict=True):
            before = len(row.ids)
            delta = row.push(token)
            kept += len(row.ids) - before  # an EOS that ends a row is not a generated token
            work = row.work
            if work.events is not None and delta:
                work.events.put(("text", delta))
            if row.done:
                self._finish(row)
        self.metrics.generated_tokens.inc(kept)
        return last

    def _finish(self, row: Row) -> None:
        work = row.work
        pending = row.pending
        assert pending is not None
        if work.kind == STREAM:
            outcome = {Gen.FINISH_REASON_EOS: "eos", Gen.FINISH_REASON_STOP: "stopped"}.get(row.finish, "completed")
            self.metrics.streams.inc(outcome=outcome)
            assert work.events is not None
            work.events.put(("end", (row.finish, len(row.ids))))
            work.succeed(len(row.ids))
            return
        pending.results[row.index] = inference_pb2.Prediction(
            generation=Gen(text=row.text, generated_tokens=len(row.ids), finish_reason=row.finish)
        )
        pending.left -= 1
        if pending.left == 0:
            work.succeed(pending.results)

    def _end_stream(self, work: Work, reason: str) -> None:
        if work.kind == STREAM:
            self.metrics.streams.inc(outcome=reason)
