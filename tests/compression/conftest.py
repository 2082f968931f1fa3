"""The compression tests need PyTorch (the ``nas`` extra); they are skipped, visibly, without it.

In-process torch work runs on one thread: the tests share a few cores with everything else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    torch = pytest.importorskip("torch", reason="natib.trials needs PyTorch: pip install -e '.[nas]'")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
