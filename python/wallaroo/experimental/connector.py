"""The connector scripts' side (``wallaroo.experimental.SourceConnector`` /
``SinkConnector``), for Wallaroo 0.5 and 0.6 applications alike.

A script is run as ``SCRIPT --application-module APP --connector NAME
--NAME-param value ...``. It imports the application, calls its
``application_setup`` with the script's whole command line and finds the
connector ``NAME`` in what that returned: a 0.5 ``build()`` list (the
``source_connector``/``sink_connector`` actions; 0.5 frames, host 127.0.0.1)
or a 0.6 ``build_application`` tree (the connector configs of its sources and
sinks; 0.6 frames, the config's host). ``SourceConnector.write`` sends a
record to the application's source connector; ``SinkConnector.read``
returns the next record the application's sink connector sent.
"""

from __future__ import annotations

import argparse
import errno
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

#: The 0.5 connector scripts dialled this host whatever the application said.
_HOST05 = "127.0.0.1"


class UnexpectedSocketError(Exception):
    """The sink connector's listening socket failed."""


def _connector_prefix(args: list) -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--connector", dest="connector_name")
    return parser.parse_known_args(args)[0].connector_name


def parse_connector_args(
    args: list, required_params: Sequence[str] = (), optional_params: Sequence[str] = ()
) -> argparse.Namespace:
    """``--application-module`` (``.application``), ``--connector``
    (``.connector_name``) and each ``--<connector>-<param>`` as ``.param``;
    other flags are left alone (they are the application's)."""
    prefix = _connector_prefix(args) or "CONNECTOR_NAME"
    parser = argparse.ArgumentParser()
    parser.add_argument("--application-module", dest="application", required=True)
    parser.add_argument("--connector", dest="connector_name", required=True)
    for key in required_params:
        parser.add_argument(f"--{prefix}-{key}", dest=key, required=True)
    for key in optional_params:
        parser.add_argument(f"--{prefix}-{key}", dest=key)
    return parser.parse_known_args(args)[0]


class _Connector:
    """What both kinds of script share: the parameters and the application's
    connector of that name."""

    _role = ""

    def __init__(
        self,
        args: list | None = None,
        required_params: Sequence[str] = (),
        optional_params: Sequence[str] = (),
    ) -> None:
        argv = list(args or sys.argv)
        self.params = parse_connector_args(argv, required_params, optional_params)
        app = _application(self.params.application, argv)
        from wallaroo.plan import _is_pipeline_app

        self._version = "0.6" if _is_pipeline_app(app) else "0.5"
        name = self.params.connector_name
        find = _find06 if self._version == "0.6" else _find05
        found = find(app, self._role, name)
        if found is None:
            message = f"Unable to find a {self._role} connector with the name {name}"
            if self._version == "0.6":
                raise RuntimeError(message)
            # 0.5 printed this and exited with -1.
            print(message)
            sys.exit(-1)
        self._host, self._port, self._encoder, self._decoder = found


def _application(module_name: str, argv: list) -> Any:
    """``application_setup(argv)`` of the application module (imported the
    way the runner imports it: from the current directory or a path, Python 2
    modules translated)."""
    from wallaroo.loader import load_app

    return load_app(module_name).application_setup(argv)


def _find05(actions: Any, role: str, name: str) -> tuple | None:
    """A 0.5 ``(source|sink)_connector`` action: ``(verb, name, port, encoder, decoder)``."""
    for action in actions if isinstance(actions, (list, tuple)) else ():
        if isinstance(action, tuple) and action[:2] == (f"{role}_connector", name):
            _, _, port, encoder, decoder = action
            return (_HOST05, port, encoder, decoder)
    return None


def _find06(app: tuple, role: str, name: str) -> tuple | None:
    """A 0.6 connector config tuple ``(kind, name, host, port, encoder, decoder)``
    among the sources (``role="source"``) or the sinks of ``to_sink`` and
    ``to_sinks`` (0.6's scripts looked at ``to_sink`` only)."""
    for stages in app[2]:
        for stage in stages:
            if role == "source" and stage[0] == "source":
                configs = [stage[2]]
            elif role == "sink" and stage[0] == "to_sink":
                configs = [stage[1]]
            elif role == "sink" and stage[0] == "to_sinks":
                configs = list(stage[1])
            else:
                continue
            for config in configs:
                if isinstance(config, tuple) and config[:2] == (f"{role}_connector", name):
                    _, _, host, port, encoder, decoder = config
                    return (host, port, encoder, decoder)
    return None


class SourceConnector(_Connector):
    """Writes records into the application's source connector ``--connector``."""

    _role = "source"
    _conn: socket.socket | None = None

    def connect(self, host: str | None = None, port: Any = None) -> None:
        """Connect to the application, trying again every second while it is not there."""
        while True:
            conn = socket.socket()
            try:
                conn.connect((host or self._host, int(port or self._port)))
            except OSError as err:
                conn.close()
                if err.errno != errno.ECONNREFUSED:
                    raise
                time.sleep(1)
                continue
            self._conn = conn
            return

    def write(self, message: Any, event_time: Any = 0) -> None:
        """Send ``message`` (its frame made by the connector's encoder; the
        event time goes into 0.6 frames only)."""
        if self._conn is None:
            raise RuntimeError("Please call connect before writing")
        if self._version == "0.6":
            frame = self._encoder.encode(message, event_time)
        else:
            frame = self._encoder.encode(message)
        self._conn.sendall(frame)

    def close(self) -> None:
        """Close the connection (the application sees the end of this stream)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SinkConnector(_Connector):
    """Receives the records the application's sink connector ``--connector`` writes."""

    _role = "sink"
    _acceptor: socket.socket | None = None
    #: Each connection's bytes not yet read as a record.
    _buffers: dict

    def listen(self, host: str | None = None, port: Any = None, backlog: int = 0) -> None:
        """Listen where the application's sink connector connects."""
        acceptor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        acceptor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        acceptor.bind((host or self._host, int(port or self._port)))
        acceptor.listen(backlog)
        self._acceptor = acceptor
        self._buffers = {}

    @property
    def port(self) -> int:
        """The port listened on (the application's, or the one given to ``listen``)."""
        if self._acceptor is None:
            return int(self._port)
        return self._acceptor.getsockname()[1]

    def read(self, timeout: float | None = None) -> Any:
        """The next record from any connection, decoded by the connector's decoder.

        ``timeout`` (seconds): raise ``TimeoutError`` when nothing complete
        arrived by then (0.5 and 0.6 waited on, whatever the timeout).
        """
        if self._acceptor is None:
            raise RuntimeError("Please call listen before reading")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for buffer in self._buffers.values():
                message = self._take_frame(buffer)
                if message is not None:
                    return message[0]
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError(f"no record within {timeout} s")
            self._wait(wait)

    def _take_frame(self, buffer: bytearray) -> tuple | None:
        header_length = self._decoder.header_length()
        if len(buffer) < header_length:
            return None
        end = header_length + self._decoder.payload_length(bytes(buffer[:header_length]))
        if len(buffer) < end:
            return None
        data = bytes(buffer[header_length:end])
        del buffer[:end]
        return (self._decoder.decode(data),)

    def _wait(self, timeout: float | None) -> None:
        assert self._acceptor is not None
        sockets = [self._acceptor, *self._buffers]
        readable, _, broken = select.select(sockets, [], sockets, timeout)
        if self._acceptor in broken:
            self._acceptor.close()
            raise UnexpectedSocketError()
        for conn in broken:
            self._drop(conn)
        for sock in readable:
            if sock is self._acceptor:
                conn, _ = sock.accept()
                conn.setblocking(False)
                self._buffers[conn] = bytearray()
            elif sock in self._buffers:
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    self._buffers[sock] += data
                else:
                    # Closed. Its complete frames were read before waiting;
                    # a partial one left can never complete.
                    self._drop(sock)

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        conn.close()
