"""The Prometheus that `make prometheus` installs has a working web UI, not only the API.

Debian's build reads the UI's templates and scripts from disk; the install
script unpacks them and wraps the binary to find them.
"""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import running_prometheus

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "prometheus" / "bin"


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus as a user starts it after `make prometheus`: no UI flags."""
    # What `make prometheus` runs; instant when it already ran.
    install = subprocess.run(["bash", str(ROOT / "scripts" / "install-prometheus.sh")],
                             capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    with running_prometheus(BIN / "prometheus", {"global": {"scrape_interval": "15s"}},
                            tmp_path_factory.mktemp("prometheus-ui")) as url:
        yield url


@pytest.mark.parametrize("page", ["/", "/graph", "/classic/alerts", "/classic/targets",
                                  "/classic/status"])
def test_every_page_renders_and_every_asset_it_loads_is_served(prometheus: str,
                                                              page: str) -> None:
    status, html = fetch(prometheus + page)
    assert status == 200, html[:500]
    assert "<title>Prometheus" in html
    assets = set(re.findall(r'(?:src|href)="(/classic/static/[^"?]+)', html))
    assert any(a.endswith("jquery.min.js") for a in assets)
    for asset in sorted(assets):
        status, body = fetch(prometheus + asset)
        assert status == 200 and body, f"{page} loads {asset}: HTTP {status}"
