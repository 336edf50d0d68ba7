"""GPU benchmark of issue 21: decoding throughput of a RaDialog-shaped LLM against the
memory-bandwidth bound, by batch size and decoding path.

The LLM is Vicuna-7B v1.3's architecture (RaDialog's base; ``--size tiny`` for a smoke run on
a CPU) in bfloat16 with random weights, built with transformers only: the benchmark needs no
files and none of the node's other dependencies, so it runs on a bare GPU machine that has
torch and transformers. Each prompt is what the node sends: 32 image-token embeddings among
about 100 text tokens, given as ``inputs_embeds``, left-padded to the longest in the batch.
Every sequence is made to run exactly ``--tokens`` new tokens (random weights would stop at
random places).

Paths, each at batch sizes ``--batches`` (default 1, 8, 32, 64):

* ``generate``: ``generate(inputs_embeds=...)`` with the dynamic KV cache, as the node runs;
* ``static``: the same with ``cache_implementation="static"``, which transformers compiles
  with CUDA graphs on a GPU (``inference.kv_cache = "static"`` in the node);
* ``generate_batch``: transformers' continuous batching (paged attention) on token-id prompts
  of the same lengths. It takes token ids only, so the node cannot hand it image embeddings:
  recorded to show what the engine would give, not used by the node.

For each: tokens per second, reports per hour (``--tokens`` tokens a report) and the
time per decoding step. The floor per step is the bf16 weight bytes divided by the card's
memory bandwidth (measured here with a device-to-device copy, and the data-sheet figure where
the card is known); ``bound_fraction`` = floor / measured step time at batch 1 (goal >= 0.7),
``speedup_vs_batch1`` = throughput / batch-1 throughput of the same path (goal at 64: >= 20).

Usage (the lent GPU; writes figures.json and figures.md under --out)::

    python bench/gpu_serving.py --out $OUT [--tokens 300] [--batches 1 8 32 64]
    python bench/gpu_serving.py --out /tmp/s --size tiny --device cpu --tokens 8 --batches 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

#: Vicuna-7B v1.3 (RaDialog's base LLM), as its config.json gives it.
VICUNA_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
TINY = dict(VICUNA_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4)
#: Data-sheet memory bandwidth, bytes per second (SXM parts).
DATASHEET_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
IMAGE_TOKENS = 32
#: Text tokens around the image in RaDialog's report prompt (system, findings, instruction).
TEXT_TOKENS = (96, 112)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_bandwidth(device: torch.device, megabytes: int = 2048) -> float | None:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    if device.type != "cuda":
        return None
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    _sync(device)
    started = time.perf_counter()
    rounds = 10
    for _ in range(rounds):
        target.copy_(source)
    _sync(device)
    return 2 * source.numel() * rounds / (time.perf_counter() - started)


def build_model(size: str, device: torch.device) -> LlamaForCausalLM:
    """The LLM with random weights, in bf16 on a GPU (float32 on a CPU)."""
    config = LlamaConfig(**(VICUNA_7B if size == "full" else TINY))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def prompts(model: LlamaForCausalLM, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(inputs_embeds, attention_mask)`` like the node's report prompts."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = model.get_input_embeddings()
    lengths = torch.randint(*TEXT_TOKENS, (batch,), generator=generator) + IMAGE_TOKENS
    longest = int(lengths.max())
    ids = torch.randint(3, embeddings.num_embeddings, (batch, longest), generator=generator)
    mask = torch.zeros(batch, longest, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        mask[row, longest - length:] = 1
    device = embeddings.weight.device
    with torch.no_grad():
        embeds = embeddings(ids.to(device))
    return embeds, mask.to(device)


def time_generate(
    model: LlamaForCausalLM, batch: int, tokens: int, **options: Any
) -> float:
    """Seconds for one batched generation of exactly ``tokens`` new tokens."""
    embeds, mask = prompts(model, batch, seed=batch)
    device = embeds.device
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                       **options)  # warm-up (and compile, for the static cache)
        _sync(device)
        started = time.perf_counter()
        out = model.generate(inputs_embeds=embeds, attention_mask=mask,
                             generation_config=config, **options)
        _sync(device)
    if out.shape[1] != tokens:
        raise RuntimeError(f"generated {out.shape[1]} tokens, not {tokens}")
    return time.perf_counter() - started


def time_generate_batch(model: LlamaForCausalLM, batch: int, tokens: int) -> float:
    """Seconds for continuous batching of ``batch`` token-id prompts of the same lengths."""
    embeds, mask = prompts(model, batch, seed=batch)
    vocab = model.config.vocab_size
    inputs = [torch.randint(3, vocab, (int(m.sum()),)).tolist() for m in mask]
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    device = embeds.device
    model.generate_batch(inputs=inputs, generation_config=config)  # warm-up
    _sync(device)
    started = time.perf_counter()
    results = model.generate_batch(inputs=inputs, generation_config=config)
    _sync(device)
    elapsed = time.perf_counter() - started
    lengths = {len(r.generated_tokens) for r in results.values()}
    if lengths != {tokens}:
        raise RuntimeError(f"generate_batch gave {sorted(lengths)} new tokens, not {tokens}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--paths", nargs="+", default=["generate", "static", "generate_batch"])
    args = parser.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    model = build_model(args.size, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    figures: dict[str, Any] = {
        "size": args.size, "device": str(device), "tokens": args.tokens,
        "torch": torch.__version__, "build_s": round(time.perf_counter() - started, 1),
        "weight_bytes": weight_bytes, "dtype": str(next(model.parameters()).dtype),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    figures["gpu"] = name
    measured = measured_bandwidth(device)
    sheet = next((v for k, v in DATASHEET_BANDWIDTH.items() if k in name), None)
    figures["bandwidth_measured"] = measured
    figures["bandwidth_datasheet"] = sheet
    bandwidth = sheet or measured
    floor = weight_bytes / bandwidth if bandwidth else None
    figures["floor_step_s"] = floor

    runs: dict[str, Callable[[int], float]] = {
        "generate": lambda b: time_generate(model, b, args.tokens),
        "static": lambda b: time_generate(model, b, args.tokens, cache_implementation="static"),
        "generate_batch": lambda b: time_generate_batch(model, b, args.tokens),
    }
    rows = []
    for path in args.paths:
        base: float | None = None
        for batch in args.batches:
            try:
                seconds = runs[path](batch)
            except Exception as exc:  # one path failing must not lose the others' figures
                rows.append({"path": path, "batch": batch, "error": repr(exc)[:300]})
                print(f"{path:15s} batch {batch:3d}  failed: {exc!r}"[:200], flush=True)
                continue
            throughput = batch * args.tokens / seconds
            base = base if base is not None else (throughput if batch == 1 else None)
            step = seconds / args.tokens
            row = {
                "path": path, "batch": batch, "seconds": round(seconds, 3),
                "tokens_per_s": round(throughput, 1),
                "reports_per_hour": round(3600 * batch / seconds, 1),
                "step_ms": round(1000 * step, 2),
                "bound_fraction": round(floor / step, 3) if floor and batch == 1 else None,
                "speedup_vs_batch1": round(throughput / base, 2) if base else None,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    figures["runs"] = rows
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    lines = [f"# {name}, {figures['dtype']}, {weight_bytes / 1e9:.2f} GB of weights, "
             f"floor {1000 * floor:.2f} ms/step" if floor else f"# {name}",
             "", "| path | batch | tokens/s | reports/h | ms/step | of bound | x batch 1 |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['path']} | {row['batch']} | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['path']} | {row['batch']} | {row['tokens_per_s']} | "
            f"{row['reports_per_hour']} | {row['step_ms']} | {row['bound_fraction'] or ''} | "
            f"{row['speedup_vs_batch1'] or ''} |"
        )
    (args.out / "figures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
