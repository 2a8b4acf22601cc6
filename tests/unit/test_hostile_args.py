"""Task arguments outside the contract: rejected with InvalidArguments saying what is wrong.

In-process against the validator; tests/system/test_service.py sends the same through a real worker.
"""

from __future__ import annotations

from typing import Any

import pytest

from core.contract import MAX_TOP_K
from worker.errors import InvalidArguments
from worker.pipeline import validate_args


@pytest.mark.parametrize(
    ("args", "kwargs", "fragment"),
    [
        ((), {}, "exactly one"),
        (("a.jpg", "b.jpg"), {}, "exactly one"),
        ((42,), {}, "source must be"),
        ((None,), {}, "source must be"),
        ((["a.jpg"],), {}, "source must be"),
        (({"url": "a.jpg"},), {}, "source must be"),
        (("   ",), {}, "source must be"),
        (("x" * 9000,), {}, "longer than 8192"),
        (("a.jpg",), {"top_k": 0}, "top_k"),
        (("a.jpg",), {"top_k": -1}, "top_k"),
        (("a.jpg",), {"top_k": MAX_TOP_K + 1}, "top_k"),
        (("a.jpg",), {"top_k": 10**18}, "top_k"),
        (("a.jpg",), {"top_k": 2.5}, "top_k"),
        (("a.jpg",), {"top_k": "5"}, "top_k"),
        (("a.jpg",), {"top_k": True}, "top_k"),
        (("a.jpg",), {"top_k": None}, "top_k"),
        (("a.jpg",), {"colour": "red"}, "unknown keyword argument(s): colour"),
        (("a.jpg",), {"top_k": 5, "__class__": 1}, "unknown keyword"),
    ],
)
def test_arguments_outside_the_contract(
    args: tuple[Any, ...], kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidArguments) as info:
        validate_args(args, kwargs)
    assert fragment in str(info.value)


def test_arguments_inside_the_contract() -> None:
    assert validate_args(("a.jpg",), {}) == ("a.jpg", 5)
    assert validate_args(("a.jpg",), {"top_k": MAX_TOP_K}) == ("a.jpg", MAX_TOP_K)
