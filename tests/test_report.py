"""report.html: the figures' data, the page's content, and the page in headless Chromium.

The browser test drives Chromium over the DevTools protocol on a pipe (stdlib only): it records
console errors, uncaught exceptions and every network request, then takes a screenshot.
Regenerate the README screenshot with `python tests/test_report.py RUN_DIR OUT.png`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from search.pareto import load_run
from search.report import figures, render_report, report_html

try:  # the study builder lives beside this file
    from test_pareto import MAX_DROP, SPECS, make_study
except ImportError:  # tests/ imported as a package
    from tests.test_pareto import MAX_DROP, SPECS, make_study

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    return load_run(make_study(tmp_path_factory.mktemp("rep") / "study.db"), "demo")


@pytest.fixture(scope="module")
def infeasible_run(tmp_path_factory: pytest.TempPathFactory):
    tight = {"latency_ms": 0.1, "memory_kb": 64.0, "flash_kb": 1.0}
    return load_run(make_study(tmp_path_factory.mktemp("inf") / "study.db", budgets=tight))


# --- the figures' data ---------------------------------------------------------------------------
def _trace(fig: Any, name: str) -> Any:
    return next(t for t in fig.data if t.name == name)


def test_one_2d_front_per_objective_pair(run) -> None:
    figs = figures(run)
    pairs = [k for k in figs if k.startswith("front_") and k != "front_3d"]
    # A cost goes on x, the maximised metric on y.
    assert pairs == [
        "front_latency_ms_accuracy",
        "front_weight_bytes_accuracy",
        "front_latency_ms_weight_bytes",
    ]
    fig = figs["front_latency_ms_accuracy"]
    front = _trace(fig, "Pareto front")
    assert sorted(zip(front.x, front.y)) == sorted((SPECS[n][1], SPECS[n][0]) for n in (0, 1, 3))
    assert _trace(fig, "knee").x == (SPECS[1][1],)
    grey = _trace(fig, "infeasible (trained)")
    assert grey.x == (2.5,) and grey.marker.color.lower() in ("#b0b0b0",)
    # Never trained: a rug on a hidden axis, so the accuracy axis is not stretched down to 0.
    rug = _trace(fig, "over budget / not trained")
    assert rug.x == (3.0,) and rug.yaxis == "y2" and fig.layout.yaxis2.visible is False
    assert "accuracy: not trained" in rug.text[0]
    assert 0.0 not in _trace(fig, "infeasible (trained)").y + _trace(fig, "feasible").y
    # Cost against cost: the untrained plans are real points there.
    cost = figures(run)["front_latency_ms_weight_bytes"]
    assert _trace(cost, "over budget / not trained").y == (50000,)
    assert "infeasible" not in {t.name for t in fig.data if t.marker.color == "#1f77b4"}


def test_budgets_are_drawn_as_lines(run) -> None:
    fig = figures(run)["front_latency_ms_accuracy"]
    vertical = [s.x0 for s in fig.layout.shapes if s.x0 == s.x1 and s.xref == "x"]
    horizontal = [s.y0 for s in fig.layout.shapes if s.y0 == s.y1 and s.yref == "y"]
    assert vertical == [2.0]  # the latency budget
    assert horizontal == [pytest.approx(0.9 - MAX_DROP)]  # the accuracy floor
    size = figures(run)["front_latency_ms_weight_bytes"]
    assert any(s.y0 == s.y1 == pytest.approx(32 * 1024) for s in size.layout.shapes)


def test_hover_shows_the_plan(run) -> None:
    fig = figures(run)["front_latency_ms_accuracy"]
    knee = _trace(fig, "knee")
    text = knee.text[0]
    assert "trial 1" in text and "knee" in text
    assert run.trial(1).plan_text in text
    assert "conv1: w" in text  # per-layer decisions
    assert "refined (8 epochs)" in text and "accuracy 0.83" in text
    assert "recipe: int8" in _trace(fig, "Pareto front").text[0]


def test_3d_parcoords_hypervolume_and_layers(run) -> None:
    figs = figures(run)
    f3 = figs["front_3d"]
    assert {t.type for t in f3.data} == {"scatter3d"}
    assert f3.layout.scene.xaxis.title.text == "accuracy"

    par = figs["parcoords"].data[0]
    labels = [d.label for d in par.dimensions]
    assert "prune.ratios.conv1" in labels and "quantize.weight_bits.conv1" in labels
    assert "lowrank.mode" not in labels  # constant across trials: left out
    assert labels[-4:] == ["accuracy", "latency (ms)", "weight (bytes)", "feasible"]
    assert len(par.dimensions[0].values) == 6  # the COMPLETE trials

    hv = figs["hypervolume"].data[0]
    assert list(hv.y) == [h for _, h in run.hypervolume_history]

    lay = figs["layers"]
    assert len(lay.data) == 3 * len(run.front)
    first = [t for t in lay.data if t.visible]
    assert [t.name for t in first] == ["trial 1 bits", "trial 1 prune_ratio", "trial 1 rank"]
    assert list(first[0].x) == ["conv1", "conv2", "fc"] and list(first[0].y) == [4, 4, 8]
    assert list(first[2].y) == [1.0, 0.5, 1.0]
    buttons = lay.layout.updatemenus[0].buttons
    assert [b.label for b in buttons][0] == "trial 1 (knee)" and len(buttons) == 3


def test_page_is_self_contained(run, tmp_path: Path) -> None:
    path = render_report(run, tmp_path / "report.html")
    text = path.read_text()
    assert "* plotly.js v" in text  # the library itself is inlined
    from plotly.offline import get_plotlyjs

    ours = text.replace(get_plotlyjs(), "")  # the page without the library's own strings
    assert not re.search(r"<script[^>]*\ssrc=", ours)  # nothing loaded from elsewhere
    assert not re.search(r"""(src|href)=["']https?://""", ours)
    assert text.count('class="plotly-graph-div"') == len(figures(run))
    assert 'id="trials"' in text and text.count("<tr") >= len(run.trials) + 1
    assert "nothing-feasible" not in text
    assert "RuntimeError: loss became NaN" in text  # failed trials listed with their reason


def test_nothing_feasible_banner(infeasible_run) -> None:
    text = report_html(infeasible_run)
    banner = text[text.index('id="nothing-feasible"') : text.index("<h2>Pareto fronts")]
    assert "Nothing feasible" in banner
    rows = re.findall(r'<tr class="[^"]*"><td data-v="(\d+)"', banner)
    assert [int(r) for r in rows] == list(infeasible_run.least_violating)
    assert infeasible_run.trial(3).plan_text in banner
    figs = figures(infeasible_run)
    assert "layers" in figs  # the per-layer view offers the least-violating plans
    assert not any(t.name == "Pareto front" for t in figs["front_latency_ms_accuracy"].data)


# --- the page in a real browser --------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3/4 (--remote-debugging-pipe)."""

    def __init__(self, binary: str = CHROMIUM, *, width: int = 1400, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def child() -> None:
            # The pipes may already sit on fds 3/4 with close-on-exec set: dup them away first.
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                # WebGL (3-D scatter, parallel coordinates) on the CPU.
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child,
            close_fds=False,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = next(
            t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"
        )
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", page=True)

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, page: bool = False
    ) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def eval(self, expression: str) -> Any:
        res = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, page=True
        )
        return res["result"].get("value")

    def open(self, path: Path, *, ready: str, timeout: float = 120.0) -> None:
        """Navigate and wait until the JS expression `ready` is true."""
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, page=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.eval(f"document.readyState === 'complete' && !!({ready})"):
                return
            time.sleep(0.25)
        raise TimeoutError(f"page not ready after {timeout} s: {ready}")

    def screenshot(self, *, scale: float = 1.0, until: str | None = None) -> bytes:
        """PNG of the viewport, or of the page down to the bottom of the element `until`."""
        width, height = self.eval("[window.innerWidth, window.innerHeight]")
        if until is not None:
            height = self.eval(
                f"document.querySelector({json.dumps(until)}).getBoundingClientRect().bottom"
                " + window.scrollY + 8"
            )
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": scale}
        data = self.send(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": until is not None},
            page=True,
        )
        return base64.b64decode(data["data"])

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:500])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + json.dumps(p.get("args"))[:500])
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append("log: " + p["entry"].get("text", "")[:500])
        return out

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


PLOT_READY = "document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length > 0"


def _red_pixels(png: bytes) -> int:
    """Pixels of the front's marker colour (#d62728) in a screenshot."""
    import numpy as np
    from PIL import Image  # comes with torchvision

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(rgb - [0xD6, 0x27, 0x28]).max(axis=2) < 20).sum())


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"headless Chromium not found at {CHROMIUM} (apt-get install chromium "
    "or set CHROMIUM=/path/to/chromium)",
)
def test_report_in_headless_chromium(run, tmp_path: Path) -> None:
    path = render_report(run, tmp_path / "report.html")
    browser = Chromium()
    try:
        browser.open(path, ready=PLOT_READY)
        time.sleep(0.5)  # let the resize-on-load settle before the screenshot
        assert browser.problems() == []
        # Offline: the page fetched nothing but itself.
        assert browser.requests() == [path.resolve().as_uri()]
        n_points = browser.eval(
            "document.querySelectorAll('#fig-front_latency_ms_accuracy .scatterlayer .point')"
            ".length"
        )
        assert n_points == sum(1 for t in run.trials if t.values is not None) + 1  # + knee star
        png = browser.screenshot()
        (tmp_path / "report.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert _red_pixels(png) > 100, "the Pareto front's red markers are not on screen"
        # The table sorts on a header click: accuracy ascending, blanks last.
        order = browser.eval(
            "(function(){var th=[...document.querySelectorAll('#trials th')]"
            ".find(h=>h.textContent==='accuracy'); th.click();"
            "return [...document.querySelectorAll('#trials tbody tr')]"
            ".map(r=>r.cells[0].textContent);})()"
        )
        assert order[:6] == ["4", "3", "2", "1", "0", "6"]
        assert browser.problems() == []
    finally:
        browser.close()


def main(argv: list[str]) -> int:
    """`python tests/test_report.py RUN_DIR OUT.png`: screenshot a run's report (README)."""
    run_dir, out = Path(argv[0]), Path(argv[1])
    browser = Chromium(width=1280, height=900)
    try:
        browser.open(run_dir / "report.html", ready=PLOT_READY)
        time.sleep(1.0)
        problems = browser.problems()
        # The header and the first row of Pareto fronts.
        png = browser.screenshot(scale=0.75, until=".grid > div")
    finally:
        browser.close()
    out.write_bytes(png)
    print(f"wrote {out} ({len(png) // 1024} kB); console problems: {problems or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
