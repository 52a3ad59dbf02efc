"""A local S3 for tests: moto's server in a separate process on 127.0.0.1, which tests can pause to fake an outage.

A separate process (not moto's in-process mock) means requests cross a real socket, so timeouts, retries and
connection failures behave as they do against AWS. Tests must apply `env()` so that boto3 talks only to this
server with dummy credentials and never looks for real ones.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

STARTUP_TIMEOUT_S = 60.0  # a loaded CI machine can take a while to import moto
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05

# Variables that would make boto3 reach for real credentials, another endpoint or a proxy; tests remove them.
CLEARED_ENV_VARS = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


def free_port() -> int:
    """A TCP port nothing listens on right now (also the way to get an unreachable endpoint)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """`moto_server` from this interpreter's environment, listening on 127.0.0.1:`port`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The AWS_* variables a test sets: dummy credentials, a region, this endpoint, no metadata probing."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            # Without this, a credential lookup that misses would wait on the EC2 instance-metadata service.
            "AWS_EC2_METADATA_DISABLED": "true",
            # Shared files could name a profile or endpoint; pointing at nothing keeps tests hermetic.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            # A proxy from the environment must not intercept requests to the local server.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def start(self) -> MotoServer:
        """Start the server and wait until it answers HTTP; RuntimeError with its output if it does not."""
        executable = Path(sys.executable).parent / "moto_server"
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV_VARS} | self.env()
        # A file, not a pipe: the server logs every request, and an unread pipe would fill up and block it.
        self._log = tempfile.NamedTemporaryFile(prefix="moto-server-", suffix=".log")
        self.process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                returncode = self.process.returncode
                output = self.log_tail()
                self.stop()
                raise RuntimeError(f"moto_server exited with {returncode}: {output}")
            if self._answers():
                return self
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint_url} within {STARTUP_TIMEOUT_S} s")

    def _answers(self) -> bool:
        # No proxy handler: a proxy from the environment must not answer in the server's place.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: the socket still accepts connections but nothing answers, like a hung S3; data is kept."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: undo `pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server (resuming it first, so a paused one can handle SIGTERM) and reap it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's output, for failure messages."""
        if self._log is None:
            return ""
        self._log.flush()
        with open(self._log.name, "rb") as log:
            return log.read().decode(errors="replace")[-chars:]

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
