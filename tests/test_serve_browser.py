"""The playground page in a real headless browser (the system chromium via selenium):
load it, move a trait slider, generate, and wait for both columns and the meter."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import build_tiny

EXTRA = "serving needs the serve extra: pip install 'traitlens[serve]'"
pytest.importorskip("fastapi", reason=EXTRA)
pytest.importorskip("uvicorn", reason=EXTRA)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")

CHROMIUM = os.environ.get("TRAITLENS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TRAITLENS_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason=f"no chromium at {CHROMIUM} and chromedriver at {CHROMEDRIVER} "
    "(apt-get install chromium chromium-driver)",
)


def browser() -> Any:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1000")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def drive_playground(url: str, driver: Any, trait: str, steps: int, timeout: float = 60.0) -> None:
    """Open the page, push ``trait``'s slider ``steps`` ticks right, generate, and wait
    until both answers are in and the meter is drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    slider = wait.until(ready.presence_of_element_located((By.ID, f"s_{trait}")))
    for _ in range(steps):
        slider.send_keys(Keys.ARROW_RIGHT)
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "meter").get_attribute("data-drawn") == "1")


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[str]:
    from test_serve import make_vectors
    from traitlens.serve import create_app
    from traitlens.serve.server import running_server

    tm = build_tiny("llama")
    app = create_app(tm, make_vectors(tm, tmp_path), max_tokens_cap=64)
    with running_server(app) as url:
        yield url


def test_playground_streams_both_columns_and_draws_meter(served: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        drive_playground(served, driver, "E", steps=20)
        assert driver.find_element(By.ID, "v_E").text == "2.0"
        assert driver.find_element(By.ID, "status").text == "done"
        plain = driver.find_element(By.ID, "plain").text
        steered = driver.find_element(By.ID, "steered").text
        assert plain and steered and plain != steered
        bars = driver.find_elements(By.CSS_SELECTOR, "#meter .bar")
        assert len(bars) == 4  # two traits x (unsteered, steered)
        assert "E" in driver.find_element(By.ID, "applied").text
        driver.save_screenshot(str(tmp_path / "playground.png"))
        assert (tmp_path / "playground.png").stat().st_size > 0
    finally:
        driver.quit()
