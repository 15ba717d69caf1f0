"""Background-thread uvicorn server that runs the emulator on a loopback address."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import Scope

from airflow_provider_sepa.emulator.app import create_app
from airflow_provider_sepa.emulator.config import EmulatorConfig
from airflow_provider_sepa.emulator.fault_injector import FaultInjector
from airflow_provider_sepa.emulator.state import EmulatorState

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: Maximum seconds that :meth:`EmulatorServer.start` waits for uvicorn to serve.
START_TIMEOUT_SECONDS = 10.0
#: Maximum seconds that :meth:`EmulatorServer.stop` waits for the server thread to end.
STOP_TIMEOUT_SECONDS = 10.0


def validate_loopback_host(host: str) -> str:
    """Return ``host`` if it is a loopback IP address, else raise ValueError.

    Only IP literals are accepted, so that no name lookup can resolve to another interface.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"Invalid host {host!r}: use a loopback IP address such as 127.0.0.1.") from None
    if not address.is_loopback:
        raise ValueError(f"Invalid host {host!r}: the emulator binds only to loopback addresses.")
    return host


class EmulatorServer:
    """Emulator served by uvicorn in a daemon thread, usable as a context manager.

    ``port=0`` binds a free port, which :attr:`port` and :attr:`url` report after
    :meth:`start`. :meth:`stop` shuts the server down, stops file generation and removes
    the data directory when the state created it.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        port: int = 0,
        host: str = DEFAULT_HOST,
        log_level: str = "warning",
    ) -> None:
        """Prepare a server for ``config`` without binding or starting it."""
        self._config = config if config is not None else EmulatorConfig()
        self._host = validate_loopback_host(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"Invalid port {port}: use 0 for a free port or 1 to 65535.")
        self._requested_port = port
        self._log_level = log_level
        self._state: EmulatorState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

    @property
    def config(self) -> EmulatorConfig:
        """Configuration of this server."""
        return self._config

    @property
    def state(self) -> EmulatorState:
        """State of the server, still readable after :meth:`stop`. Raise RuntimeError before :meth:`start`."""
        if self._state is None:
            raise RuntimeError("The emulator server is not started: call start() first.")
        return self._state

    @property
    def faults(self) -> FaultInjector:
        """Fault rules of the running emulator, the same object as ``state.faults``."""
        return self.state.faults

    @property
    def port(self) -> int:
        """Bound TCP port. Raise RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("The emulator server is not started: call start() first.")
        return self._port

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:54321``, without a trailing slash."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self) -> EmulatorServer:
        """Bind the socket, start uvicorn in a thread and wait until it serves.

        Raise RuntimeError when the server does not start within START_TIMEOUT_SECONDS,
        and OSError when the port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("The emulator server is already started.")

        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._port = sock.getsockname()[1]

        self._state = EmulatorState(self._config)
        uvicorn_config = uvicorn.Config(
            create_app(self._state, close_connection=self._close_connection),
            log_level=self._log_level,
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(uvicorn_config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"sepa-emulator-{self._port}",
            daemon=True,
        )
        self._thread.start()

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The emulator server did not start on {self._host}:{self._port}.")
            time.sleep(0.01)
        log.info("SEPA emulator serving at %s for tenant %s", self.url, self._config.tenant)
        return self

    def stop(self) -> None:
        """Shut the server down, stop file generation and release the data directory.

        Calling it again, or before :meth:`start`, does nothing.
        """
        if self._state is not None:
            # Delayed requests would otherwise hold the graceful shutdown back.
            self._state.faults.cancel_delays()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_SECONDS)
            if self._thread.is_alive():
                log.warning("The emulator server thread did not stop within %s seconds", STOP_TIMEOUT_SECONDS)
        if self._socket is not None:
            self._socket.close()
        if self._state is not None:
            self._state.close()
        if self._thread is not None:
            log.info("SEPA emulator at %s stopped", self.url)
        self._server = None
        self._thread = None
        self._socket = None

    def _close_connection(self, scope: Scope) -> bool:
        """Close the client connection of ``scope`` and return whether it was found.

        Runs on the server's event loop, from the ASGI application. The transport's
        close() sends the data already written, then ends the connection.
        """
        # NOTE: uvicorn does not document Server.server_state.connections, nor the client
        # and transport attributes of its protocol objects. Checked with uvicorn 0.55.0,
        # for both the httptools and the h11 protocol.
        server = self._server
        client = scope.get("client")
        if server is None or client is None:
            return False
        for connection in list(server.server_state.connections):
            if getattr(connection, "client", None) == tuple(client):
                transport = getattr(connection, "transport", None)
                if transport is None:
                    return False
                transport.close()
                return True
        return False

    def __enter__(self) -> EmulatorServer:
        """Start the server and return it."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
