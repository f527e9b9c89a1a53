"""A request body read and judged against a model's signature, refused as early and as cheaply as
it can be: by its declared length before anything is read, by its JSON header before any tensor
data is decoded, and large bodies decoded off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving import codecs
from serving.pacing import BodyDeadlines, Watch
from serving.protocol import BadRequest, BodyTimeout, ParsedRequest, PayloadTooLarge
from serving.runtime import OnnxModel
from serving.settings import ServerSettings

# Bodies larger than this are decoded on a worker thread, so that the event loop keeps serving
# the replica's other requests meanwhile.
LARGE_BODY_BYTES = 1024 * 1024
_JSON_HINT = "; send large tensors as binary data"


@dataclass(slots=True)
class Received:
    """A request's header, parsed and judged, and its inputs decoded as the model takes them."""

    parsed: ParsedRequest
    inputs: dict[str, np.ndarray]
    rows: int


class Intake:
    """Reads bodies within the server's size limits and the front door's rate floor (a body
    that falls behind it is cut off: 408); decodes large ones on `decoder`."""

    def __init__(self, settings: ServerSettings, decoder: Executor) -> None:
        self.settings = settings
        self._decoder = decoder
        door = settings.front_door
        self.deadlines = BodyDeadlines(door.body_grace_s, door.body_min_rate_bytes_per_s)

    async def receive(self, body: AsyncIterator[bytes], declared: int | None,
                      header_length: int | None, model: OnnxModel) -> Received:
        """Read, judge and decode a body: 413 from its Content-Length (`declared`) by the size
        limits before anything is read, 400 from its JSON header by the model's signature before
        any tensor data is read on, 408 once it falls behind the rate floor."""
        s = self.settings
        if header_length is not None:
            if header_length > s.max_json_body_bytes:
                raise PayloadTooLarge(
                    f"JSON header of {header_length} bytes exceeds the limit of "
                    f"{s.max_json_body_bytes} (max_json_body_bytes)"
                )
            if declared is not None and header_length > declared:
                raise BadRequest(
                    f"Inference-Header-Content-Length {header_length} is outside the body of "
                    f"{declared} bytes"
                )
            if declared is not None and declared > s.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body of {declared} bytes exceeds the limit of {s.max_body_bytes}"
                )
        whole, judged = await self._paced(body, declared, header_length, model)
        if header_length is None:  # all JSON: parsing it is decoding it
            return await self._decode(len(whole), self._decode_json, model, whole)
        if judged is None:  # chunked: no length to judge the header by until the end
            header, binary = codecs.split_body(whole, header_length)
            parsed, rows = judge(model, header, len(binary))
        else:
            (parsed, rows), binary = judged, memoryview(whole)[header_length:]
        return await self._decode(len(whole), self._decode_binary, model, parsed, rows, binary)

    async def _paced(self, body: AsyncIterator[bytes], declared: int | None,
                     header_length: int | None, model: OnnxModel
                     ) -> tuple[bytearray, tuple[ParsedRequest, int] | None]:
        """The whole body, read while it keeps the rate floor (serving.pacing), with its header
        judged when its length was declared."""
        s = self.settings
        task = asyncio.current_task()
        assert task is not None
        watch = self.deadlines.watch(task)
        try:
            if header_length is None:
                return await read_body(body, s.max_json_body_bytes, declared, "JSON body", watch,
                                       _JSON_HINT), None
            if declared is None:
                return await read_body(body, s.max_body_bytes, None, "request body", watch), None
            parsed, rows, whole = await _read_judging(body, model, header_length, declared, watch)
            return whole, (parsed, rows)
        except asyncio.CancelledError:
            if not self.deadlines.release(watch):
                raise
            task.uncancel()
            if task.cancelling():  # cancelled for another reason as well: that one wins
                raise
            door = s.front_door
            raise BodyTimeout(
                f"the request body arrived too slowly: {watch.received} bytes in "
                f"{time.monotonic() - watch.started:.1f} s (front_door: body_grace_s "
                f"{door.body_grace_s:g} s, then at least body_min_rate_bytes_per_s "
                f"{door.body_min_rate_bytes_per_s})") from None
        finally:
            self.deadlines.release(watch)

    def _decode_json(self, model: OnnxModel, body: bytearray) -> Received:
        parsed, rows = judge(model, body, 0)
        return self._decode_binary(model, parsed, rows, b"")

    def _decode_binary(self, model: OnnxModel, parsed: ParsedRequest, rows: int,
                       binary: memoryview | bytes) -> Received:
        # decode_inputs builds each array with exactly the name, datatype and shape the header
        # declared, which judge has checked: conform them without checking them again.
        raw = codecs.decode_inputs(parsed, binary, self.settings.max_bytes_elements)
        return Received(parsed, model.conform(raw), rows)

    async def _decode(self, size: int, decode: Callable[..., Received], *args: Any) -> Received:
        if size <= LARGE_BODY_BYTES:
            return decode(*args)
        return await asyncio.get_running_loop().run_in_executor(self._decoder, decode, *args)


def judge(model: OnnxModel, header: bytes | bytearray, binary_length: int
          ) -> tuple[ParsedRequest, int]:
    """The JSON header parsed, and what it declares checked against the signature; with the
    request's row count."""
    parsed = codecs.parse_header(header, binary_length)
    return parsed, check_parsed(model, parsed)


def check_parsed(model: OnnxModel, parsed: ParsedRequest) -> int:
    """What a request declares (HTTP's header or gRPC's message) checked against the model's
    signature, before any tensor data is decoded: its row count."""
    rows = model.check_declared((d.name, d.datatype, d.shape) for d in parsed.inputs)
    if parsed.outputs is not None:
        model.select_outputs([o.name for o in parsed.outputs])
    return rows


async def _read_judging(body: AsyncIterator[bytes], model: OnnxModel, header_length: int,
                        declared: int, watch: Watch) -> tuple[ParsedRequest, int, bytearray]:
    """The body of Content-Length `declared`, its header judged as soon as it has arrived: a
    request the model cannot take is refused without reading the rest (the server discards
    it)."""
    whole = bytearray()
    judged: tuple[ParsedRequest, int] | None = None
    async for chunk in body:
        whole += chunk
        watch.received = len(whole)
        if len(whole) > declared:
            raise BadRequest(f"request body is longer than its Content-Length {declared}")
        if judged is None and len(whole) >= header_length:
            judged = judge(model, bytes(whole[:header_length]), declared - header_length)
    if len(whole) != declared or judged is None:
        raise BadRequest(f"request body ended after {len(whole)} of {declared} bytes")
    return *judged, whole


def declared_length(raw: str | None) -> int | None:
    """A Content-Length header's value; None when absent or not a plain number. Past 19
    digits it is larger than any body limit (and int() refuses past 4,300 digits): 10**19."""
    if raw is None or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw) if len(raw) <= 19 else 10**19


async def read_body(body: AsyncIterator[bytes], limit: int, declared: int | None, what: str,
                    watch: Watch, hint: str = "") -> bytearray:
    """A whole body of at most `limit` bytes: 413 from Content-Length before reading, or as soon
    as the bytes read pass the limit."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"{what} of {declared} bytes exceeds the limit of {limit}{hint}")
    whole = bytearray()
    async for chunk in body:
        whole += chunk
        watch.received = len(whole)
        if len(whole) > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes{hint}")
    return whole
