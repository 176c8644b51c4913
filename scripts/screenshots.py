"""Screenshots for the README: the web demo after a generation, and the MLflow run page of a
training run. Needs chromium + chromium-driver (Debian) and the dev extra.

    lightbagel-fit recipes/tiny.yaml trainer.max_steps=400
    python scripts/screenshots.py --run outputs/tiny        # -> docs/demo.png, docs/mlflow_run.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

DOCS = Path(__file__).resolve().parents[1] / "docs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser(width: int, height: int):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


def save_small(png: bytes, path: Path, colors: int = 64) -> None:
    """A palette PNG: screenshots of flat UI compress to a fraction of their RGB size."""
    import io

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def demo_shot(model: Path, out: Path) -> None:
    from lightbagel.demo import build_demo
    from lightbagel.inference import LightBagelPipeline

    port = free_port()
    demo = build_demo(LightBagelPipeline.from_pretrained(model), title="lightbagel: outputs/tiny/export")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    driver = browser(1000, 860)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#generate-button")).click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate-output img"))
        time.sleep(1)  # let the image fade in
        save_small(driver.get_screenshot_as_png(), out)
    finally:
        driver.quit()
        demo.close()


def mlflow_shot(run_dir: Path, out: Path) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                               f"sqlite:///{(run_dir / 'mlflow.db').resolve()}", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = browser(1400, 1000)
    try:
        _wait_for_port(port)
        from mlflow import MlflowClient

        run = MlflowClient(f"sqlite:///{(run_dir / 'mlflow.db').resolve()}").get_run(record["mlflow_run_id"])
        driver.get(f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
                   "/model-metrics?workflowType=machine_learning")
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "canvas, svg.main-svg"))
        time.sleep(4)  # charts draw after their data arrives
        save_small(driver.get_screenshot_as_png(), out)
    finally:
        driver.quit()
        server.terminate()
        server.wait()


def _wait_for_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"mlflow ui did not start on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("outputs/tiny"), help="a lightbagel-fit output folder")
    args = parser.parse_args()
    demo_shot(args.run / "export", DOCS / "demo.png")
    mlflow_shot(args.run, DOCS / "mlflow_run.png")


if __name__ == "__main__":
    main()
