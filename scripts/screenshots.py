"""Screenshots for the README: the web demo after a generation, the MLflow run page of a
training run, and two runs' loss curves compared. Needs chromium + chromium-driver (Debian) and
the dev extra; the UI is served on 127.0.0.1 only, the browser is headless with an empty profile.

    lightbagel-fit recipes/tiny.yaml trainer.max_steps=80
    lightbagel-fit recipes/tiny.yaml name=tiny_lr optim.lr=3e-4 trainer.max_steps=40
    python scripts/screenshots.py --run outputs/tiny --compare outputs/tiny_lr
    # -> docs/demo.png, docs/mlflow_run.png, docs/mlflow_compare.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
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
    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # empty: no state from elsewhere
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
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


def _run_of(run_dir: Path):
    """The run's MLflow run, from the project store beside its folder."""
    from mlflow import MlflowClient

    record = json.loads((run_dir / "run.json").read_text())
    return MlflowClient(_store(run_dir)).get_run(record["mlflow_run_id"])


def _store(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir.resolve().parent / 'mlflow.db')}"


def _shot(run_dir: Path, page: str, out: Path, size=(1400, 1000)) -> None:
    """Serves the project store on 127.0.0.1 and screenshots `page` (a #/... route) once charts drew."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", _store(run_dir),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = browser(*size)
    try:
        _wait_for_port(port)
        driver.get(f"http://127.0.0.1:{port}/{page}")
        WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "canvas, svg.main-svg"))
        time.sleep(6)  # charts draw after their data arrives
        save_small(driver.get_screenshot_as_png(), out)
    finally:
        driver.quit()
        server.terminate()
        server.wait()


def mlflow_shot(run_dir: Path, out: Path) -> None:
    """The run page's metrics view: the page `lightbagel-fit` prints the address of."""
    run = _run_of(run_dir)
    _shot(run_dir, f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics"
                   "?workflowType=machine_learning", out)


def compare_shot(run_dirs: list[Path], out: Path) -> None:
    """The experiment's chart view with only these runs: each metric's curves overlaid."""
    runs = [_run_of(d) for d in run_dirs]
    names = ", ".join(f"'{r.info.run_name}'" for r in runs)
    query = urllib.parse.urlencode({"compareRunsMode": "CHART", "searchFilter": f"attributes.run_name IN ({names})"})
    _shot(run_dirs[0], f"#/experiments/{runs[0].info.experiment_id}?{query}", out)


def _wait_for_port(port: int, timeout: float = 600) -> None:
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
    parser.add_argument("--compare", type=Path, default=Path("outputs/tiny_lr"),
                        help="a second output folder of the same project, compared with --run")
    parser.add_argument("--only", choices=("demo", "run", "compare"), default=None, help="take one picture")
    args = parser.parse_args()
    if args.only in (None, "demo"):
        demo_shot(args.run / "export", DOCS / "demo.png")
    if args.only in (None, "run"):
        mlflow_shot(args.run, DOCS / "mlflow_run.png")
    if args.only in (None, "compare"):
        compare_shot([args.run, args.compare], DOCS / "mlflow_compare.png")


if __name__ == "__main__":
    main()
