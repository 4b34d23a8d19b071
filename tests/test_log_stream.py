"""The log's stream (``ops/log_stream.py``): lines leave the process once per loop turn, never later."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Iterator

import pytest

from ops.log_stream import TurnFlushedStreamHandler


@pytest.fixture
def piped() -> Iterator[tuple[logging.Logger, int]]:
    """A logger whose handler writes to a real pipe (block-buffered, as stdout to a file is)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_end, "w"), 65536))
    handler = TurnFlushedStreamHandler(stream)
    logger = logging.getLogger("test.log_stream")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, read_end
    logger.removeHandler(handler)
    handler.close()
    stream.close()
    os.close(read_end)


def readable(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def test_lines_of_one_loop_turn_leave_together_at_its_end(piped: tuple[logging.Logger, int]) -> None:
    logger, fd = piped

    async def turn() -> tuple[bytes, bytes]:
        for i in range(50):
            logger.info("line %d", i)
        during = readable(fd)
        await asyncio.sleep(0)  # the turn ends: its flush runs
        return during, readable(fd)

    during, after = asyncio.run(turn())
    assert during == b""
    assert after.decode().splitlines() == [f"line {i}" for i in range(50)]


def test_a_line_logged_outside_a_loop_leaves_at_once(piped: tuple[logging.Logger, int]) -> None:
    logger, fd = piped
    logger.info("starting")
    assert readable(fd) == b"starting\n"


def test_closing_the_handler_flushes_what_a_stopped_loop_left(piped: tuple[logging.Logger, int]) -> None:
    logger, fd = piped

    loop = asyncio.new_event_loop()
    loop.call_soon(loop.stop)
    loop.call_soon(logger.info, "last")  # logged in the loop's last turn: its flush never runs
    loop.run_forever()
    loop.close()
    assert readable(fd) == b""
    logger.handlers[0].close()
    assert readable(fd) == b"last\n"


def test_a_warning_leaves_at_once_even_inside_a_loop(piped: tuple[logging.Logger, int]) -> None:
    logger, fd = piped

    async def turn() -> bytes:
        logger.info("before")
        logger.warning("upstream down")  # the line an operator needs even if the process is killed now
        return readable(fd)

    assert asyncio.run(turn()) == b"before\nupstream down\n"


def test_a_loop_that_stopped_before_its_flush_does_not_hold_back_the_next_ones(
    piped: tuple[logging.Logger, int],
) -> None:
    logger, fd = piped
    first = asyncio.new_event_loop()
    first.call_soon(first.stop)
    first.call_soon(logger.info, "last of the first loop")  # its flush never runs
    first.run_forever()
    first.close()

    async def next_loop() -> bytes:
        logger.info("in the next loop")
        await asyncio.sleep(0)
        return readable(fd)

    assert asyncio.run(next_loop()) == b"last of the first loop\nin the next loop\n"
