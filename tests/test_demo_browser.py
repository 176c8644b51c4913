"""`lightbagel-demo` in a real browser: headless Chromium types a prompt, presses Generate, and the
image the page shows is the one the pipeline makes for the same prompt and seed."""

from __future__ import annotations

import io
import shutil
import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="no chromium + chromedriver: apt-get install chromium chromium-driver")

PROMPT = "two green squares"


@pytest.fixture
def served(tiny_recipe):
    from lightbagel.demo import build_demo
    from lightbagel.inference import LightBagelPipeline
    from lightbagel.model import build_model

    model = build_model(tiny_recipe.config).eval()
    with torch.no_grad():  # fusion away from zero, so the prompt reaches the image
        for p in model.fusion.parameters():
            p.normal_(0, 0.2)
    pipe = LightBagelPipeline(model, tiny_recipe.config)
    demo = build_demo(pipe)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield pipe, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_generate_in_the_browser_shows_the_pipelines_image(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lightbagel.demo import SHOWN_SIZE

    pipe, url = served
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    prompt = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generate-prompt textarea"))
    prompt.clear()
    prompt.send_keys(PROMPT)
    browser.find_element(By.CSS_SELECTOR, "#generate-button").click()
    shown = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate-output img"))[0]
    with urllib.request.urlopen(shown.get_attribute("src"), timeout=30) as response:
        image = Image.open(io.BytesIO(response.read())).convert("RGB")
    made = pipe(PROMPT, config=pipe.default_config(), seed=0).images[0]  # the sliders start at these
    expected = made.resize((SHOWN_SIZE, SHOWN_SIZE), Image.Resampling.NEAREST)  # the page shows it enlarged
    assert image.size == expected.size
    assert np.array_equal(np.asarray(image), np.asarray(expected))
