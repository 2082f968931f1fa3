"""Print every trial result as it happens, from natib's event stream (any NATS client can do this).

    NATS_URL=nats://127.0.0.1:4222 python examples/subscriber.py [EXPERIMENT]
"""

import asyncio
import os
import sys

import nats

from natib.messages import codec, events


async def main(experiment: str = "*") -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    outcomes = f"natib.evt.{experiment}.trial.*.*"  # trial facts of one (or every) experiment

    async def show(msg: nats.aio.msg.Msg) -> None:
        env = codec.decode(msg.data)  # None for a message type this version does not know
        if isinstance(env, codec.Envelope) and isinstance(env.body, events.TRIAL_OUTCOMES):
            metrics = {m.name: m.latest for m in env.body.observation}
            print(env.experiment, env.body.trial, type(env.body).__name__, metrics, flush=True)

    await js.subscribe(outcomes, cb=show, ordered_consumer=True)  # replays history, then follows live
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
