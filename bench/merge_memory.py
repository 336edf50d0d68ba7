"""Benchmark: peak memory of merging LoRA adapters, the old way beside today's.

Builds a random Llama of ``--hidden``/``--layers`` (about 0.85 GB in float32 by default) with
one LoRA adapter on q/v, as an imported RaDialog has, and saves both. Then, each in a fresh
process so that the peaks do not mix, it loads the model with its adapter
(:meth:`inference.llm.LanguageModel.load`) and merges:

* ``copy`` (the baseline, the node's merge before issue 20): a deep copy of the peft model per
  adapter, merged with ``merge_and_unload``; the original stays loaded;
* ``in place`` (today, :meth:`LanguageModel.merge_adapters` with one adapter in use): the
  adapter is merged into the loaded weights.

It prints each run's peak resident memory during the merge above the loaded model (resident
size sampled every 2 ms from ``/proc/self/statm`` while merging, minus the resident size with
every weight touched before it), in units of the model's own weight bytes, and the ratio of
the two. One full copy of the model is 1.0.

Usage::

    python bench/merge_memory.py [--hidden 1024] [--layers 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import copy, json, resource, sys, threading, time
import torch
from inference.llm import LanguageModel

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

mode, base, adapter = sys.argv[1], sys.argv[2], sys.argv[3]
llm = LanguageModel.load(base, base, {"instruct": adapter}, device="cpu", dtype="float32")
weights = llm.weight_bytes
with torch.no_grad():  # every weight resident before the baseline is read
    for p in llm.model.parameters():
        p.sum()
before = rss()
peak = [before]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
if mode == "copy":
    twin = copy.deepcopy(llm.model)
    twin.set_adapter("instruct")
    merged = twin.merge_and_unload(adapter_names=["instruct"])
else:
    llm.merge_adapters(used=["instruct"])
done.set()
sampler.join()
peak[0] = max(peak[0], rss())
print(json.dumps({"weights": weights, "before": before, "peak": peak[0]}))
"""

def _build(directory: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from inference.tiny import train_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    base = directory / "base"
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(model, lora, adapter_name="instruct")
    adapters = directory / "adapters"
    peft_model.save_pretrained(str(adapters))
    return base, adapters / "instruct" if (adapters / "instruct").is_dir() else adapters


def _run(mode: str, base: Path, adapter: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(base), str(adapter)],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    extra = data["peak"] - data["before"]
    return {"weights_gb": data["weights"] / 1e9, "extra_copies": extra / data["weights"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = _build(Path(tmp), args.hidden, args.layers)
        runs: dict[str, list[float]] = {"copy": [], "in place": []}
        weights = 0.0
        for round_ in range(args.rounds):
            for mode in runs:
                figures = _run("copy" if mode == "copy" else "in-place", base, adapter)
                weights = figures["weights_gb"]
                runs[mode].append(figures["extra_copies"])
                print(f"round {round_ + 1} {mode:>8}: peak above the loaded model "
                      f"{figures['extra_copies']:.2f} x the weights ({weights:.2f} GB)")
    old, new = statistics.median(runs["copy"]), statistics.median(runs["in place"])
    print(f"median extra peak: copy {old:.2f}, in place {new:.2f} (model weights "
          f"{weights:.2f} GB); in place / copy = {new / old:.3f}")


if __name__ == "__main__":
    main()
