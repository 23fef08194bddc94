"""Wallaroo 0.6 connectors: ``SourceConnectorConfig`` / ``SinkConnectorConfig``
and the stream codecs of their frames.

A connector frame is a little-endian u32 of the rest's length, an i64
event time (milliseconds; ignored, windows use ingest time as 0.6 did) and
the payload. A source connector is a TCP listener reading such frames (many
connector scripts may connect); a sink connector connects to its host:port
and writes frames with event time 0.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any, Callable

from wallaroo import Decoder, Encoder
from wallaroo.versions import ONLY_06, Mark

_CONNECTOR_MARK = Mark("experimental.SourceConnectorConfig/SinkConnectorConfig", ONLY_06)
_EVENT_TIME = struct.Struct("<q")


class ConnectorDecoder(Decoder):
    """Reads connector frames: ``decode`` skips the event time, then ``f(payload)``."""

    _forwarding_methods = ()

    def __init__(self, func: Callable[[bytes], Any]) -> None:
        super().__init__(func, 4, "<I")

    def decode(self, data: bytes) -> Any:
        return self._func(data[_EVENT_TIME.size :])

    def decoder(self) -> Callable[[bytes], Any]:
        """The wrapped function."""
        return self._func

    def _ctor_args(self) -> tuple:
        return (self._func,)


class ConnectorEncoder(Encoder):
    """Writes connector frames around ``f(data)``."""

    _forwarding_methods = ()

    def encode(self, data: Any, event_time: Any = 0) -> bytes:
        payload = self._func(data)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if isinstance(event_time, dt.datetime):
            event_time = int(event_time.timestamp() * 1000)
        return (
            struct.pack("<I", len(payload) + _EVENT_TIME.size)
            + _EVENT_TIME.pack(event_time)
            + bytes(payload)
        )


def stream_message_decoder(func: Callable[[bytes], Any]) -> ConnectorDecoder:
    """``@stream_message_decoder`` on ``f(payload_bytes)``."""
    return ConnectorDecoder(func)


def stream_message_encoder(func: Callable[[Any], Any]) -> ConnectorEncoder:
    """``@stream_message_encoder`` on ``f(data)`` returning bytes or str."""
    return ConnectorEncoder(func)


class SourceConnectorConfig:
    """Listen on ``host:port`` for connector scripts writing connector frames."""

    _api_mark = _CONNECTOR_MARK

    def __init__(
        self, name: str, encoder: Any, decoder: Any, port: Any, host: str = "127.0.0.1"
    ) -> None:
        self.name, self.encoder, self.decoder = name, encoder, decoder
        self.port, self.host = port, host

    def to_tuple(self) -> tuple:
        return (
            "source_connector",
            self.name,
            self.host,
            str(self.port),
            self.encoder,
            self.decoder,
        )


class SinkConnectorConfig(SourceConnectorConfig):
    """Connect to ``host:port`` (a connector script) and write connector frames."""

    def to_tuple(self) -> tuple:
        return ("sink_connector", self.name, self.host, str(self.port), self.encoder, self.decoder)
