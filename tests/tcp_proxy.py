"""A TCP proxy for outage tests: forwards bytes both ways, can be paused and resumed.

Usage::

    from tcp_proxy import TcpProxy

    with TcpProxy(target=("127.0.0.1", server_port)) as proxy:
        connect_to(proxy.port)
        proxy.pause()     # current connections closed, new ones refused
        proxy.resume()    # accepting again, on the same port

While paused the port stays bound by a socket that does not listen, so a connection
attempt is refused at once (ECONNREFUSED), while a plain ``bind`` or an outgoing
connection of another program cannot take the port meanwhile.

To put it between Kafka clients and a tansu broker, start the broker with the proxy's
address as its advertised listener (``tansu --advertised-listener-url``,
``TansuBroker(advertised=("127.0.0.1", proxy.port))`` in ``kafka_broker.py``): clients
then reach the broker only through the proxy. Pausing it is a broker outage that keeps
the broker's data (a restarted memory-storage tansu comes back empty).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

HOST = "127.0.0.1"


def _bind(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # The port's old connections may sit in TIME_WAIT after a pause.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError:
        s.close()
        raise
    return s


def _close(sock: socket.socket, reset: bool = False) -> None:
    """Close ``sock``, waking any thread blocked in ``recv`` on it; with ``reset``
    the peer gets an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)  # wakes recv, sends nothing
        else:
            sock.shutdown(socket.SHUT_RDWR)  # wakes recv, sends FIN
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forward connections accepted on ``host``:``listen_port`` (a free port when 0)
    to ``target`` (``(host, port)``), one thread per direction of each connection.

    A connection whose target refuses it is closed at once. :attr:`port` is the
    listening port; :attr:`accepted` counts the connections forwarded so far.
    """

    def __init__(
        self,
        listen_port: int = 0,
        target: tuple[str, int] = (HOST, 0),
        host: str = HOST,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = listen_port
        self.target = (target[0], int(target[1]))
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self._sock: socket.socket | None = None  # bound; listening unless paused
        self._paused = True
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._threads: set[threading.Thread] = set()

    # -- life cycle -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def paused(self) -> bool:
        return self._paused

    def start(self) -> TcpProxy:
        if self._sock is not None:
            raise RuntimeError("proxy already started")
        self._sock = _bind(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        self.resume()
        return self

    def resume(self) -> None:
        """Accept connections again, on the same port."""
        if self._sock is None:
            raise RuntimeError("proxy not started")
        if not self._paused:
            return
        self._sock.listen(64)
        self._sock.settimeout(0.05)  # the accept loop checks for a pause this often
        self._stop.clear()
        self._paused = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(self._sock,),
            name=f"tcp-proxy-accept-{self.port}",
            daemon=True,
        )
        self._accept_thread.start()

    def pause(self, reset: bool = False) -> None:
        """Close every current connection (with RST when ``reset``) and refuse new
        ones until :meth:`resume`. The port stays reserved by a non-listening socket."""
        if self._sock is None or self._paused:
            return
        self._paused = True
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join()
            self._accept_thread = None
        # A listening socket cannot stop listening: replace it by one bound, not listening.
        _close(self._sock)
        self._sock = _bind(self.host, self.port)
        self.drop_connections(reset=reset)

    def drop_connections(self, reset: bool = False) -> None:
        """Close every current connection, both sides; keep accepting new ones."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
            threads = list(self._threads)
            for c in conns:
                c.dropped = True
        for c in conns:
            _close(c.a, reset=reset)
            _close(c.b, reset=reset)
        for t in threads:
            t.join(timeout=5)

    def stop(self) -> None:
        """Close everything and free the port."""
        self.pause()
        if self._sock is not None:
            _close(self._sock)
            self._sock = None

    close = stop

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- forwarding ---------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.setblocking(True)
            if self._stop.is_set():
                _close(client)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
                upstream.setblocking(True)
            except OSError:
                _close(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            conn = _Connection(client, upstream)
            threads = [
                threading.Thread(target=self._pump, args=(conn, client, upstream), daemon=True),
                threading.Thread(target=self._pump, args=(conn, upstream, client), daemon=True),
            ]
            with self._lock:
                self._conns.add(conn)
                self._threads.update(threads)
            for t in threads:
                t.start()

    def _pump(self, conn: _Connection, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    if not conn.dropped:  # orderly EOF: pass the half-close on
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except OSError:
            conn.failed = True
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                conn.directions_done += 1
                finished = conn.failed or conn.directions_done == 2
                if finished:
                    self._conns.discard(conn)
            if finished and not conn.dropped:
                _close(conn.a)
                _close(conn.b)


class _Connection:
    """The two sockets of one forwarded connection."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.a = a
        self.b = b
        self.failed = False
        self.dropped = False  # closed by drop_connections()
        self.directions_done = 0
