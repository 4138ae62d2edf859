"""A TCP forwarder on 127.0.0.1 that a test can partition: a network cut without root or namespaces.

::

    with TcpProxy(("127.0.0.1", sshd_port)) as proxy:
        connect to ("127.0.0.1", proxy.port)   # bytes flow both ways
        proxy.partition()   # nothing moves any more, in either direction, and no new connection is
                            # served; every socket stays open, as with a cable pulled between two hosts
        proxy.heal()        # what was sent meanwhile arrives now (like TCP's retransmissions), then
                            # closes are passed on

During a partition the kernel still completes new connections into the listen backlog (where a real
partition would leave the SYN unanswered): the client then waits for the server's first bytes, so
an SSH client still times out on the banner. Bytes sent into a partition are held in the kernel's
socket buffers, not dropped: when the partition heals they are delivered, as retransmissions would.
"""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType
from typing import cast

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards every connection to ``127.0.0.1:port`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._peer: dict[socket.socket, socket.socket] = {}
        self._partitioned = False
        self._stopped = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def partitioned(self) -> bool:
        return self._partitioned

    def partition(self) -> None:
        """Stop moving bytes and serving new connections (every socket stays open)."""
        with self._lock:
            self._partitioned = True
        self._wake()

    def heal(self) -> None:
        """Move bytes again: what was held back is delivered, then closes are passed on."""
        with self._lock:
            self._partitioned = False
        self._wake()

    def close(self) -> None:
        """Stop the proxy and close every connection through it."""
        with self._lock:
            self._stopped = True
        self._wake()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _drop(self, end: socket.socket) -> None:
        other = self._peer.pop(end, None)
        if other is not None:
            self._peer.pop(other, None)
        for s in (end, other):
            if s is not None:
                s.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setblocking(True)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peer[client] = server
        self._peer[server] = client

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            while True:
                with self._lock:
                    if self._stopped:
                        return
                    partitioned = self._partitioned
                watched: list[socket.socket] = [self._wake_r]
                if not partitioned:
                    watched += [self._listener, *self._peer]
                for s in watched:
                    sel.register(s, selectors.EVENT_READ)
                try:
                    events = sel.select(timeout=1.0)
                finally:
                    for s in watched:
                        sel.unregister(s)
                for key, _ in events:
                    s = cast(socket.socket, key.fileobj)
                    if s is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                    elif s is self._listener:
                        self._accept()
                    elif s in self._peer:
                        try:
                            data = s.recv(65536)
                            if data:
                                self._peer[s].sendall(data)
                                continue
                        except OSError:
                            pass
                        self._drop(s)
        finally:
            sel.close()
            for s in list(self._peer):
                s.close()
            self._peer.clear()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
