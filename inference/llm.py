"""The language side: a transformers causal LM with named peft LoRA adapters.

One adapter per trained stage (``report``, ``instruct``, ...) is loaded on the same frozen
base model; :meth:`LanguageModel.use_adapter` switches between them (or to the bare base
model) without reloading anything. For serving, :meth:`LanguageModel.merge_adapters` folds
each adapter into its own copy of the base weights: generation then runs a plain model
instead of the base model plus two small LoRA matmuls beside every adapted layer.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from os import PathLike
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from inference.errors import InferenceError

logger = logging.getLogger(__name__)

#: Most memory that merged copies of the LLM may take together (see
#: :meth:`LanguageModel.merge_adapters`): room for the demo model's two adapters.
MERGE_COPIES_MAX_BYTES = 2 << 30

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """Map ``"auto"`` to CUDA when available, else CPU; pass others through.

    Raises
    ------
    InferenceError
        When CUDA is requested but not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} requested but CUDA is not available")
    return resolved


#: On CPU, ``auto`` takes bfloat16 when the probe times it at most this share of float32.
CPU_BF16_MAX_RATIO = 0.8

#: Weights the probe streams per round: more than a CPU cache holds, as a decoding step does.
_PROBE_BYTES = 48 * 2**20

#: Smaller weight matrices are not probed: their products are bound by call overhead.
_PROBE_MIN_ELEMENTS = 2**18


@functools.cache
def cpu_bf16_time_ratio(in_features: int, out_features: int) -> float:
    """Time of bfloat16 over float32 matrix-vector products on this CPU (probed once).

    A decoding step multiplies one token's activations by every weight matrix of the model,
    so its time is that of matrix-vector products over more weights than a CPU cache holds.
    The probe times such products in both dtypes (under 0.1 s), because CPUs differ: on a
    2 vCPU AMD EPYC with AVX512-BF16 bf16 decoding took 0.56x the float32 time, on an Intel
    Xeon with AMX 1.08x (docs/benchmarks.md). Without native bf16 instructions, or for
    matrices so small that a step is bound by call overhead rather than memory (tiny test
    models), the ratio is not probed and is reported as infinite.

    Parameters
    ----------
    in_features, out_features
        Shape of the probed weight matrices (the model's MLP projection).
    """
    if in_features * out_features < _PROBE_MIN_ELEMENTS or not (
        torch.cpu._is_avx512_bf16_supported()
    ):
        return float("inf")
    count = max(1, _PROBE_BYTES // (4 * in_features * out_features))
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(out_features, in_features, generator=generator) for _ in range(count)]
    vector = torch.randn(1, in_features, generator=generator)
    variants = {
        dtype: ([w.to(dtype) for w in weights], vector.to(dtype))
        for dtype in (torch.float32, torch.bfloat16)
    }

    def seconds(dtype: torch.dtype) -> float:
        mats, x = variants[dtype]
        start = time.perf_counter()
        with torch.inference_mode():
            for w in mats:
                torch.nn.functional.linear(x, w)
        return time.perf_counter() - start

    times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in variants}
    for _ in range(6):  # interleaved; the first round warms up
        for dtype in variants:
            times[dtype].append(seconds(dtype))
    return statistics.median(times[torch.bfloat16][1:]) / statistics.median(
        times[torch.float32][1:]
    )


def resolve_dtype(
    dtype: str, device: torch.device, mlp_shape: tuple[int, int] | None = None
) -> torch.dtype:
    """Map ``"auto"`` to a dtype for ``device``; pass named dtypes through.

    ``auto`` is bfloat16 on CUDA (when supported). On CPU it is bfloat16 where
    :func:`cpu_bf16_time_ratio` at ``mlp_shape`` (the model's hidden and MLP widths) is at
    most :data:`CPU_BF16_MAX_RATIO`, else float32; float32 when no shape is given.

    Raises
    ------
    InferenceError
        For a dtype name it does not know.
    """
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and mlp_shape is not None:
            ratio = cpu_bf16_time_ratio(*mlp_shape)
            if ratio <= CPU_BF16_MAX_RATIO:
                logger.info("LLM in bfloat16: %.2fx the float32 time per product here", ratio)
                return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise InferenceError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


class AdapterGate:
    """Admits blocks that need one adapter of a shared model at the same time.

    A block enters with the adapter it needs. Blocks for the adapter in effect run
    together; a block for another adapter waits until no block runs, has the model switched
    (``switch(name)``, called while no block runs) and runs. While a block waits to switch,
    new blocks for the current adapter wait too, so a switch is not starved. When the last
    block ends and no switch waits, ``restore()`` puts the model back as it was.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        #: The adapter in effect while blocks run; ``self`` (no adapter name) when idle.
        self._current: object = self
        self._waiting_to_switch = 0
        self._exclusive = False

    @contextlib.contextmanager
    def using(
        self,
        name: str | None,
        switch: Callable[[str | None], None],
        restore: Callable[[], None],
    ) -> Iterator[None]:
        """Run the block with adapter `name` in effect (see the class docstring).

        Parameters
        ----------
        name
            The adapter the block needs (``None``: the bare base model).
        switch
            Puts the model in the state `name` needs.
        restore
            Puts the model back in the state it had before the first block.
        """
        with self._condition:
            switching = False
            while True:
                if not self._exclusive:
                    if self._running == 0:
                        break
                    if self._current == name and not self._waiting_to_switch:
                        break
                if not switching and self._running and self._current != name:
                    switching = True
                    self._waiting_to_switch += 1
                self._condition.wait()
            if switching:
                self._waiting_to_switch -= 1
            if self._running == 0 and self._current != name:
                switch(name)
                self._current = name
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                if self._running == 0:
                    if not self._waiting_to_switch and self._current is not self:
                        restore()
                        self._current = self
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model alone: no block runs meanwhile (changing the model object)."""
        with self._condition:
            while self._exclusive or self._running:
                self._condition.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


class LanguageModel:
    """A causal LM, its tokenizer and its named LoRA adapters.

    Parameters
    ----------
    model
        The base model, or a :class:`peft.PeftModel` wrapping it.
    tokenizer
        The matching tokenizer.
    """

    def __init__(
        self, model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._active: str | None = None
        self._merged: dict[str, PreTrainedModel] = {}
        #: The adapter merged into the weights themselves (no copy), when there is one.
        self._in_place: str | None = None
        #: Held around changes of the model object itself (merging adapters).
        self.lock = threading.RLock()
        #: Lets blocks of one adapter run together on the live model (:meth:`adapter`).
        self._gate = AdapterGate()
        #: The open ``disable_adapter()`` context while blocks run on the bare base model.
        self._base_only: contextlib.AbstractContextManager[None] | None = None
        #: The adapter in use before the first running block, while blocks run.
        self._rest: tuple[str | None] | None = None
        if isinstance(model, PeftModel):
            self._active = model.active_adapter

    @classmethod
    def load(
        cls,
        base_dir: str | PathLike[str],
        tokenizer_dir: str | PathLike[str],
        adapters: Mapping[str, str | PathLike[str]] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        config_dir: str | PathLike[str] | None = None,
        key_mapping: Mapping[str, str] | None = None,
    ) -> LanguageModel:
        """Load a base model from a local directory and attach the given adapters.

        Parameters
        ----------
        base_dir
            Hugging Face model directory (config + safetensors).
        tokenizer_dir
            Tokenizer directory.
        adapters
            Adapter name -> peft adapter directory, loaded in order; the first is active.
        device, dtype
            Placement; ``"auto"`` picks CUDA + bfloat16 when present, and on CPU the dtype
            :func:`resolve_dtype` finds faster.
        config_dir, key_mapping
            For a language model inside a multimodal checkpoint: its own config, and the
            regex mapping of the checkpoint's weight names onto it (``from_pretrained``'s
            ``key_mapping``); weights of the other parts are not loaded.
        """
        torch_device = resolve_device(device)
        try:
            config = AutoConfig.from_pretrained(
                str(config_dir or base_dir), local_files_only=True
            )
            text_config = config.get_text_config()  # the config itself for a text model
            torch_dtype = resolve_dtype(
                dtype,
                torch_device,
                (
                    int(text_config.hidden_size),
                    int(getattr(text_config, "intermediate_size", 4 * text_config.hidden_size)),
                ),
            )
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
            extra: dict[str, Any] = {"key_mapping": dict(key_mapping)} if key_mapping else {}
            if torch_device.type == "cuda":
                # Straight onto the GPU, shard by shard: no full copy in host memory first.
                extra["device_map"] = str(torch_device)
            base = AutoModelForCausalLM.from_pretrained(
                str(base_dir), config=config, dtype=torch_dtype, local_files_only=True, **extra
            )
        except (OSError, ValueError) as exc:
            raise InferenceError(f"cannot load the language model from {base_dir}: {exc}") from exc
        if torch_device.type != "cuda":
            base = base.to(torch_device)  # type: ignore[arg-type]  # transformers' stub
        _release_vision_tower(base)
        base.eval()
        model: PreTrainedModel | PeftModel = base
        for index, (name, path) in enumerate((adapters or {}).items()):
            try:
                if index == 0:
                    model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
                else:
                    assert isinstance(model, PeftModel)
                    model.load_adapter(str(path), adapter_name=name)
            except (OSError, ValueError) as exc:
                raise InferenceError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
        model.eval()
        return cls(model, tokenizer)

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters."""
        if self._in_place is not None:
            return [self._in_place]
        if isinstance(self.model, PeftModel):
            return list(self.model.peft_config)
        return []

    @property
    def active_adapter(self) -> str | None:
        """Adapter in use, or ``None`` for the bare base model."""
        return self._active

    def use_adapter(self, name: str | None) -> None:
        """Switch to adapter ``name``, or to the bare base model with ``None``.

        Raises
        ------
        InferenceError
            For an adapter that is not loaded.
        """
        if self._in_place is not None:
            if name != self._in_place:
                raise InferenceError(
                    f"adapter {self._in_place!r} is merged into the weights; {name!r} is not "
                    "available (load the model without merge_adapters to switch)"
                )
        elif name is not None:
            if name not in self.adapters:
                raise InferenceError(f"adapter {name!r} not loaded; loaded: {self.adapters}")
            assert isinstance(self.model, PeftModel)
            self.model.set_adapter(name)
        self._active = name

    @property
    def merged_adapters(self) -> list[str]:
        """Adapters merged into weights (see :meth:`merge_adapters`)."""
        return [self._in_place] if self._in_place is not None else list(self._merged)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model's parameters (one full copy of the LLM)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def merge_adapters(
        self,
        used: Iterable[str | None] | None = None,
        *,
        max_copy_bytes: int = MERGE_COPIES_MAX_BYTES,
    ) -> None:
        """Fold adapters into weights for generation, holding at most one extra full copy of
        the LLM in all, and none for a large one.

        An unmerged LoRA layer runs two extra small matmuls next to its Linear; the demo
        model has 210 of them, a noticeable share of each decoding step on a CPU. Merged
        weights run as a plain model and give the same outputs up to float rounding.

        * When the tasks use one adapter and never the bare model (an imported RaDialog:
          ``instruct`` for reports and dialog), it is merged into the weights in place (peft's
          ``merge_and_unload``): no copy at all; peak memory grows by one layer's delta.
          The other adapters are dropped.
        * Otherwise each used adapter is folded into its own copy while all copies together
          stay within ``max_copy_bytes`` (the demo model: two copies of 540 MB); a larger
          model keeps its adapters unmerged, since every copy of a 7B model is 13 GB more.
          The adapters stay loaded, so :meth:`use_adapter` and training keep working.

        Parameters
        ----------
        used
            The adapter names the tasks use (``None`` = the bare base model); default: all.
        max_copy_bytes
            Most memory the merged copies may take together.
        """
        if not isinstance(self.model, PeftModel) or self._in_place is not None:
            return
        names = list(self.adapters) if used is None else list(dict.fromkeys(used))
        with self.lock, self._gate.exclusive():
            if len(names) == 1 and names[0] is not None:
                name = names[0]
                self.model.set_adapter(name)
                merged = self.model.merge_and_unload(adapter_names=[name])
                merged.eval()
                self.model = merged
                self._in_place = self._active = name
                return
            wanted = [n for n in names if n is not None and n not in self._merged]
            if len(wanted) * self.weight_bytes > max_copy_bytes:
                logger.info(
                    "adapters %s stay unmerged: %d copies of %.1f GB exceed %.1f GB",
                    wanted, len(wanted), self.weight_bytes / 1e9, max_copy_bytes / 1e9,
                )
                return
            for name in wanted:
                twin = copy.deepcopy(self.model)
                twin.set_adapter(name)
                merged = twin.merge_and_unload(adapter_names=[name])
                merged.eval()
                self._merged[name] = merged

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[PreTrainedModel | PeftModel]:
        """Run the block with adapter ``name`` (``None``: the bare base model) in effect.

        Yields the model to run: the adapter's merged copy when there is one, else
        :attr:`model` with the adapter active.

        Blocks on one model run at the same time (``generate`` in eval mode changes no
        weights or state of the model). Only switching a :class:`peft.PeftModel` between
        adapters changes it; so a block whose adapter is merged (in place, or its own copy)
        takes no lock at all, and blocks that need the live model run together while they
        want the same adapter: a block for another adapter waits until they end, and new
        blocks for the current adapter wait behind it (no switch waits forever).

        Raises
        ------
        InferenceError
            For an adapter that is not loaded, or another than the one merged in place.
        """
        if self._in_place is not None:
            if name != self._in_place:
                self.use_adapter(name)  # raises: only the merged adapter is available
            yield self.model
            return
        if name is not None and name in self._merged:
            yield self._merged[name]
            return
        if not isinstance(self.model, PeftModel):
            if name is not None:
                self.use_adapter(name)  # raises: no adapters loaded
            yield self.model
            return
        if name is not None and name not in self.adapters:
            self.use_adapter(name)  # raises, naming the loaded adapters
        with self._gate.using(name, self._switch_to, self._restore):
            yield self.model

    def _switch_to(self, name: str | None) -> None:
        """Put the live model in the state adapter ``name`` needs (no block runs):
        ``None`` disables the adapter layers."""
        assert isinstance(self.model, PeftModel)
        self._leave_base_only()
        if self._rest is None:
            self._rest = (self._active,)
        self.use_adapter(name)
        if name is None:
            self._base_only = self.model.disable_adapter()
            self._base_only.__enter__()

    def _restore(self) -> None:
        """The adapter in use before the first block (no block runs)."""
        self._leave_base_only()
        if self._rest is not None:
            self.use_adapter(self._rest[0])
            self._rest = None

    def _leave_base_only(self) -> None:
        if self._base_only is not None:
            self._base_only.__exit__(None, None, None)
            self._base_only = None

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the input embeddings."""
        return self.input_embeddings.weight.dtype

    @property
    def input_embeddings(self) -> torch.nn.Embedding:
        """The token embedding layer (shared with the image-token splice)."""
        embeddings = self.model.get_input_embeddings()
        assert isinstance(embeddings, torch.nn.Embedding)
        return embeddings

    @property
    def image_token_id(self) -> int | None:
        """The token at which the model puts pre-encoded image features itself (an
        image-text model such as Gemma 3, see :mod:`inference.multimodal`); ``None`` for a
        language model that takes image tokens as input embeddings."""
        config = self.model.config
        if getattr(config, "vision_config", None) is None:
            return None
        token = getattr(config, "image_token_id", None)
        return int(token) if token is not None else None

    @property
    def hidden_size(self) -> int:
        """Embedding width."""
        return int(self.input_embeddings.embedding_dim)

    def stop_token_ids(self) -> list[int]:
        """Token ids that end generation (tokenizer EOS and the model's configured EOS)."""
        ids: list[int] = []
        candidates: list[Any] = [self.tokenizer.eos_token_id]
        generation_config = getattr(self.model, "generation_config", None)
        if generation_config is not None:
            candidates.append(generation_config.eos_token_id)
        for candidate in candidates:
            values = candidate if isinstance(candidate, list) else [candidate]
            ids.extend(v for v in values if isinstance(v, int) and v not in ids)
        if not ids:
            raise InferenceError("the tokenizer defines no EOS token; generation could not stop")
        return ids

    def pad_token_id(self) -> int:
        """Padding id (the EOS token when the tokenizer has no pad token)."""
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.stop_token_ids()[0]


def _release_vision_tower(model: PreTrainedModel) -> None:
    """Drop the vision tower of an image-text model loaded as the LLM (Gemma 3): the node
    runs the vision side in ONNX and passes its features in, so the torch copy (0.8 GB in
    bf16 for MedGemma's SigLIP) would only hold memory. It is replaced by an empty module,
    which fails loudly if anything ever tried to run it."""
    inner = getattr(model, "model", None)
    has_vision = getattr(model.config, "vision_config", None) is not None
    if has_vision and isinstance(getattr(inner, "vision_tower", None), torch.nn.Module):
        inner.vision_tower = torch.nn.Module()  # type: ignore[union-attr]


__all__ = [
    "CPU_BF16_MAX_RATIO",
    "AdapterGate",
    "LanguageModel",
    "MERGE_COPIES_MAX_BYTES",
    "cpu_bf16_time_ratio",
    "resolve_device",
    "resolve_dtype",
]
