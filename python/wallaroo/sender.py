"""Send length-framed messages to a TCP address: a test tool for Wallaroo TCP sources.

Run it as ``python -m wallaroo.sender --to HOST:PORT [--file PATH] ...``. Every
message goes on the wire as a header holding the payload length (packed with a
``struct`` format, by default ``>I``: 4 bytes, big-endian) followed by the payload,
which is what a Wallaroo ``@decoder(header_length=4, length_fmt=">I")`` expects.

Input modes (``--mode``):

``lines`` (default)
    Each line of the input, without its line ending (``\\n`` or ``\\r\\n``), is one
    message. A last line without a newline is a message too; an empty line is an
    empty message.
``framed``
    The input is already length-framed with ``--length-fmt``: its bytes are sent as
    they are, but parsed frame by frame so that ``--limit`` and ``--rate`` count
    messages. A truncated last frame is an error.
``raw``
    The input bytes are sent verbatim, without any header; each pass over the input
    (see ``--repeat``) counts as one message.

Input files whose name ends in ``.gz`` are decompressed transparently. A summary
line (messages, bytes, seconds) is printed to stderr at the end.

The module can also be imported: :func:`frame` builds one framed message and
:func:`send_messages` sends an iterable of payloads.
"""

from __future__ import annotations

import argparse
import gzip
import io
import socket
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Callable

__all__ = [
    "connect",
    "frame",
    "iter_framed",
    "iter_lines",
    "iter_raw",
    "main",
    "send_messages",
    "send_stream",
]

_FLUSH_BYTES = 64 * 1024
_CHUNK = 64 * 1024


def frame(payload: bytes, length_fmt: str = ">I") -> bytes:
    """Return ``payload`` preceded by its length packed with ``length_fmt``.

    Raises ``ValueError`` if the length does not fit in the header format.
    """
    try:
        header = struct.pack(length_fmt, len(payload))
    except struct.error as exc:
        raise ValueError(
            f"payload of {len(payload)} bytes does not fit length format {length_fmt!r}: {exc}"
        ) from exc
    return header + bytes(payload)


def connect(host: str, port: int, connect_timeout: float = 10.0) -> socket.socket:
    """Connect to ``host:port``, retrying until ``connect_timeout`` seconds have passed.

    Returns a connected blocking socket with ``TCP_NODELAY`` set. Raises the last
    ``OSError`` when no connection could be made in time.
    """
    deadline = time.monotonic() + max(0.0, connect_timeout)
    delay = 0.02
    while True:
        remaining = deadline - time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, min(remaining, 5.0)))
        except OSError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
            continue
        sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock


def send_stream(
    sock: socket.socket,
    chunks: Iterable[bytes],
    rate: float = 0.0,
    limit: int | None = None,
) -> tuple[int, int]:
    """Write already-encoded messages (``chunks``) to ``sock``.

    Each element of ``chunks`` is one message as it goes on the wire. ``rate`` paces
    the messages per second (0 = as fast as possible); ``limit`` stops after that
    many messages. Small messages are batched into larger writes unless pacing is on.
    Returns ``(messages, bytes)`` sent.
    """
    count = 0
    total = 0
    if limit is not None and limit <= 0:
        return 0, 0
    buf = bytearray()
    start = time.monotonic()
    for chunk in chunks:
        if rate > 0:
            due = start + count / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sock.sendall(chunk)
        else:
            buf += chunk
            if len(buf) >= _FLUSH_BYTES:
                sock.sendall(buf)
                buf.clear()
        count += 1
        total += len(chunk)
        if limit is not None and count >= limit:
            break
    if buf:
        sock.sendall(buf)
    return count, total


def _finish(sock: socket.socket) -> None:
    """Half-close ``sock`` so the peer sees end-of-stream, then close it."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def send_messages(
    host: str,
    port: int,
    payloads: Iterable[bytes],
    length_fmt: str = ">I",
    connect_timeout: float = 10.0,
    *,
    rate: float = 0.0,
    limit: int | None = None,
) -> int:
    """Connect to ``host:port`` and send each payload framed with ``length_fmt``.

    Connecting is retried for up to ``connect_timeout`` seconds. ``rate`` and
    ``limit`` are as for :func:`send_stream`. The connection is closed at the end.
    Returns the number of messages sent.
    """
    sock = connect(host, port, connect_timeout)
    try:
        count, _ = send_stream(sock, (frame(p, length_fmt) for p in payloads), rate, limit)
    finally:
        _finish(sock)
    return count


def iter_lines(stream: BinaryIO) -> Iterator[bytes]:
    """Yield each line of ``stream`` without its ``\\n`` or ``\\r\\n`` ending."""
    for line in stream:
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        yield line


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes from ``stream``, fewer only at end of input."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def iter_framed(stream: BinaryIO, length_fmt: str = ">I") -> Iterator[bytes]:
    """Yield each whole frame (header and payload) of an already length-framed stream.

    Raises ``ValueError`` if the stream ends inside a frame.
    """
    header_len = struct.calcsize(length_fmt)
    while True:
        header = _read_exact(stream, header_len)
        if not header:
            return
        if len(header) < header_len:
            raise ValueError(f"input ends inside a frame header ({len(header)} bytes)")
        (size,) = struct.unpack(length_fmt, header)
        payload = _read_exact(stream, size)
        if len(payload) < size:
            raise ValueError(f"input ends inside a frame: {len(payload)} of {size} bytes")
        yield header + payload


def iter_raw(stream: BinaryIO) -> Iterator[bytes]:
    """Yield the whole content of ``stream`` as one message (read in one go)."""
    parts = []
    while True:
        data = stream.read(_CHUNK)
        if not data:
            break
        parts.append(data)
    yield b"".join(parts)


def _open_input(path: str) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing it if its name ends in ``.gz``."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` allowed) into host and port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _messages(path: str | None, mode: str, length_fmt: str, repeat: int) -> Iterator[bytes]:
    """Yield wire-ready messages from the input, ``repeat`` times over."""
    encoders: dict[str, Callable[[BinaryIO], Iterator[bytes]]] = {
        "lines": lambda s: (frame(p, length_fmt) for p in iter_lines(s)),
        "framed": lambda s: iter_framed(s, length_fmt),
        "raw": iter_raw,
    }
    encode = encoders[mode]
    if path is None or path == "-":
        stdin = sys.stdin.buffer
        if repeat == 1:
            yield from encode(stdin)
            return
        data = stdin.read()
        for _ in range(repeat):
            yield from encode(io.BytesIO(data))
        return
    for _ in range(repeat):
        with _open_input(path) as stream:
            yield from encode(stream)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m wallaroo.sender``."""
    p = argparse.ArgumentParser(
        prog="python -m wallaroo.sender",
        description="Send length-framed messages to a TCP address.",
    )
    p.add_argument(
        "--to",
        metavar="HOST:PORT",
        type=_parse_address,
        help="address to send to (overrides --host/--port)",
    )
    p.add_argument("--host", default="127.0.0.1", help="host to send to (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to send to")
    p.add_argument(
        "--file", metavar="PATH", help="input file (.gz is decompressed); stdin when absent or '-'"
    )
    p.add_argument(
        "--mode",
        choices=("lines", "framed", "raw"),
        default="lines",
        help="lines: one message per line (default); framed: input is already "
        "length-framed; raw: send the bytes with no header",
    )
    p.add_argument(
        "--length-fmt",
        default=">I",
        metavar="FMT",
        help="struct format of the length header (default >I)",
    )
    p.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="send the input N times (default 1)"
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N messages")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="N",
        help="messages per second (default 0 = as fast as possible)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="keep retrying to connect for S seconds (default 10)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the sender command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.to is not None:
        host, port = args.to
    elif args.port is not None:
        host, port = args.host, args.port
    else:
        parser.error("give --to HOST:PORT or --port PORT")
    try:
        struct.calcsize(args.length_fmt)
    except struct.error:
        parser.error(f"bad --length-fmt {args.length_fmt!r}")
    if args.repeat < 0:
        parser.error("--repeat must be >= 0")
    if args.rate < 0:
        parser.error("--rate must be >= 0")

    start = time.monotonic()
    try:
        sock = connect(host, port, args.connect_timeout)
    except OSError as exc:
        print(f"sender: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        count, total = send_stream(
            sock,
            _messages(args.file, args.mode, args.length_fmt, args.repeat),
            args.rate,
            args.limit,
        )
    except (OSError, ValueError) as exc:
        print(f"sender: {exc}", file=sys.stderr)
        sock.close()
        return 1
    _finish(sock)
    elapsed = time.monotonic() - start
    print(f"sent {count} messages, {total} bytes in {elapsed:.3f} seconds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
