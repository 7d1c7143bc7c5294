"""The inference paths on a CUDA device (skipped without one): device and
dtype choice, mixed-adapter outputs against one-by-one forwards in float32
and bfloat16, and continuous batching against one-by-one greedy generation.
Designed for a GPU node (`make bench-gpu` runs them); not run on CPU CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_inference_continuous import PROMPTS, Loop, Model, expected, texts_of

from textft_services.common import devices
from textft_services.common.tinymodels import build_tiny_gpt_neo

pytestmark = [pytest.mark.unit, pytest.mark.gpu]  # conftest skips gpu tests where torch sees no CUDA


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt_neo(tmp_path_factory.mktemp("gpu") / "base", corpus=PROMPTS)


def test_auto_placement_picks_the_gpu_and_a_half_dtype() -> None:
    placement = devices.place("auto", "auto")
    assert placement.device.type == "cuda"
    assert placement.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert devices.place("cuda:0", "float32").dtype == torch.float32
    with pytest.raises(ValueError):
        devices.place(f"cuda:{torch.cuda.device_count()}", "auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_adapter_logits_equal_one_by_one_on_cuda(base_dir: Path, dtype: torch.dtype) -> None:
    model = Model(base_dir, device="cuda", dtype=dtype)
    names = ["a0", "a1", "a2", "a1", "a0", "a2"]
    tokenizer = model.tokenizer
    tokenizer.padding_side = "right"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    with torch.inference_mode():
        with model.base.mixer.rows(names):
            mixed = model.peft(**batch).logits.float()
        for i, name in enumerate(names):
            model.peft.set_adapter(name)
            one = model.peft(**{k: v[i : i + 1] for k, v in batch.items()}).logits.float()
            n = int(batch["attention_mask"][i].sum())
            # Tolerances of the dtype (torch.testing defaults), scaled for logits summed over the hidden size.
            rtol, atol = (1.3e-6, 1e-5) if dtype == torch.float32 else (1.6e-2, 1e-5)
            torch.testing.assert_close(mixed[i, :n], one[0, :n], rtol=rtol * 8, atol=atol + rtol * 8)


def test_continuous_batching_on_cuda_equals_one_by_one_greedy(base_dir: Path) -> None:
    model = Model(base_dir, device="cuda", dtype=torch.float32)
    loop = Loop(model)
    try:
        plan = [("a0", PROMPTS[0], 12), ("a1", PROMPTS[1], 5), ("a2", PROMPTS[2], 9), ("a1", PROMPTS[3], 10)]
        late = loop.work("a0", [PROMPTS[4]], max_new_tokens=8)
        loop.hooks[3] = lambda: loop.submit(late)
        works = [loop.submit(loop.work(a, [p], max_new_tokens=n)) for a, p, n in plan]
        for (adapter, prompt, n), w in zip([*plan, ("a0", PROMPTS[4], 8)], [*works, late], strict=True):
            assert texts_of(w) == [expected(model, adapter, prompt, n)]
        stacks = model.base.mixer._padded.values()  # the gathered mixed-adapter path ran ...
        assert stacks and all(a.device.type == "cuda" for _, a, _ in stacks)  # ... with its stacks on the GPU
    finally:
        loop.batcher.close()


def test_continuous_batching_in_bfloat16_runs_and_tracks_float32(base_dir: Path) -> None:
    """Every bf16 row runs to its length; a padded mixed-adapter prefill in
    bf16 gives float32's logits within bf16's tolerance (a near-tie argmax
    may flip, so tokens are not compared)."""
    from transformers import DynamicCache

    fp32 = Model(base_dir, device="cuda", dtype=torch.float32)
    model = Model(base_dir, device="cuda", dtype=torch.bfloat16)
    loop = Loop(model)
    try:
        works = [
            loop.submit(loop.work(f"a{i % 3}", [p], max_new_tokens=6, ignore_eos=True)) for i, p in enumerate(PROMPTS)
        ]
        assert [texts_of(w)[0][1] for w in works] == [6] * len(PROMPTS)
    finally:
        loop.batcher.close()
    names = [f"a{i % 3}" for i in range(len(PROMPTS))]
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True).to("cuda")
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        args = (batch["input_ids"], batch["attention_mask"], positions)
        half = model.engine._step(model.base, names, *args, DynamicCache()).float()
        full = fp32.engine._step(fp32.base, names, *args, DynamicCache()).float()
    # bf16 keeps 8 bits of mantissa: a few of its eps at the logits' magnitude (errors add up over the layers).
    atol = 4 * torch.finfo(torch.bfloat16).eps * full.abs().max().item()
    torch.testing.assert_close(half, full, rtol=1.6e-2, atol=atol)
