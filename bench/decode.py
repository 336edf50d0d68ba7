"""Benchmark: report decoding speed, two ways of running the LLM side by side.

``--compare merge`` (default) loads a bundle twice, once as the product runs it
(``merge_adapters=True``: each adapter folded into its own copy of the LLM weights) and once
with peft's unmerged adapters (two small LoRA matmuls beside every adapted Linear).
``--compare dtype`` loads it in float32 and in bfloat16 (both merged). Both time greedy
generation of the same report prompt with the ``report`` adapter, interleaved over
``--rounds`` rounds. Each run generates exactly ``--tokens`` tokens (EOS is ignored), so both
sides do the same work. Prints milliseconds per token for each round and the ratio of the
medians, and how many generated tokens the two sides share.

Usage::

    python bench/decode.py [--bundle models/demo] [--compare merge|dtype] [--tokens 60]
        [--rounds 3] [--image FILE]

The image defaults to pydicom-data's chest CR (``RG1_UNCR.dcm``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from inference import ChestXrayVLM, RuntimeOptions


def _chest_cr() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise SystemExit("pydicom-data's RG1_UNCR.dcm is missing: pass --image")
    return Path(str(path))


def _time_per_token(model: ChestXrayVLM, image: Path, tokens: int) -> tuple[float, torch.Tensor]:
    analysis = model.analyse([image])
    batch = model._batch([model._report_prompt(analysis, None)], [analysis])
    eos = model.llm.stop_token_ids()
    with model.llm.adapter("report") as runner, torch.inference_mode():
        start = time.perf_counter()
        ids = runner.generate(  # type: ignore[operator]
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # the same work on both sides
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=model.llm.pad_token_id(),
        )
        seconds = time.perf_counter() - start
    return seconds / ids.shape[1], ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/demo"))
    parser.add_argument("--compare", choices=("merge", "dtype"), default="merge")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    image = args.image or _chest_cr()
    sides = {
        "merge": {"merged": RuntimeOptions(device="cpu"),
                  "unmerged": RuntimeOptions(device="cpu", merge_adapters=False)},
        "dtype": {"bfloat16": RuntimeOptions(device="cpu", dtype="bfloat16"),
                  "float32": RuntimeOptions(device="cpu", dtype="float32")},
    }[args.compare]
    models = {name: ChestXrayVLM.from_bundle(args.bundle, o) for name, o in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, torch.Tensor] = {}
    for model in models.values():
        _time_per_token(model, image, 4)  # warm-up
    for round_ in range(args.rounds):
        for name, model in models.items():
            per_token, ids = _time_per_token(model, image, args.tokens)
            times[name].append(per_token)
            outputs[name] = ids
            print(f"round {round_ + 1} {name:9s} {1000 * per_token:7.1f} ms/token")
    first, second = models
    first_time, second_time = statistics.median(times[first]), statistics.median(times[second])
    print(f"median: {first} {1000 * first_time:.1f} ms/token, "
          f"{second} {1000 * second_time:.1f} ms/token")
    print(f"{first} / {second} time per token: {first_time / second_time:.2f}x")
    shared = int((outputs[first] == outputs[second]).cumprod(dim=1).sum())
    print(f"tokens shared from the start: {shared} of {outputs[second].shape[1]}")


if __name__ == "__main__":
    main()
