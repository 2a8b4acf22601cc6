"""Bulk messages without a worker: what `classify_many` accepts, and how producers chunk."""

from __future__ import annotations

import pytest

from core.contract import MAX_BULK_IMAGES
from producer.client import _BULK_MAX_SOURCE_CHARS, _chunks
from worker.bulk import ids_in, parse
from worker.errors import InvalidArguments


def test_a_valid_message_and_per_image_defaults() -> None:
    images, outcome = parse(
        ([{"id": "a", "source": "x.jpg"}, {"id": "b", "source": "y.jpg", "top_k": 1}],),
        {"top_k": 3},
    )
    assert [(i.id, i.source, i.top_k) for i in images] == [("a", "x.jpg", 3), ("b", "y.jpg", 1)]
    assert outcome.failures == {} and outcome.invalid == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "one positional argument"),
        (("x.jpg",), {}, "one positional argument"),
        (([],), {}, "1..1000"),
        (([{"id": "a", "source": "x"}] * (MAX_BULK_IMAGES + 1),), {}, "1..1000"),
        (([{"id": "a", "source": "x"}],), {"top_k": 0}, "top_k"),
        (([{"id": "a", "source": "x"}],), {"colour": "red"}, "unknown keyword"),
    ],
)
def test_a_message_outside_the_contract_fails_as_a_whole(
    args: tuple[object, ...], kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidArguments, match=match):
        parse(args, kwargs)  # type: ignore[arg-type]


def test_bad_items_fail_alone_or_are_counted() -> None:
    items = [
        {"id": "ok", "source": "x.jpg"},
        {"id": "k", "source": "x.jpg", "top_k": True},  # a bool is not a count
        {"id": "s", "source": "   "},
        {"id": "f", "source": "x.jpg", "extra": 1},
        {"id": "ok", "source": "again.jpg"},  # a duplicate id: nothing to store it under
        {"source": "no-id.jpg"},
        {"id": "bad\nid", "source": "x.jpg"},
        "not an object",
    ]
    images, outcome = parse((items,), {})
    assert [i.id for i in images] == ["ok"]
    assert sorted(outcome.failures) == ["f", "k", "s"]
    assert all(isinstance(e, InvalidArguments) for e in outcome.failures.values())
    assert outcome.invalid == 4
    assert ids_in((items,)) == ["ok", "k", "s", "f"]


def test_producers_chunk_by_count_and_by_size() -> None:
    assert [len(c) for c in _chunks([f"{i}.jpg" for i in range(10)], 4)] == [4, 4, 2]
    long = "x" * (_BULK_MAX_SOURCE_CHARS // 2 + 1)
    assert [len(c) for c in _chunks([long, long, long], 64)] == [1, 1, 1]
