"""GPU generation throughput and MFU of the continuous batcher on a
GPT-Neo-125M-shaped LoRA model built offline (random weights: speed does not
depend on them), in bf16 where supported. Skips cleanly without CUDA.

    make bench-gpu                                     # python -m bench gpu
    python -m bench gpu --rows=64 --adapters=16 --new-tokens=128

Cases, interleaved: the continuous batcher with every row on one adapter, with
rows spread over N adapters (mixed.py's joined LoRA matmuls), and the static
path (one generate() per batch of the same rows). MFU counts 2 x parameters
(including the LM head, excluding position embeddings) FLOPs per generated or
prefilled token plus attention (4 x layers x hidden x context per token),
against the GPU's dense bf16 peak (a table by device name, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def _peak(name: str, override: float) -> float:
    if override > 0:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return float("nan")


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench gpu")
    parser.add_argument("--rows", type=int, default=64, help="requests in flight")
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench gpu: skipped (no CUDA device)")
        return {"skipped": "no CUDA device"}
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    from textft.v1 import inference_pb2
    from textft_services.common import devices
    from textft_services.common.config import Settings
    from textft_services.common.tinymodels import build_tiny_gpt_neo
    from textft_services.inference.batcher import GENERATE, STREAM, Admission, Lane
    from textft_services.inference.continuous import ContinuousBatcher
    from textft_services.inference.engine import Adapter, Base, Engine
    from textft_services.inference.metrics import InferenceMetrics

    placement = devices.place("auto", "auto")
    device, dtype = placement.device, placement.dtype
    with tempfile.TemporaryDirectory(prefix="textft-bench-gpu-") as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_gpt_neo(Path(tmp) / "tok")))
    tokenizer.pad_token = tokenizer.eos_token
    config = GPTNeoConfig(  # EleutherAI/gpt-neo-125m's shape
        vocab_size=50257,
        max_position_embeddings=2048,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        attention_types=[[["global", "local"], 6]],
        window_size=256,
        intermediate_size=3072,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(config).to(device=device, dtype=dtype).eval()
    # Matmul parameters per token: all but the position embeddings, and the tied LM head counted once as a matmul.
    params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    params_with_head = params  # wte is gathered, not multiplied; the tied head multiplies the same weights
    names = [f"a{i}" for i in range(args.adapters)]
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft: Any = get_peft_model(model, lora, adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, lora)
    peft.to(device).eval()
    engine = Engine(Settings(inference_max_batch_size=args.rows), store=None, trainer=object())  # type: ignore[arg-type]
    base = Base(("gpu", "TEXT_GENERATION", 0), peft, tokenizer, device=device)
    base.mixer.install(peft)
    adapters = {n: Adapter(n, n, base, "TEXT_GENERATION", [], False, "{text}\n", 512, 0, 0.0, "gpu") for n in names}
    params_pb = inference_pb2.GenerationParameters(max_new_tokens=args.new_tokens, ignore_eos=True)
    prompts = [f"question {i}: the quick brown fox jumps over the lazy dog" for i in range(args.rows)]
    prompt_tokens = sum(len(tokenizer(f"{p}\n")["input_ids"]) for p in prompts)

    def run(mode: str, spread: int) -> float:
        metrics = InferenceMetrics()
        done = threading.Event()
        left = [args.rows]

        def finished(_: Any) -> None:
            left[0] -= 1
            if left[0] == 0:
                done.set()

        if mode == "static":
            lane = Lane(
                "gpu", lambda works: engine._run(base, works), Admission(10_000, metrics), metrics, 50, args.rows
            )
            runner: Any = lane
        else:
            runner = ContinuousBatcher(
                "gpu",
                lambda *a: engine._step(base, *a),
                device,
                tokenizer.pad_token_id,
                config.max_position_embeddings,
                Admission(10_000, metrics),
                metrics,
                args.rows,
                args.rows * (args.new_tokens + 64),
            )
        torch.cuda.synchronize()
        started = time.perf_counter()
        try:
            for i, prompt in enumerate(prompts):
                adapter = adapters[names[i % spread]]
                if mode == "static":
                    work = engine._work(adapter, GENERATE, [prompt], params_pb, None)
                    work.key = "all"  # one batch: the static path at its best
                    work.future.add_done_callback(finished)
                    runner.submit(work)
                else:
                    work = engine._work(adapter, STREAM, [prompt], params_pb, None)
                    work.future.add_done_callback(finished)
                    runner.submit(work, engine._rows(work))
            if not done.wait(600):
                raise RuntimeError(f"{mode}: not done after 600 s")
            torch.cuda.synchronize()
            return time.perf_counter() - started
        finally:
            runner.close()

    cases = [("continuous", 1), ("continuous", args.adapters), ("static", 1)]
    run("continuous", 1)  # warm-up (CUDA kernels, allocator)
    run("static", 1)
    times: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            times[case].append(run(*case))
    tokens = args.rows * args.new_tokens
    context = statistics.mean(len(tokenizer(f"{p}\n")["input_ids"]) for p in prompts) + args.new_tokens / 2
    flops_per_token = 2 * params_with_head + 4 * config.num_layers * config.hidden_size * context
    peak = _peak(torch.cuda.get_device_name(device), args.peak_tflops)
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device),
        "dtype": str(dtype),
        "parameters_m": round(params_with_head / 1e6, 1),
        "rows": args.rows,
        "adapters": args.adapters,
        "new_tokens": args.new_tokens,
        "peak_tflops": peak,
    }
    for (mode, spread), ts in times.items():
        seconds = statistics.median(ts)
        key = f"{mode}_{spread}"
        figures[f"{key}_tok_s"] = round(tokens / seconds, 1)
        figures[f"{key}_mfu"] = round((tokens + prompt_tokens) * flops_per_token / seconds / (peak * 1e12), 4)
    figures["mixed_vs_one_adapter"] = round(
        figures[f"continuous_{args.adapters}_tok_s"] / figures["continuous_1_tok_s"], 2
    )
    figures["continuous_vs_static"] = round(figures["continuous_1_tok_s"] / figures["static_1_tok_s"], 2)
    for key, value in figures.items():
        print(f"{key:<28} {value}")
    sys.stdout.flush()
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
