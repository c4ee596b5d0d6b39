"""`--batch`: judge through the OpenAI Batch API (files + batches endpoints) instead of live calls.

OpenAI bills batch requests at half the live price and answers within 24 h, which suits a big offline run.
The flow, for the requests the cache does not already answer:
  1. write them as one JSONL (custom_id = the request's cache key), upload it (purpose "batch") and create
     the batch; its id and the keys it covers are saved at once under `<cache>/batches/`,
  2. poll until the batch ends; a run that is interrupted and started again finds the saved ids and polls the
     same batches instead of submitting (and paying for) the requests again,
  3. read the output: each reply is validated like a live one and cached; replies that fail validation or
     came back as errors (and requests the batch dropped) go through the normal live path, re-asks included.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from halign.data_gen.io import stable_hash
from halign.rewards.judges.disk_cache import FILE_MODE
from halign.rewards.judges.endpoint import JudgeRequest, JudgeResult

ENDED = ("completed", "failed", "expired", "cancelled")


class BatchStore:
    """Saved batches: one small JSON per submitted batch, removed once its output has been read."""

    def __init__(self, cache_root: Path):
        self.root = Path(cache_root) / "batches"
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, state: dict) -> None:
        path = self.root / f"{state['batch_id']}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def pending(self, scope: str) -> list[dict]:
        states = []
        for path in sorted(self.root.glob("*.json")):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if state.get("scope") == scope:
                states.append(state)
        return states

    def done(self, batch_id: str) -> None:
        (self.root / f"{batch_id}.json").unlink(missing_ok=True)


async def run_batches(llm, client, todo: list[tuple[str, JudgeRequest]], poll_seconds: float) -> list[tuple[str, JudgeRequest]]:
    """Answer what the Batch API can; returns the requests still to ask live."""
    cfg = llm.config
    if llm.cache is None:
        raise ValueError("--batch needs the on-disk cache (it holds the submitted batch ids between runs)")
    store = BatchStore(llm.cache.root)
    scope = stable_hash({"endpoint": cfg.url, "model": cfg.model})
    wanted = dict(todo)
    states = [s for s in store.pending(scope) if set(s["keys"]) & set(wanted)]
    covered = {k for s in states for k in s["keys"]}
    fresh = [(k, r) for k, r in todo if k not in covered]
    if fresh and cfg.budget is not None:
        # A batch is paid for as a whole: submit only what fits in the budget at worst; the rest goes to the
        # live path, where the budget stops the run cleanly.
        from halign.rewards.judges.endpoint import estimate_prompt_tokens

        left, fitting = cfg.budget, []
        for key, req in fresh:
            left -= cfg.cost(estimate_prompt_tokens(req.messages), cfg.max_tokens or 512) or 0.0
            if left < 0:
                break
            fitting.append((key, req))
        fresh = fitting
    if fresh:
        states.append(await _submit(llm, client, store, scope, fresh))
    if states:
        llm.log(f"judge {llm.name}: {len(states)} batch(es) ({', '.join(s['batch_id'] for s in states)}) covering "
                f"{sum(len(set(s['keys']) & set(wanted)) for s in states)} request(s); polling every "
                f"{poll_seconds:g} s (an interrupted run resumes by polling)")
    answered: set[str] = set()
    for state in states:
        batch = await _wait(client, state["batch_id"], poll_seconds)
        if batch.get("output_file_id"):
            answered |= await _read_output(llm, client, batch["output_file_id"], wanted)
        store.done(state["batch_id"])
    rest = [(k, r) for k, r in todo if k not in answered]
    if rest:
        llm.log(f"judge {llm.name}: {len(rest)} request(s) not answered validly by the batch: asking them live")
    return rest


async def _submit(llm, client, store: BatchStore, scope: str, fresh) -> dict:
    lines = []
    for key, req in fresh:
        body = json.loads(llm._body(req.messages))
        lines.append(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body},
                                ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode()
    uploaded = await client.files.create(file=("halign_judge_batch.jsonl", data), purpose="batch")
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    llm.stats.calls += 2
    state = {"batch_id": batch.id, "input_file_id": uploaded.id, "scope": scope, "keys": [k for k, _ in fresh],
             "created": time.time()}
    store.save(state)  # before anything else can fail: a rerun must find it
    return state


async def _wait(client, batch_id: str, poll_seconds: float) -> dict:
    while True:
        batch = (await client.batches.retrieve(batch_id)).model_dump()
        if batch.get("status") in ENDED:
            return batch
        await asyncio.sleep(poll_seconds)


async def _read_output(llm, client, file_id: str, wanted: dict[str, JudgeRequest]) -> set[str]:
    text = (await client.files.content(file_id)).text
    answered = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        key = row.get("custom_id")
        req = wanted.get(key)
        response = row.get("response") or {}
        if req is None or response.get("status_code") != 200:
            continue
        body = response.get("body") or {}
        try:
            content = body["choices"][0]["message"]["content"]
            u = body.get("usage") or {}
            usage = {"prompt_tokens": int(u.get("prompt_tokens") or 0),
                     "completion_tokens": int(u.get("completion_tokens") or 0)}
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        llm.stats.prompt_tokens += usage["prompt_tokens"]
        llm.stats.completion_tokens += usage["completion_tokens"]
        try:
            parsed = req.validator(content if isinstance(content, str) else "")
        except ValueError:
            llm.stats.reasks += 1  # asked again live, with the usual re-ask
            continue
        result = JudgeResult(parsed=parsed, usage=usage, raw=content)
        await asyncio.to_thread(llm.cache.put, key, req.key_material, result)
        llm._finish(key, result)
        answered.add(key)
    return answered

