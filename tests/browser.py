"""A headless Chromium driven through the Chrome DevTools Protocol (a websocket), for the viewer's browser test: load a
page, run JavaScript, press keys, take screenshots. Needs a ``chromium`` (or Chrome) binary and the ``websockets``
package (viser depends on it); :func:`find_chromium` says whether one is there."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("GFT_CHROMIUM")
    return env if env and Path(env).is_file() else next((p for n in NAMES if (p := shutil.which(n))), None)


class Browser:
    """One headless Chromium page at ``url`` (a context manager; ``close`` ends the browser)."""

    def __init__(self, url: str, width: int = 1200, height: int = 800, binary: str | None = None,
                 timeout: float = 60.0) -> None:
        from websockets.sync.client import connect

        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("no chromium binary")
        self.profile = tempfile.mkdtemp(prefix="gft-chromium-")
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--no-first-run",
                "--no-default-browser-check", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist", f"--window-size={width},{height}", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", url]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{binary}: no DevTools port (exit status {self.proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            pages = [t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                     if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not pages:
            self.close()
            raise RuntimeError(f"{binary}: no page target")
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=timeout)
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        """Send one CDP command and return its result (events in between are skipped)."""
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript error: {r['exceptionDetails']}")
        return r["result"].get("value")

    def press(self, key: str, code: int) -> None:
        """Press and release a key (``key`` as the DOM names it, ``code`` its Windows virtual key code)."""
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def screenshot(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the page."""
        import cv2

        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy()

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
