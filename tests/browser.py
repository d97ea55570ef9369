"""Headless Chromium driven over the DevTools protocol: open a page, run JavaScript in it, screenshot it.

Debian's chromium (/usr/bin/chromium; .ci/run installs it), started with the flags that keep it off
the network, and websockets (a Prefect dependency) as the protocol's transport: no browser download.
"""
from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from websockets.sync.client import connect

from tests.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,900"]


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, capture a PNG."""

    def __init__(self, socket):
        self.socket, self.next_id = socket, 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, seconds: float = 60):
        """The expression's value once it is truthy; fails with what the page says after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.3)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 500) : ''")
        raise AssertionError(f"not true within {seconds} s: {expression}\npage: {text}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


@contextmanager
def chromium() -> Iterator[Page]:
    """A headless Chromium with one empty tab, stopped afterwards."""
    port = free_port()
    # Chromium's helper processes may still be writing the profile as the main one exits: a scratch
    # folder left behind is harmless, a failed cleanup is not a test failure.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                                    f"--remote-debugging-port={port}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    tabs = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                    tab = next(t for t in tabs if t["type"] == "page")
                    break
                except (httpx.HTTPError, StopIteration, ValueError):
                    assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
                    time.sleep(0.3)
            with connect(tab["webSocketDebuggerUrl"], max_size=None) as socket:
                page = Page(socket)
                page.call("Page.enable")
                yield page
        finally:
            process.terminate()
            process.wait(10)
