"""Benchmark: report decoding speed, two ways of running the LLM side by side.

``--compare merge`` (default) loads a bundle twice, once as the product runs it
(``merge_adapters=True``: each adapter folded into its own copy of the LLM weights) and once
with peft's unmerged adapters (two small LoRA matmuls beside every adapted Linear).
``--compare dtype`` loads it in float32 and in bfloat16 (both merged). ``--compare lookup``
loads it with lookup decoding (``lookup_tokens=8``: n-gram drafts from the bundle's table,
checked in one pass) and with plain greedy decoding (``lookup_tokens=0``). All time greedy
generation of the same report prompt with the ``report`` adapter, interleaved over
``--rounds`` rounds. Each run generates exactly ``--tokens`` tokens (EOS is ignored), so both
sides do the same work; with ``--until-eos`` each run writes the whole report instead (as
the product does; the two sides still write the same text). Prints milliseconds per token
and forward passes of the LLM for each round, the ratio of the medians, and how many
generated tokens the two sides share.

Usage::

    python bench/decode.py [--bundle models/demo] [--compare merge|dtype|lookup]
        [--tokens 60] [--until-eos] [--rounds 3] [--image FILE]

The image defaults to pydicom-data's chest CR (``RG1_UNCR.dcm``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from inference import ChestXrayVLM, GenerationConfig, RuntimeOptions
from inference.generation import generate_ids
from inference.speculative import lookup_greedy_decode


def _chest_cr() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise SystemExit("pydicom-data's RG1_UNCR.dcm is missing: pass --image")
    return Path(str(path))


def _time_per_token(
    model: ChestXrayVLM, image: Path, tokens: int, until_eos: bool
) -> tuple[float, int, torch.Tensor]:
    """Seconds per generated token, forward passes of the LLM, and the generated ids."""
    analysis = model.analyse([image])
    batch = model._batch([model._report_prompt(analysis, None)], [analysis])
    options = GenerationConfig(max_new_tokens=tokens if not until_eos else 256)
    with model.llm.adapter("report") as runner:
        # the causal LM itself: generate runs its forward (under peft, the base model's)
        lm = runner.get_base_model() if hasattr(runner, "get_base_model") else runner
        passes: list[int] = []
        hook = lm.register_forward_hook(lambda *_: passes.append(1))  # type: ignore[operator]
    try:
        start = time.perf_counter()
        if until_eos:
            ids = generate_ids(model.llm, batch, options, adapter="report", lookup=model.lookup)
        elif model.lookup is not None:
            with model.llm.adapter("report") as runner:
                ids = lookup_greedy_decode(  # no stop token: the same work on both sides
                    runner, batch.inputs_embeds, model.lookup, max_new_tokens=tokens,
                    stop_token_ids=[],
                )
        else:
            with model.llm.adapter("report") as runner, torch.inference_mode():
                ids = runner.generate(  # type: ignore[operator]
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,  # the same work on both sides
                    do_sample=False,
                    eos_token_id=model.llm.stop_token_ids(),
                    pad_token_id=model.llm.pad_token_id(),
                )
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    return seconds / ids.shape[1], len(passes), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/demo"))
    parser.add_argument("--compare", choices=("merge", "dtype", "lookup"), default="merge")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--until-eos", action="store_true",
                        help="write whole reports (up to 256 tokens) instead of --tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    image = args.image or _chest_cr()
    sides = {
        "merge": {"merged": RuntimeOptions(device="cpu"),
                  "unmerged": RuntimeOptions(device="cpu", merge_adapters=False)},
        "dtype": {"bfloat16": RuntimeOptions(device="cpu", dtype="bfloat16"),
                  "float32": RuntimeOptions(device="cpu", dtype="float32")},
        "lookup": {"lookup": RuntimeOptions(device="cpu", lookup_tokens=8),
                   "plain": RuntimeOptions(device="cpu", lookup_tokens=0)},
    }[args.compare]
    if args.compare != "lookup":  # one change at a time
        sides = {name: replace(options, lookup_tokens=0) for name, options in sides.items()}
    models = {name: ChestXrayVLM.from_bundle(args.bundle, o) for name, o in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    outputs: dict[str, torch.Tensor] = {}
    for model in models.values():
        _time_per_token(model, image, 4, until_eos=False)  # warm-up
    for round_ in range(args.rounds):
        for name, model in models.items():
            per_token, passes, ids = _time_per_token(model, image, args.tokens, args.until_eos)
            times[name].append(per_token)
            outputs[name] = ids
            print(f"round {round_ + 1} {name:9s} {1000 * per_token:7.1f} ms/token, "
                  f"{ids.shape[1]} tokens in {passes} forward passes")
    first, second = models
    first_time, second_time = statistics.median(times[first]), statistics.median(times[second])
    print(f"median: {first} {1000 * first_time:.1f} ms/token, "
          f"{second} {1000 * second_time:.1f} ms/token")
    print(f"{first} / {second} time per token: {first_time / second_time:.2f}x")
    length = min(outputs[first].shape[1], outputs[second].shape[1])
    same = outputs[first][:, :length] == outputs[second][:, :length]
    shared = int(same.cumprod(dim=1).sum())
    print(f"tokens shared from the start: {shared} ({first} wrote {outputs[first].shape[1]}, "
          f"{second} {outputs[second].shape[1]})")


if __name__ == "__main__":
    main()
