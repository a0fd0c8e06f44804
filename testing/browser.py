"""demo.py in a real browser: the app started on a free port of 127.0.0.1, and Debian's headless Chromium driven
by Selenium through Debian's chromedriver (Selenium Manager is kept offline: it must download nothing), for
tests/test_demo.py (whose IPLAP_DEMO_SCREENSHOT run also retakes docs/demo.png). `.ci/run` installs the chromium and
chromium-driver packages where they are missing."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"


def browser_missing() -> str | None:
    """Why no browser can be driven here (one line saying how to install it); None when both files exist."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    return f"{', '.join(absent)} not found: install Debian's browser with `{INSTALL}`" if absent else None


def chromium(width: int = 1280, height: int = 1000, flags: tuple[str, ...] = (), eager: bool = False):
    """A headless Chromium (Selenium WebDriver) with a window of `width` x `height` pixels and extra command-line
    `flags`; `eager`: a page counts as loaded once its DOM is (a page holding a live stream never finishes
    loading)."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a browser or driver online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                 "--autoplay-policy=no-user-gesture-required", *flags):
        options.add_argument(flag)  # --no-sandbox: CI runs as root
    if eager:
        options.page_load_strategy = "eager"
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def demo_server(arguments: list[str], log: Path, env: dict | None = None, timeout: float = 120.0) -> Iterator[str]:
    """demo.py run with `arguments` (plus --host and a free --port) as a subprocess whose output goes to `log`;
    yields its address once it answers, and stops it at the end."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, str(REPO / "demo.py"), "--host", "127.0.0.1", "--port",
                                   str(port), *arguments], stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, cwd=REPO)
        try:
            wait_for(lambda: _answers(url) or server.poll() is not None, timeout, f"demo.py at {url}")
            if server.poll() is not None:
                raise RuntimeError(f"demo.py stopped with status {server.returncode}:\n{log.read_text()}")
            yield url
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.25):
    """The first true value of `condition()`, polled every `every` seconds; TimeoutError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:g} s for {what}")


class DemoPage:
    """demo.py's page in a browser, by the elem_ids the page gives its parts."""

    def __init__(self, driver, url: str, new_tab: bool = False):
        from selenium.webdriver.common.by import By

        self.driver, self.by = driver, By
        if new_tab:  # another visitor: a page load is a Gradio session of its own
            driver.switch_to.new_window("tab")
        self.window = driver.current_window_handle
        driver.get(url)
        wait_for(lambda: self.find("#start"), 60, "the page to load")

    def find(self, selector: str):
        if self.driver.current_window_handle != self.window:
            self.driver.switch_to.window(self.window)
        found = self.driver.find_elements(self.by.CSS_SELECTOR, selector)
        return found[0] if found else None

    def upload(self, part: str, path: Path) -> None:
        """Put a file into the upload part `part` (template or audio), clearing what it held."""
        clear = self.find(f"#{part} button[aria-label='Clear']")
        if clear is not None:
            clear.click()
        wait_for(lambda: self.find(f"#{part} input[type=file]"), 10, f"{part}'s upload field").send_keys(str(path))
        wait_for(lambda: self.find(f"#{part} button[aria-label='Clear']"), 30, f"{part}'s upload to finish")

    def open(self, section: str) -> None:
        """Unfold the accordion `section` (its fields are not in the page while it is folded)."""
        self.find(f"#{section} .label-wrap").click()

    def type(self, part: str, value: str) -> None:
        """Replace the text of the field `part` (a textbox or a number)."""
        field = self.find(f"#{part} textarea") or self.find(f"#{part} input")
        field.clear()
        field.send_keys(value)

    def status(self) -> str:
        return self.find("#status textarea").get_attribute("value")

    def progress(self) -> str:
        """The progress text Gradio shows over the outputs while a dub runs ('' when none)."""
        self.find("body")
        parts = self.driver.find_elements(self.by.CSS_SELECTOR, ".progress-text, .progress-level-inner, .meta-text")
        return " ".join(part.text for part in parts)

    def dub(self, timeout: float = 300.0) -> str:
        """Press Dub and wait for the status line to change: the new line."""
        before = self.status()
        self.find("#start").click()
        return wait_for(lambda: self.status() != before and self.status(), timeout, "the dub's status line")

    def video_source(self, part: str) -> str | None:
        """The URL the <video> element of the output `part` plays (None when it shows none)."""
        video = self.find(f"#{part} video")
        return video.get_attribute("src") if video is not None else None
