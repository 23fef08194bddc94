"""The outage helper of ``tests/tcp_proxy.py``: an echo server reached through the proxy,
paused (connections closed, new ones refused), resumed (works again, same port)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from tcp_proxy import TcpProxy

HOST = "127.0.0.1"


class EchoServer:
    """Echoes every byte back; counts the connections it accepted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=5)


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed ``sock`` (EOF or reset) within the socket's timeout."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_forwards_both_ways(echo):
    with TcpProxy(target=(HOST, echo.port)) as proxy:
        assert proxy.port not in (0, echo.port)
        with connect(proxy.port) as a, connect(proxy.port) as b:
            big = bytes(range(256)) * 4096  # 1 MiB, many recv/send rounds
            assert roundtrip(a, big) == big
            assert roundtrip(b, b"hello") == b"hello"
        assert proxy.accepted == 2


def test_half_close_is_passed_on(echo):
    with TcpProxy(target=(HOST, echo.port)) as proxy, connect(proxy.port) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(100):
            got += chunk
        assert got == b"last words"  # echoed, then EOF from the server passed back


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_pause_closes_refuses_and_resume_works_again(echo, reset):
    with TcpProxy(target=(HOST, echo.port)) as proxy:
        port = proxy.port
        s = connect(port)
        assert roundtrip(s, b"before") == b"before"

        t0 = time.monotonic()
        proxy.pause(reset=reset)
        assert time.monotonic() - t0 < 10  # pause does not wait for the peers
        assert proxy.paused
        assert closed_by_peer(s)
        s.close()
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                connect(port)
        assert echo.connections == 1

        proxy.resume()
        assert proxy.port == port and not proxy.paused
        with connect(port) as s2:
            assert roundtrip(s2, b"after") == b"after"
        assert echo.connections == 2

        # Pausing twice and resuming twice is harmless.
        proxy.pause()
        proxy.pause()
        proxy.resume()
        proxy.resume()
        with connect(port) as s3:
            assert roundtrip(s3, b"again") == b"again"


def test_drop_connections_keeps_accepting(echo):
    with TcpProxy(target=(HOST, echo.port)) as proxy:
        s = connect(proxy.port)
        assert roundtrip(s, b"x") == b"x"
        proxy.drop_connections()
        assert closed_by_peer(s)
        s.close()
        with connect(proxy.port) as s2:
            assert roundtrip(s2, b"y") == b"y"


def test_fixed_listen_port_and_unreachable_target(echo):
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        wanted = probe.getsockname()[1]
    with socket.socket() as dead:
        dead.bind((HOST, 0))
        dead_port = dead.getsockname()[1]  # nothing listens there
    with TcpProxy(listen_port=wanted, target=(HOST, dead_port)) as proxy:
        assert proxy.port == wanted
        with connect(wanted) as s:  # accepted, then closed: the target refused
            s.settimeout(5)
            assert s.recv(1) == b""
        proxy.target = (HOST, echo.port)  # the target can change while running
        with connect(wanted) as s:
            assert roundtrip(s, b"ok") == b"ok"


def test_stop_frees_the_port(echo):
    proxy = TcpProxy(target=(HOST, echo.port)).start()
    port = proxy.port
    proxy.pause()
    proxy.stop()
    with socket.socket() as s:  # no connection was made: no TIME_WAIT, a plain bind works
        s.bind((HOST, port))


def test_paused_port_stays_reserved(echo):
    with TcpProxy(target=(HOST, echo.port)) as proxy:
        proxy.pause()
        with socket.socket() as s, pytest.raises(OSError):
            s.bind((HOST, proxy.port))
