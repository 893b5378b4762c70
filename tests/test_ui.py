"""`blocksweep ui`: a real MLflow server (and optuna-dashboard) on the project's store, seen
by a real headless Chromium, stopped by Ctrl-C with nothing left behind. Loopback only;
every wait bounded; every process killed in `finally`."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.services import alive, descendants, free_port, kill_group, start_cli, wait_for_line
from tests.sweeps import wait_for

ARTIFACTS = REPO / "tests" / "artifacts"  # git-ignored: screenshots for a human to look at
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def start_ui(workdir: Path, *args) -> tuple[subprocess.Popen, Path]:
    log = workdir / "ui.out"
    with open(log, "w") as out, open(workdir / "ui.err", "w") as err:
        ui = start_cli(["ui", *args], workdir, stdout=out, stderr=err)
    wait_for_line(log, "Ctrl-C stops.", ui, timeout=180)
    return ui, log


def stop(ui: subprocess.Popen) -> int:
    ui.send_signal(signal.SIGINT)
    try:
        return ui.wait(30)
    finally:
        kill_group(ui)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_ui_opens_a_sweep_on_its_training_runs_with_dataset_and_source(write_space, tiny_cifar, tracking_uri,
                                                                       workdir, browser):
    """As a user: a sweep from the command line, then `blocksweep ui`, then the link it
    prints for the study: the experiment opens on its runs under Model training (not on
    the GenAI traces overview, MLflow 3.17's default), the sweep's row names its dataset
    and source, and it unfolds into its trials. Screenshots go to tests/artifacts/."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    done = run_cli(["run", write_space(), "--data-dir", tiny_cifar, "--quiet", "--study", "shown", "--trials", 2,
                    "--set", "train.epochs=1"], workdir)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri)
    exp_id = client.get_experiment_by_name("shown").experiment_id
    (parent,) = client.search_runs([exp_id], "tags.`blocksweep.role` = 'parent'")
    train = next(i.dataset for i in parent.inputs.dataset_inputs if i.tags[0].value == "train")
    port = free_port()
    ui, log = start_ui(workdir, "--port", port)
    try:
        link = f"http://127.0.0.1:{port}/#/experiments/{exp_id}?workflowType=machine_learning"
        assert f"  shown: {link}" in log.read_text().splitlines()

        def page_text() -> str:
            return browser.find_element(By.TAG_NAME, "body").text

        browser.set_window_size(1600, 900)
        browser.get(link)
        wait_for(lambda: "sweep-shown" in page_text(), 60, "the parent run in the runs table")
        for close in browser.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
            close.click()  # MLflow's assistant panel hides the table's right-hand columns
        text = page_text()
        assert "Model training" in text and "Runs" in text.splitlines()
        assert "Token Usage" not in text and "No data available for the selected time range" not in text
        wait_for(lambda: f"CIFAR-10 ({train.digest})" in page_text(), 30, "the dataset in the sweep's row")
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-training-runs.png"))
        # Source: the last path segment of mlflow.source.name (the only row shown: the sweep's).
        assert browser.find_elements(By.XPATH, "//*[@role='gridcell'][normalize-space()='blocksweep']")
        # The trials are the parent's children, folded under it: unfold them.
        parent_link = browser.find_element(By.XPATH, "//a[normalize-space()='sweep-shown']")
        parent_link.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]//button").click()
        wait_for(lambda: "trial-0" in page_text() and "trial-1" in page_text(), 30, "the trials under it")
        assert browser.save_screenshot(str(ARTIFACTS / "mlflow-ui-sweep.png"))
    finally:
        code = stop(ui)
    assert code == 0


def test_ui_stops_on_sigterm_even_repeated_and_leaves_no_process_behind(workdir):
    port, dashboard_port = free_port(), free_port()
    ui, log = start_ui(workdir, "--port", port, "--dashboard", "--dashboard-port", dashboard_port)
    try:
        started = descendants(ui.pid)
        assert len(started) >= 3  # mlflow server, its uvicorn, optuna-dashboard
        assert answers(f"http://127.0.0.1:{port}/health")
        assert answers(f"http://127.0.0.1:{dashboard_port}/api/studies")
        # As Ctrl-C does (the browser test's `stop`); a second SIGTERM (systemd, an impatient
        # `kill`) lands while the servers stop and must not cut that short (it did: exit 130).
        ui.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(30)
    finally:
        kill_group(ui)
    assert code == 0 and log.read_text().splitlines()[-1] == "stopped."
    wait_for(lambda: not any(alive(pid) for pid in started), 10, "every server process to be gone")
    for number in (port, dashboard_port):  # and nothing listens on the ports any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", number), timeout=5).close()


def test_ui_refuses_a_port_that_is_taken(cli, capsys, workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli("ui", "--port", port) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


def test_ui_refuses_one_port_for_both_servers_before_creating_anything(cli, capsys, workdir):
    assert cli("ui", "--port", 5090, "--dashboard", "--dashboard-port", 5090) == 2
    assert "the MLflow UI already uses port 5090" in capsys.readouterr().err
    assert not (workdir / "mlruns" / "optuna.db").exists()


def test_ui_refuses_a_tracking_server_as_its_store(cli, capsys, workdir):
    assert cli("ui", "--backend-store-uri", "http://127.0.0.1:5000") == 2
    assert "that is a server already" in capsys.readouterr().err


def test_ui_serves_the_embedded_store_where_sweeps_write_it(workdir, tracking_uri):
    from search.services import ui as services
    from search.engines.optuna_storage import storage_url
    from search.tracking import Tracker, default_tracking_uri

    assert services.default_backend_store() == default_tracking_uri() == tracking_uri
    assert services.default_storage() == storage_url(None)
    assert Tracker()._artifact_location("a-study").startswith(services.default_artifacts().as_uri() + "/")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("myhost.example", False)])
def test_only_loopback_hosts_count_as_private(host, loopback):
    from search.services.ui import is_loopback

    assert is_loopback(host) is loopback
