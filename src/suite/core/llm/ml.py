"""The transformers runtime of the local model. The only module of `suite.core.llm` that imports torch and
transformers at top level: it is imported lazily, on the local provider's dedicated thread.

- `build_cached_copy(gguf, dest)`: the one-time conversion of the GGUF to a safetensors directory
  (transformers' `gguf_file=` loading dequantizes to fp32; `save_pretrained` refuses GGUF-loaded models, so
  the weights go through `safetensors.torch.save_model`, which handles the tied embeddings). Written to a temp
  directory beside `dest` and renamed into place atomically; a file lock keeps two processes from converting
  at once.
- `TransformersRuntime`: loads the copy, renders the chat template stored with it, and generates greedily or
  with a seeded sampler, streaming each token's text through a callback and stopping at the next token when
  `should_stop()` turns true.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from suite.core.llm.base import ContextTooLong, GenerationResult
from suite.core.llm.local import MARKER, copy_is_complete


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No tqdm bars from transformers while loading (they would land on a server's stderr)."""
    tlog: Any = transformers.utils.logging
    enabled = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    # The GGUF conversion uses tqdm directly, not transformers' switch.
    gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if enabled:
            tlog.enable_progress_bar()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the atomic rename still keeps the copy whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_cached_copy(gguf: Path, dest: Path, *, source_sha256: str) -> dict[str, Any]:
    """Convert `gguf` into the safetensors directory `dest` unless it is already there.

    Returns what happened: `{"built": bool, "seconds": float, "path": str}`.
    """
    if copy_is_complete(dest):
        return {"built": False, "seconds": 0.0, "path": str(dest)}
    started = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        if copy_is_complete(dest):  # another process built it while we waited
            return {"built": False, "seconds": time.perf_counter() - started, "path": str(dest)}
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            with _quiet_progress():
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
                )
            import safetensors.torch

            safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
            model.config.save_pretrained(str(tmp))
            model.generation_config.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            marker = {
                "source": gguf.name,
                "source_sha256": source_sha256,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "built_at": time.time(),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
            del model
            if dest.exists():  # a leftover without its marker: replace it
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return {"built": True, "seconds": time.perf_counter() - started, "path": str(dest)}


class _CallbackStreamer(BaseStreamer):
    """Receives token ids from `generate` and hands the new text of each token to `on_text`.

    The whole reply is decoded again at each token (replies are short) so multi-token characters come out
    whole: text ending in U+FFFD waits for the next token.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], end_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.end_ids = end_ids
        self.prompt_seen = False
        self.ids: list[int] = []
        self.printed = 0
        self.count = 0
        self.saw_end = False

    def _decode(self) -> str:
        return str(
            self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.count += 1
            if token in self.end_ids:
                self.saw_end = True
                continue
            self.ids.append(int(token))
        text = self._decode()
        if text.endswith("\ufffd"):
            return
        delta, self.printed = text[self.printed :], len(text)
        if delta:
            self.on_text(delta)

    def end(self) -> None:
        text = self._decode()
        delta, self.printed = text[self.printed :], len(text)
        if delta:
            self.on_text(delta)


class _StopWhen(StoppingCriteria):
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop
        self.fired = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        stop = self.should_stop()
        self.fired = self.fired or stop
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class TransformersRuntime:
    """SmolLM2 from the cached safetensors copy. Not thread-safe: the local engine calls it on one thread."""

    name = "transformers"

    def __init__(self, model_dir: Path, *, threads: int) -> None:
        torch.set_num_threads(threads)  # on the calling (dedicated) thread, where generation runs
        started = time.perf_counter()
        with _quiet_progress():
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        model: Any = self.model
        model.eval()
        self.load_seconds = time.perf_counter() - started
        self.threads = threads
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.end_ids = {int(end)} if isinstance(end, int) and end >= 0 else set()
        if self.tokenizer.eos_token_id is not None:
            self.end_ids.add(int(self.tokenizer.eos_token_id))
        self.context_tokens = int(getattr(self.model.config, "max_position_embeddings", 8192) or 8192)

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text (ChatML from the copy's chat_template.jinja), with the generation prompt."""
        return str(
            self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        )

    def count_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_new_tokens: int,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        repetition_penalty: float,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> GenerationResult:
        prompt = self.render(messages)
        encoded = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        input_ids = encoded["input_ids"]
        prompt_tokens = int(input_ids.shape[1])
        if prompt_tokens + max_new_tokens > self.context_tokens:
            raise ContextTooLong(
                f"the prompt is {prompt_tokens} tokens; with max_tokens {max_new_tokens} it exceeds the "
                f"model's context of {self.context_tokens}"
            )
        streamer = _CallbackStreamer(self.tokenizer, on_text, self.end_ids)
        stopper = _StopWhen(should_stop)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"],
            "max_new_tokens": max_new_tokens,
            "repetition_penalty": repetition_penalty,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([stopper]),
            "eos_token_id": sorted(self.end_ids) or None,
            "pad_token_id": min(self.end_ids) if self.end_ids else None,
        }
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p if top_p is not None else 1.0)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if should_stop():
            return GenerationResult(prompt_tokens, 0, "cancelled")
        with torch.inference_mode():
            model: Any = self.model
            model.generate(**kwargs)
        if streamer.saw_end:
            finish = "stop"
        elif stopper.fired:
            finish = "cancelled"
        elif streamer.count >= max_new_tokens:
            finish = "length"
        else:
            finish = "stop"
        return GenerationResult(prompt_tokens, streamer.count, finish)
