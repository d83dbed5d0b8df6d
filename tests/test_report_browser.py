"""report.html in headless Chromium.

The browser test drives Chromium over the DevTools protocol on a pipe (stdlib only): it records
console errors, uncaught exceptions and every network request, then takes a screenshot.
Regenerate the README screenshots with
`python tests/test_report_browser.py RUN_DIR OUT.png WHY.png`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from search.review import load_run, render_report

try:  # the costed study lives beside this file
    from _report_study import make_costed_study
except ImportError:  # tests/ imported as a package
    from tests._report_study import make_costed_study

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def costed(tmp_path_factory: pytest.TempPathFactory):
    return load_run(make_costed_study(tmp_path_factory.mktemp("cost") / "study.db"), "demo")


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

    def screenshot(
        self,
        *,
        scale: float = 1.0,
        until: str | None = None,
        start: str | None = None,
        rect: list[float] | None = None,
    ) -> bytes:
        """PNG of the viewport, or of the page down to the bottom of the element `until`
        (from the top of the element `start`, else of the page), or of `rect` (x, y on the
        page, width, height)."""
        if rect is not None:
            x, y, w, h = rect
            clip = {"x": x, "y": y, "width": w, "height": h, "scale": scale}
            data = self.send(
                "Page.captureScreenshot",
                {"format": "png", "clip": clip, "captureBeyondViewport": True},
                page=True,
            )
            return base64.b64decode(data["data"])
        width, height = self.eval("[window.innerWidth, window.innerHeight]")
        top = 0
        if start is not None:
            top = self.eval(
                f"document.querySelector({json.dumps(start)}).getBoundingClientRect().top"
                " + window.scrollY - 8"
            )
        if until is not None:
            height = (
                self.eval(
                    f"document.querySelector({json.dumps(until)}).getBoundingClientRect().bottom"
                    " + window.scrollY + 8"
                )
                - top
            )
        clip = {"x": 0, "y": top, "width": width, "height": height, "scale": scale}
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


# Pairs of elements of one plot that overlap on screen: the mode bar against the title and the
# menus (the log/linear toggle, the plan picker).
OVERLAPS = """(function(){
  function box(e){var r=e.getBoundingClientRect();return r.width&&r.height?r:null;}
  function hit(a,b){return a&&b&&a.left<b.right&&b.left<a.right&&a.top<b.bottom&&b.top<a.bottom;}
  var out=[];
  document.querySelectorAll('.js-plotly-plot').forEach(function(d){
    var bar=d.querySelector('.modebar'); if(!bar){return;}
    var others=[...d.querySelectorAll('.gtitle, .updatemenu-header-group, .updatemenu-button')];
    others.forEach(function(o){
      if(hit(box(bar),box(o))){out.push(d.id+': '+o.getAttribute('class'));}
    });
  });
  return out;})()"""


# Text that is cut off or runs into other text: axis titles, figure titles, the parallel
# coordinates' titles and the budget lines' labels of every plot. Each is a quad on screen (its
# SVG box through its transform, so slanted titles count as slanted); it must lie inside its
# figure, off the mode bar, and overlap no other one.
CLIPPED = """(function(){
  function quad(e){
    if(!e.getBBox){var r=e.getBoundingClientRect();
      return [[r.left,r.top],[r.right,r.top],[r.right,r.bottom],[r.left,r.bottom]];}
    var b=e.getBBox(), m=e.getScreenCTM(); if(!b.width||!b.height||!m){return null;}
    return [[b.x,b.y],[b.x+b.width,b.y],[b.x+b.width,b.y+b.height],[b.x,b.y+b.height]]
      .map(function(p){return [m.a*p[0]+m.c*p[1]+m.e, m.b*p[0]+m.d*p[1]+m.f];});}
  function apart(a,b){  // separating axis test of two convex quads (1 px of slack)
    var qs=[a,b];
    for(var q=0;q<2;q++){for(var i=0;i<4;i++){
      var p=qs[q][i], n=qs[q][(i+1)%4], ax=[p[1]-n[1], n[0]-p[0]];
      var len=Math.hypot(ax[0],ax[1]); if(!len){continue;}
      var pa=a.map(function(v){return (v[0]*ax[0]+v[1]*ax[1])/len;});
      var pb=b.map(function(v){return (v[0]*ax[0]+v[1]*ax[1])/len;});
      if(Math.max.apply(null,pa)<=Math.min.apply(null,pb)+1||
         Math.max.apply(null,pb)<=Math.min.apply(null,pa)+1){return true;}}}
    return false;}
  var out=[];
  document.querySelectorAll('.js-plotly-plot').forEach(function(d){
    var box=d.getBoundingClientRect(), bar=d.querySelector('.modebar');
    var texts=[...d.querySelectorAll('.gtitle, .xtitle, .ytitle, .parcoords .axis-title, '
      + '.scatterlayer .textpoint text, .annotation-text')]
      .filter(function(e){return e.textContent.trim();});
    var quads=texts.map(quad);
    texts.forEach(function(e,i){
      var q=quads[i], name=d.id+': '+JSON.stringify(e.textContent.trim());
      if(!q){return;}
      if(q.some(function(p){return p[0]<box.left-1||p[0]>box.right+1||
                               p[1]<box.top-1||p[1]>box.bottom+1;})){out.push(name+' is cut off');}
      if(bar&&bar.children.length&&!apart(q,quad(bar))){out.push(name+' is under the mode bar');}
      for(var j=0;j<i;j++){if(quads[j]&&!apart(q,quads[j])){
        out.push(name+' overlaps '+JSON.stringify(texts[j].textContent.trim()));}}
    });
  });
  return out;})()"""


def _edge_ink(png: bytes) -> int:
    """Pixels that are not background on the outer 2 px of an image: something drawn there
    runs past the edge and is cut."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    edge = np.concatenate(
        [rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3)]
        + [rgb[:, -2:].reshape(-1, 3)]
    )
    return int((edge.min(axis=1) < 200).sum())


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"headless Chromium not found at {CHROMIUM} (apt-get install chromium "
    "or set CHROMIUM=/path/to/chromium)",
)
@pytest.mark.parametrize("width", [1400, 800])
def test_report_in_headless_chromium(costed, tmp_path: Path, width: int) -> None:
    run = costed
    path = render_report(run, tmp_path / "report.html")
    browser = Chromium(width=width)
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
        # The p90 band: error bars drawn on the front's latency axis.
        bars = browser.eval(
            "document.querySelectorAll('#fig-front_latency_ms_accuracy .errorbar').length"
        )
        assert bars == len(run.front) + 1  # the front's points and the knee's star
        assert browser.eval(OVERLAPS) == []  # the mode bar is off the titles and menus
        # No title or budget label cut off, under the mode bar, or on top of another.
        assert browser.eval(CLIPPED) == []
        # The 3-D scene draws nothing up to its edges (a cut axis title or box would).
        scene = browser.eval(
            "(function(){var r=document.querySelector('#fig-front_3d .gl-container > div')"
            ".getBoundingClientRect();return [r.left, r.top + window.scrollY, r.width, r.height];"
            "})()"
        )
        assert _edge_ink(browser.screenshot(rect=scene)) == 0, "the 3-D view is cut at its edge"
        # Every plot fits the page: nothing wider than the window.
        assert browser.eval("document.documentElement.scrollWidth") <= width
        # The why-this-plan view draws its bars.
        assert browser.eval("document.querySelectorAll('#fig-why .bars .point').length") > 0
        png = browser.screenshot()
        (tmp_path / "report.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert _red_pixels(png) > 100, "the Pareto front's red markers are not on screen"
        # The log/linear toggle switches the cost axis.
        axis = "document.getElementById('fig-front_latency_ms_accuracy').layout.xaxis.type"
        assert browser.eval(axis) == "log"
        browser.eval(
            "[...document.querySelectorAll('#fig-front_latency_ms_accuracy .updatemenu-button')]"
            ".find(b=>b.textContent==='linear').dispatchEvent(new MouseEvent('click'))"
        )
        time.sleep(0.3)
        assert browser.eval(axis) == "linear"
        # The table sorts on a header click: accuracy ascending, blanks last.
        order = browser.eval(
            "(function(){var th=[...document.querySelectorAll('#trials th')]"
            ".find(h=>h.textContent==='accuracy'); th.click();"
            "return [...document.querySelectorAll('#trials tbody tr')]"
            ".map(r=>r.cells[0].textContent);})()"
        )
        # Trial 4 was never trained: no accuracy, so it sorts with the blanks.
        assert order[:6] == ["3", "2", "1", "0", "6", "4"]
        assert browser.problems() == []
    finally:
        browser.close()


def main(argv: list[str]) -> int:
    """`python tests/test_report.py RUN_DIR OUT.png [WHY.png]`: screenshot a run's report for
    the README: the header and the Pareto fronts, and optionally the why-this-plan view."""
    run_dir, out = Path(argv[0]), Path(argv[1])
    why = Path(argv[2]) if len(argv) > 2 else None
    browser = Chromium(width=1280, height=900)
    try:
        browser.open(run_dir / "report.html", ready=PLOT_READY)
        time.sleep(1.0)
        problems = browser.problems()
        # The header and the first row of Pareto fronts.
        shots = {out: browser.screenshot(scale=0.75, until=".grid > div")}
        if why is not None:
            shots[why] = browser.screenshot(scale=0.75, start="#fig-why", until="#fig-why")
    finally:
        browser.close()
    for path, png in shots.items():
        path.write_bytes(png)
        print(f"wrote {path} ({len(png) // 1024} kB)")
    print(f"console problems: {problems or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
