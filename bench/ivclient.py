"""What the bench scripts share to talk to a daemon: HTTP/1.1 over its Unix socket, and a free
loopback port for its health listener."""
import http.client
import socket


class UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the daemon's detection socket)."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def free_port():
    """A loopback port nobody listens on right now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
