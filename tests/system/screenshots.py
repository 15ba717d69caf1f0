"""Take the documentation's screenshots of the Airflow UI with headless Chromium.

The script starts ``airflow standalone`` with the emulator (see :mod:`tests.system.standalone`)
in a temporary ``AIRFLOW_HOME``. It starts Chromium from Debian's ``chromium`` package with a
fresh profile and drives it through the Chrome DevTools Protocol over a WebSocket. The
``websockets`` package for that comes into the environment with ``uvicorn[standard]``, which
Airflow's dependencies install, and ``constraints.txt`` pins it. The script writes:

- ``docs/images/connection-form.png``: a new connection of type Emporix SEPA Export, with the
  standard fields under their labels API URL, Client ID and Client secret;
- ``docs/images/connection-form-extra.png``: the same form with its Extra Fields Tenant and Scope;
- ``docs/images/trigger-form.png``: the trigger form of ``sepa_export_on_demand``.

Chromium may load pages from 127.0.0.1 only. Every other request fails: names do not
resolve, other addresses go to a proxy port where nothing listens, and the script aborts
any request to another host that still reaches the network layer.

Usage::

    make screenshots
    python -m tests.system.screenshots --output docs/images
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.sync.client import ClientConnection, connect

from tests.system.standalone import LOOPBACK, PROJECT_ROOT, AirflowStandalone, free_port

#: The browser binary of Debian's chromium package. /usr/bin/chromium is a wrapper script
#: that adds extension and API-key settings, which a screenshot does not need.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium")
WINDOW_WIDTH = 1280
WINDOW_HEIGHT = 900
#: Maximum seconds to wait for Chromium to start, and for an element of the UI to appear.
BROWSER_TIMEOUT_SECONDS = 30.0
ELEMENT_TIMEOUT_SECONDS = 30.0


def find_chromium() -> str:
    """Return the path of the Chromium binary, or raise FileNotFoundError with the install command."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError("Chromium not found: install it with `apt-get install -y chromium`.")


def chromium_command(binary: str, profile: Path) -> list[str]:
    """Return the command line of a headless Chromium that reaches only 127.0.0.1."""
    unused_port = free_port()
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--metrics-recording-only",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # Requests to loopback bypass the proxy. Every other address goes to a port where nothing listens.
        f"--proxy-server=http://{LOOPBACK}:{unused_port}",
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {LOOPBACK}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}",
        "about:blank",
    ]


class DevToolsPage:
    """One browser tab, driven with Chrome DevTools Protocol commands."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket
        self._ids = itertools.count(1)
        self.blocked_urls: list[str] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command, handle the events that arrive before its reply, and return its result."""
        command_id = next(self._ids)
        self._websocket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._websocket.recv(timeout=ELEMENT_TIMEOUT_SECONDS))
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools command {method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if message.get("method") == "Fetch.requestPaused":
                self._filter_request(message["params"])

    def _filter_request(self, paused: dict[str, Any]) -> None:
        url = paused["request"]["url"]
        request_id = paused["requestId"]
        if urlsplit(url).hostname == LOOPBACK or url.startswith(("data:", "blob:")):
            message = {"method": "Fetch.continueRequest", "params": {"requestId": request_id}}
        else:
            self.blocked_urls.append(url)
            message = {
                "method": "Fetch.failRequest",
                "params": {"requestId": request_id, "errorReason": "BlockedByClient"},
            }
        # The reply to this command is read and ignored by the next send() loop.
        self._websocket.send(json.dumps({"id": next(self._ids), **message}))

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its value."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, condition: str) -> Any:
        """Evaluate ``expression`` until it returns a true value, and return that value."""
        deadline = time.monotonic() + ELEMENT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"Timed out after {ELEMENT_TIMEOUT_SECONDS:.0f} s waiting for {condition}.")

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until the document has loaded."""
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", f"{url} to load")

    def screenshot(self, path: Path) -> None:
        """Save the visible part of the page as a PNG file."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


def _devtools_websocket_url(profile: Path, process: subprocess.Popen[bytes]) -> str:
    """Return the WebSocket URL of the first tab, read from the port file Chromium writes."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + BROWSER_TIMEOUT_SECONDS
    while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
        if process.poll() is not None:
            raise RuntimeError(f"Chromium exited with status {process.returncode} before it opened DevTools.")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {BROWSER_TIMEOUT_SECONDS:.0f} s waiting for {port_file}.")
        time.sleep(0.2)
    port = int(port_file.read_text().splitlines()[0])
    import httpx

    targets = httpx.get(f"http://{LOOPBACK}:{port}/json/list", timeout=10).json()
    page = next(target for target in targets if target["type"] == "page")
    return str(page["webSocketDebuggerUrl"])


# JavaScript that finds a visible button by its text and returns the centre of its box,
# because the UI's components react to real pointer events rather than to element.click().
BUTTON_CENTRE = """
(() => {{
  const button = [...document.querySelectorAll({scope} + ' button')]
    .find((element) => element.textContent.trim() === {label} && element.offsetParent !== null);
  if (!button) return null;
  button.scrollIntoView({{block: 'center'}});
  const box = button.getBoundingClientRect();
  return [box.x + box.width / 2, box.y + box.height / 2];
}})()
"""
PAGE_HAS_TEXT = "document.body.innerText.includes({text})"


def _click_button(page: DevToolsPage, label: str, scope: str = "body") -> None:
    """Click the visible button whose text is ``label`` inside the elements that ``scope`` selects."""
    x, y = page.wait_for(
        BUTTON_CENTRE.format(scope=json.dumps(scope), label=json.dumps(label)), f"a button labelled {label!r}"
    )
    for event in ("mousePressed", "mouseReleased"):
        page.send("Input.dispatchMouseEvent", type=event, x=x, y=y, button="left", clickCount=1)


def _type_into(page: DevToolsPage, selector: str, text: str, field: str) -> None:
    """Focus the element that ``selector`` finds and type ``text`` into it, as a keyboard would."""
    page.wait_for(
        f"(() => {{ const element = document.querySelector({json.dumps(selector)});"
        " if (!element) return false; element.focus(); return true; })()",
        field,
    )
    page.send("Input.insertText", text=text)


def _choose_connection_type(page: DevToolsPage, hook_name: str) -> None:
    """Type ``hook_name`` into the connection type list of the form and pick the matching option."""
    _type_into(page, "[role=dialog] input[role=combobox]", hook_name, "the Connection Type field")
    option = json.dumps(hook_name)
    page.wait_for(
        f"(() => {{ const item = [...document.querySelectorAll('[role=dialog] [id*=-option-]')]"
        f".find((element) => element.textContent.trim() === {option}); if (!item) return false;"
        " item.click(); return true; })()",
        f"the option {hook_name!r}",
    )


def take_screenshots(airflow: AirflowStandalone, output: Path) -> list[Path]:
    """Open the two forms in Chromium and save their screenshots under ``output``."""
    binary = find_chromium()
    profile = Path(tempfile.mkdtemp(prefix="sepa-chromium-profile-"))
    process = subprocess.Popen(chromium_command(binary, profile), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with connect(_devtools_websocket_url(profile, process), max_size=None, open_timeout=10) as websocket:
            page = DevToolsPage(websocket)
            page.send("Fetch.enable", patterns=[{"urlPattern": "*"}])
            page.send("Page.enable")
            page.send(
                "Emulation.setDeviceMetricsOverride",
                width=WINDOW_WIDTH,
                height=WINDOW_HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            # The simple auth manager reads the JWT from this cookie, as after a login in the form.
            page.send(
                "Network.setCookie",
                name="_token",
                value=airflow.access_token(),
                domain=LOOPBACK,
                path="/",
                httpOnly=True,
            )
            paths = [*_connection_form(page, airflow, output), _trigger_form(page, airflow, output)]
            if page.blocked_urls:
                raise RuntimeError(f"The UI requested other hosts than {LOOPBACK}: {page.blocked_urls}")
            return paths
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def _connection_form(page: DevToolsPage, airflow: AirflowStandalone, output: Path) -> list[Path]:
    """Save the form of a new Emporix connection: its standard fields, then its extra fields.

    The form shows one section at a time, so each section gets its own screenshot.
    """
    page.navigate(f"{airflow.url}/connections")
    _click_button(page, "Add Connection")
    _type_into(page, "[role=dialog] input[name=connection_id]", "emporix_default", "the Connection ID field")
    _choose_connection_type(page, "Emporix SEPA Export")
    page.wait_for(PAGE_HAS_TEXT.format(text=json.dumps("Client secret")), "the relabelled standard fields")
    standard = output / "connection-form.png"
    page.screenshot(standard)

    _click_button(page, "Extra Fields", scope="[role=dialog]")
    _type_into(page, "[role=dialog] input[name=element_tenant]", "mytenant", "the Tenant field")
    page.wait_for(PAGE_HAS_TEXT.format(text=json.dumps("Scope")), "the Scope field")
    extra = output / "connection-form-extra.png"
    page.screenshot(extra)
    return [standard, extra]


def _trigger_form(page: DevToolsPage, airflow: AirflowStandalone, output: Path) -> Path:
    page.navigate(f"{airflow.url}/dags/sepa_export_on_demand")
    _click_button(page, "Trigger")
    page.wait_for(PAGE_HAS_TEXT.format(text=json.dumps("Site code")), "the Site code field")
    path = output / "trigger-form.png"
    page.screenshot(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Start Airflow in a temporary home, take the screenshots and stop Airflow."""
    parser = argparse.ArgumentParser(description="Take screenshots of the Airflow UI for the documentation.")
    parser.add_argument(
        "--output", type=Path, default=PROJECT_ROOT / "docs" / "images", help="folder for the PNG files"
    )
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="sepa-screenshots-airflow-"))
    try:
        with AirflowStandalone(home) as airflow:
            for path in take_screenshots(airflow, args.output.resolve()):
                print(f"Wrote {path}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
