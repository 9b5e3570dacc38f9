"""Real servers on 127.0.0.1 for integration tests, each stopped by the PID that started it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def s3_endpoint(monkeypatch, tmp_path):
    """An S3-compatible endpoint (moto_server) on loopback, with credentials in the environment and a
    bucket `llmpipe-test`. The project's code talks plain S3 to it."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        from llm import storage

        storage._s3_client.cache_clear()
        storage._s3_client().create_bucket(Bucket="llmpipe-test")
        yield endpoint
    finally:
        stop(proc)
        log.close()
        from llm import storage

        storage._s3_client.cache_clear()


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, artifacts proxied); yields its URL."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "mlflow.log", "wb")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture()
def browser():
    """Debian's chromium, headless, driven through its chromedriver (nothing downloaded)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1200", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
