"""Listen on a TCP address and collect what arrives: a test tool for Wallaroo TCP sinks.

Run it as ``python -m wallaroo.receiver --listen HOST:PORT [--framed] ...``. At start
it prints ``listening on HOST:PORT`` to stderr (port 0 picks a free port, and the
line shows the real one), then accepts any number of connections, concurrently, and
writes what they send to ``--output`` (stdout by default):

* with ``--framed``, the stream of each connection is parsed as length-framed
  messages (header packed with ``--length-fmt``, default ``>I``) and each payload is
  written followed by a newline, or, with ``--no-newline``, as it came (header and
  payload);
* without ``--framed``, the bytes are written exactly as received.

``--count N`` (framed) or ``--bytes N`` (raw) makes it exit with code 0 once that
many messages or bytes have been written (exactly that many: anything after is
dropped). ``--timeout S`` makes it exit with code 1 when no data arrived for ``S``
seconds. Without either it runs until interrupted.

For tests, :class:`Receiver` does the same in-process on daemon threads::

    with Receiver(port=0) as rx:
        send_messages("127.0.0.1", rx.port, [b"a", b"b"])
        assert rx.wait_for(2, timeout=5)
        assert rx.messages() == [b"a", b"b"]
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import sys
import threading
import time
from types import TracebackType
from typing import BinaryIO, Callable

__all__ = ["Receiver", "build_parser", "main"]

_RECV = 256 * 1024

#: Called (under the receiver's lock, so calls never overlap) with each chunk of
#: bytes read from a connection and the complete framed payloads it finished.
DataCallback = Callable[[bytes, list[bytes]], None]


class Receiver:
    """A TCP listener that records the messages (or raw bytes) it is sent.

    ``length_fmt`` is the ``struct`` format of the length header of each message
    (``">I"`` by default); ``None`` means raw mode, where bytes are only recorded as
    they come. Each connection is read by its own daemon thread, so several senders
    may connect at once; within a connection, messages keep their order.

    ``keep=False`` stops the receiver from keeping messages and bytes in memory
    (counters still advance), for long runs that only use ``on_data``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        length_fmt: str | None = ">I",
        *,
        on_data: DataCallback | None = None,
        keep: bool = True,
    ) -> None:
        """Configure the receiver; nothing is bound until :meth:`start`."""
        self.host = host
        self._requested_port = port
        self.length_fmt = length_fmt
        self.header_length = struct.calcsize(length_fmt) if length_fmt is not None else 0
        self._on_data = on_data
        self._keep = keep
        self._cond = threading.Condition()
        self._messages: list[bytes] = []
        self._raw = bytearray()
        self._message_count = 0
        self._byte_count = 0
        self._connections = 0
        self._open_connections = 0
        self._incomplete = 0
        self._errors: list[Exception] = []
        self._last_data = time.monotonic()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Receiver:
        """Bind, listen and start the accept thread; return ``self``."""
        if self._listener is not None:
            raise RuntimeError("receiver already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        name = sock.getsockname()
        self._address = (name[0], name[1])
        self._last_data = time.monotonic()
        t = threading.Thread(target=self._accept_loop, name="receiver-accept", daemon=True)
        self._threads.append(t)
        t.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every connection and wait briefly for the threads."""
        self._stopping.set()
        with self._cond:
            conns = list(self._conns)
            self._cond.notify_all()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Receiver:
        """Start the receiver (if not started yet) and return it."""
        if self._listener is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the receiver."""
        self.stop()

    # -- results -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; only valid after :meth:`start`."""
        if self._address is None:
            raise RuntimeError("receiver not started")
        return self._address

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        return self.address[1]

    @property
    def connections(self) -> int:
        """How many connections have been accepted so far."""
        with self._cond:
            return self._connections

    @property
    def open_connections(self) -> int:
        """How many accepted connections are still open."""
        with self._cond:
            return self._open_connections

    @property
    def message_count(self) -> int:
        """How many complete framed messages have been received."""
        with self._cond:
            return self._message_count

    @property
    def byte_count(self) -> int:
        """How many bytes have been received in all (headers included)."""
        with self._cond:
            return self._byte_count

    @property
    def incomplete(self) -> int:
        """Bytes of unfinished frames left when connections closed (framed mode)."""
        with self._cond:
            return self._incomplete

    @property
    def last_data(self) -> float:
        """``time.monotonic()`` of the last data received (or of the start)."""
        with self._cond:
            return self._last_data

    @property
    def errors(self) -> list[Exception]:
        """Exceptions raised by the ``on_data`` callback so far."""
        with self._cond:
            return list(self._errors)

    def set_on_data(self, on_data: DataCallback | None) -> None:
        """Replace the ``on_data`` callback; once this returns, the old one is not running."""
        with self._cond:
            self._on_data = on_data

    def messages(self) -> list[bytes]:
        """A copy of the payloads received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def raw(self) -> bytes:
        """All bytes received so far, as they came (headers included)."""
        with self._cond:
            return bytes(self._raw)

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until ``n`` messages (framed mode) or ``n`` bytes (raw mode) arrived.

        Returns ``True`` if they did within ``timeout`` seconds, ``False`` otherwise.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._progress() < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return self._progress() >= n
                self._cond.wait(remaining)
            return True

    def wait_idle(self, idle: float, timeout: float = 10.0) -> bool:
        """Wait until no data has arrived for ``idle`` seconds; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            quiet_until = self.last_data + idle
            if now >= quiet_until:
                return True
            if now >= deadline:
                return False
            time.sleep(min(quiet_until, deadline) - now)

    def _progress(self) -> int:
        """Messages (framed) or bytes (raw) so far; call with the lock held."""
        return self._message_count if self.length_fmt is not None else self._byte_count

    # -- threads -----------------------------------------------------------

    def _accept_loop(self) -> None:
        """Accept connections until stopped, starting one reader thread for each."""
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.settimeout(None)
            with self._cond:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._connections += 1
                self._open_connections += 1
                self._conns.append(conn)
                index = self._connections
            t = threading.Thread(
                target=self._read_loop, args=(conn,), name=f"receiver-conn-{index}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _read_loop(self, conn: socket.socket) -> None:
        """Read one connection to its end, recording data and parsing frames."""
        buf = bytearray()
        fmt = self.length_fmt
        hlen = self.header_length
        try:
            while True:
                try:
                    data = conn.recv(_RECV)
                except OSError:
                    break
                if not data:
                    break
                done: list[bytes] = []
                if fmt is not None:
                    buf += data
                    pos = 0
                    while len(buf) - pos >= hlen:
                        (size,) = struct.unpack_from(fmt, buf, pos)
                        end = pos + hlen + size
                        if len(buf) < end:
                            break
                        done.append(bytes(buf[pos + hlen : end]))
                        pos = end
                    if pos:
                        del buf[:pos]
                with self._cond:
                    self._byte_count += len(data)
                    self._message_count += len(done)
                    self._last_data = time.monotonic()
                    if self._keep:
                        self._raw += data
                        self._messages.extend(done)
                    if self._on_data is not None:
                        try:
                            self._on_data(data, done)
                        except Exception as exc:  # kept for the caller, not lost
                            self._errors.append(exc)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._incomplete += len(buf)
                self._open_connections -= 1
                if conn in self._conns:
                    self._conns.remove(conn)
                self._cond.notify_all()
            conn.close()


def _parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` allowed; empty host = 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m wallaroo.receiver``."""
    p = argparse.ArgumentParser(
        prog="python -m wallaroo.receiver",
        description="Listen on a TCP address and write what arrives to a file or stdout.",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=_parse_address,
        default=("127.0.0.1", 0),
        help="address to listen on; port 0 = a free port (default 127.0.0.1:0)",
    )
    p.add_argument("--output", metavar="PATH", help="file to write to (default stdout)")
    p.add_argument(
        "--framed",
        action="store_true",
        help="parse length-framed messages and write one payload per line",
    )
    p.add_argument(
        "--length-fmt",
        default=">I",
        metavar="FMT",
        help="struct format of the length header with --framed (default >I)",
    )
    p.add_argument(
        "--no-newline",
        action="store_true",
        help="with --framed, write each message as received (header + payload), no newline",
    )
    p.add_argument("--count", type=int, metavar="N", help="with --framed, exit 0 after N messages")
    p.add_argument("--bytes", type=int, metavar="N", help="without --framed, exit 0 after N bytes")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="exit 1 if no data arrived for S seconds",
    )
    return p


class _Writer:
    """Writes received data to the output, stopping exactly at a count limit."""

    def __init__(
        self,
        out: BinaryIO,
        length_fmt: str | None,
        newline: bool,
        count: int | None,
        nbytes: int | None,
    ) -> None:
        """Write to ``out``; ``count``/``nbytes`` cap messages/bytes written."""
        self.out = out
        self.length_fmt = length_fmt
        self.newline = newline
        self.count_left = count
        self.bytes_left = nbytes
        self.closed = False
        self.reached = threading.Event()
        if count == 0 or nbytes == 0:
            self.reached.set()

    def __call__(self, data: bytes, messages: list[bytes]) -> None:
        """Receive a chunk from :class:`Receiver` (called under its lock)."""
        if self.closed or self.reached.is_set():
            return
        if self.length_fmt is None:
            if self.bytes_left is not None:
                data = data[: self.bytes_left]
                self.bytes_left -= len(data)
                if self.bytes_left <= 0:
                    self.reached.set()
            self.out.write(data)
        else:
            if self.count_left is not None:
                messages = messages[: self.count_left]
                self.count_left -= len(messages)
                if self.count_left <= 0:
                    self.reached.set()
            if self.newline:
                self.out.write(b"".join(m + b"\n" for m in messages))
            else:
                fmt = self.length_fmt
                self.out.write(b"".join(struct.pack(fmt, len(m)) + m for m in messages))
        self.out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the receiver command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count is not None and not args.framed:
        parser.error("--count needs --framed (use --bytes for raw data)")
    if args.bytes is not None and args.framed:
        parser.error("--bytes is for raw data (use --count with --framed)")
    if args.no_newline and not args.framed:
        parser.error("--no-newline needs --framed")
    for name in ("count", "bytes"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name} must be >= 0")
    length_fmt: str | None = args.length_fmt if args.framed else None
    if length_fmt is not None:
        try:
            struct.calcsize(length_fmt)
        except struct.error:
            parser.error(f"bad --length-fmt {length_fmt!r}")

    out: BinaryIO = open(args.output, "wb") if args.output else sys.stdout.buffer
    writer = _Writer(out, length_fmt, not args.no_newline, args.count, args.bytes)
    host, port = args.listen
    rx = Receiver(host, port, length_fmt, on_data=writer, keep=False)
    try:
        rx.start()
    except OSError as exc:
        print(f"receiver: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    bound_host, bound_port = rx.address
    print(f"listening on {bound_host}:{bound_port}", file=sys.stderr, flush=True)

    code = 0
    try:
        while not writer.reached.is_set():
            if args.timeout is not None:
                idle = time.monotonic() - rx.last_data
                if idle >= args.timeout:
                    print(
                        f"receiver: no data for {args.timeout:g} seconds "
                        f"({rx.message_count} messages, {rx.byte_count} bytes received)",
                        file=sys.stderr,
                    )
                    code = 1
                    break
                wait = min(args.timeout - idle, 0.5)
            else:
                wait = 0.5
            writer.reached.wait(max(wait, 0.001))
    except KeyboardInterrupt:
        code = 0
    finally:
        rx.set_on_data(None)  # no write may be in progress while the output closes
        writer.closed = True
        out.flush()
        rx.stop(timeout=0.5)
        if out is not sys.stdout.buffer:
            out.close()
    errors = rx.errors
    if errors:
        print(f"receiver: error writing output: {errors[0]}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
