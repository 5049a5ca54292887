"""The demo page in headless Chromium: the path diagram fills in with the worker that answered, and over
HTTPS the page reports HTTP/2 for its own requests.

Runs the whole local stack the way ``make up`` does (``python -m appserver.stack``,
on ports chosen at run time) and drives Debian's ``chromium`` through its
``chromium-driver`` with Selenium. Skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers import ROOT, free_port
from tests.integration.test_apptier import StackProcess, children

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_SECONDS = 30


def _missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "no chromium/chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)"
    return ""


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")]


@pytest.fixture(scope="module")
def stack():
    launcher = StackProcess()
    try:
        yield launcher
    finally:
        launcher.signal(signal.SIGINT)
        launcher.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1366,1000", f"--user-data-dir={tmp_path / 'profile'}",
                 "--ignore-certificate-errors"):  # the HTTPS test's certificate is self-signed (proxy gencert)
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_draws_the_path_with_the_worker_pid(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(stack.url + "/")
    pid_text = WebDriverWait(browser, WAIT_SECONDS).until(
        lambda d: (t := d.find_element(By.ID, "worker-pid").text).isdigit() and t)
    assert int(pid_text) in children(stack.pid), "the pid shown is not one of the app tier's workers"

    def field(name: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text

    assert field("api.route") == "/api/"
    assert field("api.handler") == "forwarded"
    assert field("api.app").endswith(" ms") and field("api.proxy").endswith(" ms")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#api-bar > div")) == 5

    # The first request is made once the page has loaded, so the bar shows the tiers, not the browser
    # warming up; its "network + browser" part is the request's own wait (sent -> first byte) less the
    # proxy's time, without the browser's queueing or connection setup (said apart when there was one).
    first = browser.execute_script("""
        const page = performance.getEntriesByType("navigation")[0];
        const api = performance.getEntriesByName(new URL("/api/whoami", location.href).href, "resource")[0];
        return {loaded: page.loadEventStart, sent: api.startTime, wait: api.responseStart - api.requestStart};""")
    assert first["loaded"] > 0 and first["sent"] >= first["loaded"], first
    legend = dict(re.fullmatch(r"(.+?)\s+([\d.]+) ms", item.text.strip(), re.DOTALL).groups()
                  for item in browser.find_elements(By.CSS_SELECTOR, "#api-legend li"))
    assert float(legend["network + browser"]) <= first["wait"] + 0.01, (legend, first)
    assert "from the request leaving the browser to the answer's first byte" in field("api.total")
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("static.handler") == "file from disk")
    assert field("static.route") == "/static/"

    # A second request: the proxy now has a pooled connection to offer, or Gunicorn closed it (sync):
    # either way the diagram says which, from the Server-Timing header.
    browser.find_element(By.ID, "api-again").click()
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("api.conn") not in ("", "…"))
    assert field("api.conn").startswith(("pooled, reused", "new ("))

    # The cached panel: the first answer was made by Gunicorn and stored (MISS); fetched again, the proxy
    # answers alone (HIT) with the same body, and the diagram leaves the app tier out of the path.
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("cache.status") in ("MISS", "HIT"))
    made_by = field("cache.pid")
    assert int(made_by) in children(stack.pid)
    browser.find_element(By.ID, "cache-again").click()
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("cache.seen") == "2")
    assert field("cache.status") == "HIT", field("cache.status")
    assert field("cache.hop") == "not forwarded" and field("cache.handler") == "answered from the cache"
    assert "idle" in browser.find_element(By.ID, "cache-app").get_attribute("class")
    assert "off" in browser.find_element(By.ID, "cache-hop").get_attribute("class")
    assert field("cache.pid") == made_by and field("cache.count") == "1"  # the app made it once

    shot = tmp_path / "demo-page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


@pytest.fixture(scope="module")
def https_stack(tmp_path_factory):
    """The same stack with the repository's proxy.toml plus a [tls] listener, its certificate made by
    ``proxy gencert`` (self-signed: the browser is told to accept it)."""
    folder = tmp_path_factory.mktemp("https-stack")
    subprocess.run([sys.executable, "-m", "proxy", "gencert", "--out", str(folder), "localhost", "127.0.0.1"],
                   check=True, capture_output=True, cwd=ROOT)
    port = free_port()
    text = (ROOT / "proxy.toml").read_text().replace('"demo_app/static"', f'"{ROOT / "demo_app/static"}"')
    config = folder / "proxy.toml"
    config.write_text(text + f"""
[tls]
listen = ["127.0.0.1:{port}"]
certificate = "cert.pem"
key = "key.pem"
""")
    launcher = StackProcess(config)
    launcher.https_url = f"https://localhost:{port}"
    try:
        yield launcher
    finally:
        launcher.signal(signal.SIGINT)
        launcher.stop()


def test_the_page_over_https_reports_http2_and_the_proxy_speaks_http11_to_gunicorn(https_stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(https_stack.https_url + "/")

    def field(name: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text

    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("api.pid").isdigit())
    protocols = browser.execute_script("""
        const api = performance.getEntriesByName(new URL("/api/whoami", location.href).href, "resource")[0];
        return [performance.getEntriesByType("navigation")[0].nextHopProtocol, api.nextHopProtocol];""")
    assert protocols == ["h2", "h2"]
    assert field("page.protocol") == "HTTP/2 (h2)"
    assert field("api.protocol") == "HTTP/2 (h2)"
    assert field("api.hop1").startswith("HTTP/2 · 200")
    assert field("api.hop2").startswith("HTTP/1.1, ")  # the proxy's leg to Gunicorn
    assert field("api.scheme") == "https"
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("static.protocol") == "HTTP/2 (h2)")
    # The WebSocket panel: the browser opens its socket over HTTP/1.1 on the same listener and port.
    WebDriverWait(browser, WAIT_SECONDS).until(lambda d: field("ws.state") == "open")
    assert any('"GET /api/whoami HTTP/2.0" 200' in line for line in https_stack.stdout)  # the access log
