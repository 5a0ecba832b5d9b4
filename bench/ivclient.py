"""What the bench scripts share to talk to a daemon: HTTP/1.1 over its Unix socket, a free
loopback port for its health listener, and the environment of a throw-away daemon."""
import http.client
import os
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


def daemon_env(model, tmp, sock, port, extra=None):
    """The environment of a daemon for one bench run: `model`, its socket, health port, state and
    cache under `tmp`, one warmup, terse text logs; `extra` (IV_* settings) last."""
    e = dict(os.environ)
    e.update({
        "IV_MODEL": model, "IV_SOCKET_PATH": sock, "IV_HTTP_ADDR": f"127.0.0.1:{port}",
        "IV_STATE_DIR": os.path.join(tmp, "state"), "IV_CACHE_DIR": os.path.join(tmp, "cache"),
        "IV_WARMUP_ITERATIONS": "1", "IV_LOG_FORMAT": "text", "IV_LOG_LEVEL": "warn",
    })
    e.update(extra or {})
    return e
