"""The contract's error types (core.contract.ERROR_TYPES) are the ones its readers see."""

from __future__ import annotations

import re
from pathlib import Path

from core.contract import ERROR_TYPES

ROOT = Path(__file__).resolve().parents[2]


def _documented_error_types() -> list[str]:
    """The first column of the `exc_type` table in docs/contract.md's *Errors* section."""
    text = (ROOT / "docs/contract.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| `exc_type` |", 1)[1]
    names = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        match = re.match(r"\| `(\w+)` \|", line)
        assert match, f"not an error type row: {line!r}"
        names.append(match.group(1))
    return names


def test_docs_contract_lists_exactly_the_error_types() -> None:
    documented = _documented_error_types()
    assert len(documented) == len(set(documented)), "an error type is listed twice"
    assert sorted(documented) == sorted(ERROR_TYPES)


def _worker_error_types() -> set[str]:
    """The names of every error class a failed job's result can carry: worker.errors'
    ClassifyError subclasses (the base itself is never raised)."""
    from worker import errors

    found: set[str] = set()
    todo = list(errors.ClassifyError.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def test_worker_errors_are_exactly_the_contracts_error_types() -> None:
    from celery.exceptions import TaskRevokedError

    # Celery stores this one itself (`celery control revoke`): results carry it, no class of ours.
    assert _worker_error_types() | {TaskRevokedError.__name__} == set(ERROR_TYPES)


def test_every_error_type_is_stored_with_one_module() -> None:
    """A failed result's `exc_module` (from which Celery's clients rebuild the exception) is
    worker.errors for every type, those core.job_errors declares for the webhook dispatcher
    included, as it was before they moved."""
    from worker import errors

    for name in ERROR_TYPES:
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, errors.ClassifyError):
            assert cls.__module__ == "worker.errors", name
    assert errors.FetchFailed.__module__ == "worker.errors"
