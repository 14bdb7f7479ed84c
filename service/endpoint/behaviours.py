"""A method's behaviour with a step of an interceptor's before it, in the behaviour's own form.

gRPC's aio server drives a behaviour by its kind: an async generator's answers are
written as they come; a coroutine returns its one answer, or writes its own with
`context.write` (as health's Watch does). An interceptor that puts a step before a
behaviour must hand back the same kind, or gRPC drives it wrongly; this is that
wrapping, once, for the interceptors in this folder.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

# Takes the call's request (or its requests) and returns what the behaviour is handed; it
# ends the call (context.abort) instead when the request may not go on.
Before = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def after_step(
    behaviour: Callable[..., Any], before: Before, done: Callable[[], None] | None = None
) -> Callable[..., Any]:
    """`behaviour` run on what `before` hands on, and `done` called once it is over (only
    if `before` let it start), in the behaviour's own form."""
    if inspect.isasyncgenfunction(behaviour):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            handed = await before(request, context)
            try:
                async for response in behaviour(handed, context):
                    yield response
            finally:
                if done is not None:
                    done()

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        handed = await before(request, context)
        try:
            answer = behaviour(handed, context)
            return await answer if inspect.isawaitable(answer) else answer
        finally:
            if done is not None:
                done()

    return coroutine
