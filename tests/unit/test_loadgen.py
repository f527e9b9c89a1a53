"""The load generators' HTTP/1.1 response reader (load_tests.loadgen.read_response):
Content-Length and chunked bodies off one keep-alive stream, and Connection: close."""

from __future__ import annotations

import asyncio

from load_tests.loadgen import read_response


def _read_all(raw: bytes, count: int) -> list[tuple[int, bytes, bool]]:
    async def run() -> list[tuple[int, bytes, bool]]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return [await read_response(reader) for _ in range(count)]

    return asyncio.run(run())


def test_responses_on_one_connection_are_read_one_after_another() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
           b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
           b"HTTP/1.1 408 Request Time-out\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n")
    assert _read_all(raw, 3) == [(200, b"hello", False), (503, b"abcde", False),
                                 (408, b"", True)]
