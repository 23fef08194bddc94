"""Wallaroo's connectors (``wallaroo.experimental``), as 0.5 and 0.6 had them.

A connector is a TCP link between the application and a *connector script*
(:mod:`wallaroo.experimental.connector`: ``SourceConnector`` writes records
into a source connector's port, ``SinkConnector`` listens for a sink
connector's output). Records travel in frames made by the stream codecs:

* 0.6: u32 LE length of the rest, i64 LE event time (milliseconds; ignored,
  windows use ingest time as 0.6 did), payload ``f(data)``.
* 0.5: u32 LE length of the rest, u16 LE metadata length M, M bytes of
  metadata (the partition as text, possibly empty, then an i64 LE sequence
  number, -1 when absent), payload ``f(data)``.

``stream_message_encoder``/``stream_message_decoder`` make codecs writing and
reading 0.6 frames; a 0.5 application's connectors
(``ApplicationBuilder.source_connector``/``sink_connector``, or the
3-argument ``SourceConnectorConfig(host, port, decoder)``) use the same
codecs' 0.5 views (:func:`frames05`), so both versions' apps run unmodified.
"""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any, Callable

from wallaroo import Decoder, Encoder, WallarooParameterError, _check_arity
from wallaroo._lazy import lazy_names
from wallaroo.versions import ONLY_05, ONLY_06, Mark

__all__ = [
    "ConnectorDecoder",
    "ConnectorEncoder",
    "SinkConnector",
    "SinkConnectorConfig",
    "SourceConnector",
    "SourceConnectorConfig",
    "StreamDecoder05",
    "StreamDecoderError",
    "StreamEncoder05",
    "frames05",
    "parse_connector_args",
    "stream_message_decoder",
    "stream_message_encoder",
]

#: The connector scripts' classes, imported when first used (start-up time).
__getattr__ = lazy_names(
    __name__,
    {
        "SourceConnector": "connector",
        "SinkConnector": "connector",
        "UnexpectedSocketError": "connector",
        "parse_connector_args": "connector",
    },
)

_LENGTH = struct.Struct("<I")
_EVENT_TIME = struct.Struct("<q")
_META_LENGTH = struct.Struct("<H")
_SEQUENCE = _EVENT_TIME


class StreamDecoderError(Exception):
    """A connector frame could not be decoded (0.5 exported it)."""


def _payload(codec: Any, data: Any) -> bytes:
    payload = codec._func(data)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return bytes(payload)


class ConnectorDecoder(Decoder):
    """Reads 0.6 connector frames: ``decode`` skips the event time, then ``f(payload)``."""

    _forwarding_methods = ()

    def __init__(self, func: Callable[[bytes], Any]) -> None:
        super().__init__(func, _LENGTH.size, "<I")

    def decode(self, data: bytes) -> Any:
        return self._func(data[_EVENT_TIME.size :])

    def decoder(self) -> Callable[[bytes], Any]:
        """The wrapped function."""
        return self._func

    def _ctor_args(self) -> tuple:
        return (self._func,)


class ConnectorEncoder(Encoder):
    """Writes 0.6 connector frames around ``f(data)``."""

    _forwarding_methods = ()

    def encode(self, data: Any, event_time: Any = 0) -> bytes:
        payload = _payload(self, data)
        if isinstance(event_time, dt.datetime):
            event_time = int(event_time.timestamp() * 1000)
        head = _LENGTH.pack(len(payload) + _EVENT_TIME.size) + _EVENT_TIME.pack(event_time)
        return head + payload


class StreamDecoder05:
    """A stream decoder's 0.5 view: reads 0.5 connector frames (the metadata
    is skipped, as 0.5 did), then the decoder's function on the payload."""

    def __init__(self, codec: ConnectorDecoder) -> None:
        self._codec = codec

    def __call__(self, *args: Any) -> StreamDecoder05:
        return self

    def header_length(self) -> int:
        return _LENGTH.size

    def payload_length(self, header: bytes) -> int:
        return _LENGTH.unpack(header)[0]

    def length_fmt(self) -> str:
        """The struct format of the header (lets the engine frame natively)."""
        return "<I"

    def decode(self, data: bytes) -> Any:
        if len(data) < _META_LENGTH.size:
            raise StreamDecoderError(f"a 0.5 connector frame of {len(data)} bytes has no metadata")
        meta = _META_LENGTH.unpack_from(data)[0]
        return self._codec._func(data[_META_LENGTH.size + meta :])

    def decoder(self) -> Callable[[bytes], Any]:
        """The wrapped function."""
        return self._codec._func

    def __repr__(self) -> str:
        return f"<0.5 frames of {self._codec!r}>"


class StreamEncoder05:
    """A stream encoder's 0.5 view: writes 0.5 connector frames."""

    def __init__(self, codec: ConnectorEncoder) -> None:
        self._codec = codec

    def __call__(self, *args: Any) -> StreamEncoder05:
        return self

    def encode(self, data: Any, partition: Any = None, sequence: Any = None) -> bytes:
        """The frame of ``data``; a falsy ``partition``/``sequence`` is left out,
        as 0.5 did (an empty partition, sequence -1)."""
        payload = _payload(self._codec, data)
        meta = (str(partition).encode("utf-8") if partition else b"") + _SEQUENCE.pack(
            int(sequence) if sequence else -1
        )
        rest = _META_LENGTH.pack(len(meta)) + meta + payload
        return _LENGTH.pack(len(rest)) + rest

    def __repr__(self) -> str:
        return f"<0.5 frames of {self._codec!r}>"


def frames05(codec: Any) -> Any:
    """The 0.5-frame view of a stream codec (any other codec as it is: a
    hand-written one writes and reads its own frames)."""
    if isinstance(codec, ConnectorDecoder):
        return StreamDecoder05(codec)
    if isinstance(codec, ConnectorEncoder):
        return StreamEncoder05(codec)
    return codec


def stream_message_decoder(func: Callable[[bytes], Any]) -> ConnectorDecoder:
    """``@stream_message_decoder`` on ``f(payload_bytes)``."""
    _check_arity(func, 1, "@wallaroo.experimental.stream_message_decoder", "payload bytes")
    return ConnectorDecoder(func)


def stream_message_encoder(func: Callable[[Any], Any]) -> ConnectorEncoder:
    """``@stream_message_encoder`` on ``f(data)`` returning bytes or str."""
    _check_arity(func, 1, "@wallaroo.experimental.stream_message_encoder", "data")
    return ConnectorEncoder(func)


def _form05(host: Any, port: Any, codec: Any) -> tuple:
    return host, port, codec


def _form06(name: Any, encoder: Any, decoder: Any, port: Any, host: Any = "127.0.0.1") -> tuple:
    return name, encoder, decoder, port, host


class SourceConnectorConfig:
    """A source connector: listen on ``host:port`` for connector scripts' frames.

    0.6: ``SourceConnectorConfig(name, encoder, decoder, port, host='127.0.0.1')``;
    0.5: ``SourceConnectorConfig(host, port, decoder)`` (0.5 frames).
    """

    _kind = "source_connector"
    _codec05 = "decoder"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self).__name__
        kwargs05 = dict(kwargs)
        if self._codec05 in kwargs05:
            kwargs05["codec"] = kwargs05.pop(self._codec05)
        try:
            host, port, codec = _form05(*args, **kwargs05)
        except TypeError:
            try:
                self.name, self.encoder, self.decoder, port, self.host = _form06(*args, **kwargs)
            except TypeError:
                raise WallarooParameterError(
                    f"experimental.{cls}: takes (name, encoder, decoder, port, host='127.0.0.1') "
                    f"(0.6) or (host, port, {self._codec05}) (0.5), got "
                    f"{len(args)} arguments and keywords {sorted(kwargs)}"
                ) from None
            self.version = "0.6"
            self._api_mark = Mark(f"experimental.{cls}(name, encoder, decoder, port)", ONLY_06)
        else:
            self.name = self.encoder = self.decoder = None
            setattr(self, self._codec05, frames05(codec))
            self.host = host
            self.version = "0.5"
            self._api_mark = Mark(f"experimental.{cls}(host, port, {self._codec05})", ONLY_05)
        self.port = port

    def to_tuple(self) -> tuple:
        if self.version == "0.5":
            return ("connector", self.host, str(self.port), getattr(self, self._codec05))
        return (self._kind, self.name, self.host, str(self.port), self.encoder, self.decoder)


class SinkConnectorConfig(SourceConnectorConfig):
    """A sink connector: connect to ``host:port`` (a connector script) and write frames.

    0.6: ``SinkConnectorConfig(name, encoder, decoder, port, host='127.0.0.1')``;
    0.5: ``SinkConnectorConfig(host, port, encoder)`` (0.5 frames).
    """

    _kind = "sink_connector"
    _codec05 = "encoder"
