"""The dashboard in a real headless Chromium, against a real server process, worker process and
Redis: sign in with the token, find jobs by id, pause a queue, requeue a dead job and see the
counts change. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskforge import TaskForge
from tests.support.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token-0123456789"
PREFIX = "dash"

pytestmark = pytest.mark.browser


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A worker process and a `taskforge serve` process (with a token) on the test's Redis."""
    env = dict(os.environ, TASKFORGE_REDIS_URL=redis_url, TASKFORGE_PREFIX=PREFIX,
               TASKFORGE_API_TOKEN=TOKEN)  # fmt: skip
    app = "tests.web.sample_app:forge"
    port = free_port()
    log = (tmp_path / "processes.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskforge", "worker", app, "--queues", "mail,math",
         "--concurrency", "4", "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "taskforge", "serve", app, "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert server.poll() is None, (tmp_path / "processes.log").read_text()
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 20, "taskforge serve to answer")
        yield base
    finally:
        _stop(server)
        _stop(worker)
        log.close()


def test_dashboard(stack: str, redis_url: str) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (./dev test installs Debian's chromium)")
    from playwright.sync_api import expect, sync_playwright

    forge = TaskForge(redis_url, prefix=PREFIX)
    wait_until(lambda: forge.inspector.workers(), 20, "the worker to register")
    good = forge.enqueue_with("deliver", ("ada@example.org",), queue="mail", max_attempts=1)
    bad = [
        forge.enqueue_with("deliver", (f"u{i}@nowhere.invalid",), queue="mail", max_attempts=1)
        for i in range(2)
    ]
    forge.enqueue_many("nap", [(0.01,)] * 20, queue="math")
    wait_until(lambda: forge.inspector.stats(["mail"])[0].dead == 2, 20, "two dead jobs")
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(stack + "/")

            # The server has a token: the dashboard asks for it once.
            expect(page.locator("#modal-title")).to_have_text("API token")
            page.fill("#token-input", TOKEN)
            page.click("#modal-ok")
            expect(page.locator("#status")).to_have_text("live")
            dead_card = page.locator('[data-count="dead"]')
            expect(dead_card).to_have_text("2")
            expect(page.locator('[data-count="completed"]')).to_have_text("21", timeout=15000)
            expect(page.locator("svg.chart rect.bar.ok").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

            # Queues: counts link to the jobs of each state.
            page.click('nav a[data-view="queues"]')
            page.click('tr[data-queue="math"] [data-state="completed"] a')
            expect(page.locator("tr[data-job]")).to_have_count(20)
            expect(page.locator(".panel h2").last).to_contain_text("math: completed")
            page.screenshot(path=str(ARTIFACTS / "dashboard-queues.png"), full_page=True)

            # Find a job by id: full detail with result and timeline.
            page.fill("#find-id", good.id)
            page.press("#find-id", "Enter")
            expect(page.locator("#job-id")).to_have_text(good.id)
            expect(page.locator(".job-head .badge")).to_have_text("completed")
            expect(page.locator("pre.json").last).to_contain_text("delivered to ada@example.org")
            expect(page.locator(".timeline li")).to_have_count(3)
            expect(page.locator("dl.fields")).to_contain_text("1 of 1")

            # A dead job shows its error with the traceback.
            page.fill("#find-id", bad[0].id)
            page.press("#find-id", "Enter")
            expect(page.locator(".job-head .badge")).to_have_text("dead")
            expect(page.locator(".traceback")).to_contain_text("ValueError: no mail server")
            page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

            # Pause the queue so that a requeued job stays put, then requeue one from the browser.
            page.goto(stack + "/#/queues")
            page.locator('tr[data-queue="mail"] button', has_text="Pause").click()
            expect(page.locator('tr[data-queue="mail"] .badge.paused')).to_be_visible()
            page.goto(stack + "/#/dead")
            expect(page.locator("#dead-total")).to_have_text("2 job(s)")
            page.check(f'tr[data-job="{bad[1].id}"] input[type="checkbox"]')
            page.click("#requeue-selected")
            expect(page.locator("#modal-title")).to_have_text("Requeue dead jobs")
            page.click("#modal-ok")
            expect(page.locator(".toast.ok", has_text="requeued 1 job(s)")).to_be_visible()
            expect(page.locator("#dead-total")).to_have_text("1 job(s)")
            expect(page.locator(f'tr[data-job="{bad[1].id}"]')).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "dashboard-dead.png"), full_page=True)

            page.click('nav a[data-view="overview"]')
            expect(dead_card).to_have_text("1")
            expect(page.locator('[data-count="queued"]')).to_have_text("1")
            expect(page.locator('tr[data-queue="mail"] [data-state="queued"]')).to_have_text("1")
            assert forge.job(bad[1].id).status() == "queued"

            # Someone resumes the queue: the worker runs the job again, it dies again, and the
            # overview (counts, event feed) follows by itself.
            expect(page.locator('#events[data-live="1"]')).to_have_count(1)
            forge.inspector.resume("mail")
            expect(dead_card).to_have_text("2", timeout=15000)
            expect(page.locator("#events li").first).to_contain_text("dead", timeout=15000)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            page.click('nav a[data-view="workers"]')
            expect(page.locator("tr[data-worker]")).to_have_count(1)
            expect(page.locator("tr[data-worker] td").nth(2)).to_have_text(re.compile("mail, math"))
            page.screenshot(path=str(ARTIFACTS / "dashboard-workers.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()
    forge.close()
