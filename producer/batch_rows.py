"""A batch job's row, made from its result key, and the deletion of result keys.

A row is `{"id": ..., "state": ..., "source": ..., "result"|"error": ...}`: id and state first
(what a resume reads without parsing, producer/batch_state.py), then the source as given and
the job's result or error as `imgqueue submit --wait` prints them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from core.connections import is_cluster_client
from producer.client import Client, Outcome, parse_meta

# How the worker stores a success (Celery's result meta): the result comes first.
_SUCCESS = '{"status": "SUCCESS", "result": '
_DECODER = json.JSONDecoder()


def row_line(index_id: str, state: str, source: str, rest: dict[str, Any]) -> bytes:
    """One row: id and state first (what a resume reads without parsing), then the source and
    the job's result or error as `imgqueue submit --wait` prints them."""
    row: dict[str, Any] = {"id": index_id, "state": state, "source": source, **rest}
    return (json.dumps(row) + "\n").encode()


@dataclass(frozen=True)
class Ended:
    """A job's row, ready to append, and what the tally needs of it."""

    index: int
    source: str
    state: str
    error: dict[str, Any] | None
    line: bytes


def ended(index: int, task_id: str, source: str, raw: bytes) -> Ended | None:
    """The row of a job whose result key holds `raw`; None while it has not ended. A success's
    result is copied as stored, not parsed into objects and encoded again: its extent is found
    by the JSON scanner, and anything else than the worker's usual layout is parsed whole."""
    text = raw.decode()
    if text.startswith(_SUCCESS):
        try:
            end = _DECODER.raw_decode(text, len(_SUCCESS))[1]
        except ValueError:
            end = 0
        if end and text.startswith((", ", "}"), end):
            head = f'{{"id": {json.dumps(task_id)}, "state": "SUCCESS", "source": '
            line = f'{head}{json.dumps(source)}, "result": {text[len(_SUCCESS) : end]}}}\n'
            return Ended(index, source, "SUCCESS", None, line.encode())
    outcome = parse_meta(task_id, raw)
    if not outcome.done:
        return None
    return finished(index, source, outcome)


def finished(index: int, source: str, outcome: Outcome) -> Ended:
    rest = outcome.to_dict()
    rest.pop("id"), rest.pop("state")
    line = row_line(outcome.task_id, outcome.state, source, rest)
    return Ended(index, source, outcome.state, rest.get("error"), line)


def unlink_results(client: Client, task_ids: list[str]) -> bool:
    """UNLINK the jobs' result keys (one command; one per key on a cluster, whose keys lie in
    many slots); False where this Redis user may not."""
    keys = [client.config.result_key(t) for t in task_ids]
    try:
        for start in range(0, len(keys), 5000):
            chunk = keys[start : start + 5000]
            if is_cluster_client(client.results):
                pipe = client.results.pipeline(transaction=False)
                for key in chunk:
                    pipe.unlink(key)
                pipe.execute()
            else:
                client.results.unlink(*chunk)
    except redis.exceptions.NoPermissionError:
        return False
    return True
