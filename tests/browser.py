"""Real headless Chromium for the web app tests: Debian's chromium and chromedriver (installed by
`make test`, see the Makefile), driven by Selenium, and `ugafl review` as a real process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Flags for a closed network (no background connections, no update checks) and a root user.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000", "--force-device-scale-factor=1")


def require_chromium() -> None:
    """Fail (never skip) with what to install when the browser is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: run `make test` (it installs Debian's chromium and "
                           f"chromium-driver) or `apt-get install chromium chromium-driver`")


@contextmanager
def chromium(tmp: Path, *extra_flags: str):
    """A headless Chromium with its own empty profile under `tmp` (and `extra_flags`); quit (and its
    processes gone) on exit."""
    require_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for the tests to read
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp))
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def review_process(workspace: Path, user: str = "Dr. Test", password: str = "pathology rocks", port: int = 0,
                   add_user: bool = True, slides: Path | None = None):
    """`ugafl review --auth accounts` on 127.0.0.1 and `port` (0: a free one), as a child process,
    with the built-in account `user` added first (`ugafl review add-user`) unless `add_user` is
    False; yields its URL. Stopped with SIGTERM (then SIGKILL) by process id on exit."""
    ugafl = str(Path(sys.executable).with_name("ugafl"))
    if add_user:
        subprocess.run([ugafl, "review", "add-user", "--workspace", str(workspace), user, "--password-stdin"],
                       input=password + "\n", text=True, check=True, capture_output=True, timeout=60)
    command = [ugafl, "review", "--workspace", str(workspace), "--port", str(port), "--auth", "accounts"]
    if slides is not None:
        command += ["--slides", str(slides)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, seen, deadline = None, [], time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(r"(http://127\.0\.0\.1:\d+/)", line):
                url = match.group(1)
        if url is None:
            raise RuntimeError("ugafl review did not print its address:\n" + "".join(seen))
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def sign_in(driver, url: str, user: str = "Dr. Test", password: str = "pathology rocks") -> None:
    """Open `url`: the app sends the browser to its sign-in page; sign in there as a person would."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "login")
    driver.find_element("id", "login-user").send_keys(user)
    driver.find_element("id", "login-password").send_keys(password + "\ue007")  # Enter submits
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") != "login")
