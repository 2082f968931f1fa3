"""Runs a set of long-lived coroutines under one TaskGroup and stops them cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterable

from natib.runtime.logging import get_logger

log = get_logger("natib.supervisor")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT (a second signal exits at once)."""
    loop = asyncio.get_running_loop()

    def _on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=sig.name)
            raise SystemExit(130)
        log.info("stopping", signal=sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, sig)


async def supervise(services: Iterable[tuple[str, Callable[[], Awaitable[None]]]], stop: asyncio.Event) -> None:
    """Run every service until ``stop`` is set; a service that crashes is logged and restarted after a pause."""

    async def _keep(name: str, factory: Callable[[], Awaitable[None]]) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("service_crashed", service=name, restart_in=delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)

    async with asyncio.TaskGroup() as tg:
        for name, factory in services:
            tg.create_task(_keep(name, factory), name=name)
