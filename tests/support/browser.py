"""Open an HTML page in headless Chromium: a screenshot, and what the page rendered.

Two runs of Debian's ``chromium`` (``--headless --no-sandbox --disable-gpu``):

* the page as it is, ``--screenshot``: the PNG a person would see;
* a probe copy of the page, ``--dump-dom`` after load: a script added at the top of
  ``<head>`` records every error event (script errors, and resources that fail to load,
  such as a broken ``<img>``: error events are caught in the capture phase) and every
  ``console.error``; on load it measures every ``<svg>`` and ``<img>`` with
  ``getBoundingClientRect`` (the browser's own layout, so a plot that is in the markup but
  renders at zero size is caught) and whether each image decoded, and writes that as JSON
  into the DOM, which ``--dump-dom`` prints.  Chromium's own console log
  (``--enable-logging=stderr --v=0``, ``CONSOLE`` lines) is read as well.

Each run has a profile directory of its own (``--user-data-dir``): two Chromiums on one
profile (two test processes) would hand the second's page to the first and exit.

Why not a DevTools-protocol client: the two plain runs need nothing but the browser, and
what they report is exactly what a page that is opened from disk shows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_HEAD = """<script>
window.__errors = [];
addEventListener("error", (e) => {
  const target = e.target && (e.target.src || e.target.href);
  window.__errors.push(String(e.message || target || e.type));
}, true);
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push("console.error: " + args.join(" "));
  __consoleError.apply(console, args); };
addEventListener("load", () => {
  const elements = [];
  for (const el of document.querySelectorAll("svg, img")) {
    const box = el.getBoundingClientRect();
    const plot = el.closest("figure.plot");
    elements.push({tag: el.tagName.toLowerCase(), width: box.width, height: box.height,
      plot: plot ? plot.dataset.plot : null,
      drawn: el.tagName.toLowerCase() === "svg" ? el.querySelectorAll("path, use").length : 0,
      decoded: el.tagName.toLowerCase() !== "img" || (el.complete && el.naturalWidth > 0)});
  }
  const pre = document.createElement("pre");
  pre.id = "driftline-probe";
  pre.textContent = JSON.stringify({elements: elements, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars")


def chromium() -> str | None:
    return shutil.which("chromium")


@dataclass
class Rendered:
    screenshot: Path
    elements: list[dict[str, Any]]
    errors: list[str]
    console: list[str]


def open_in_chromium(page: Path, out_dir: Path, *, height: int = 2400) -> Rendered:
    """Screenshot ``page`` and probe what it rendered (module docstring)."""
    browser = chromium()
    assert browser, "chromium is not installed (apt-get install chromium)"
    out_dir.mkdir(parents=True, exist_ok=True)
    screenshot = out_dir / f"{page.stem}.png"
    subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={out_dir / 'profile-shot'}",
            f"--window-size=1280,{height}",
            f"--screenshot={screenshot}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    text = page.read_text(encoding="utf-8")
    assert "<head>" in text
    probe = out_dir / f"{page.stem}.probe.html"
    probe.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1), encoding="utf-8")
    run = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={out_dir / 'profile-probe'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="driftline-probe">(.*?)</pre>', run.stdout, re.S)
    assert found, "the probe did not run: the page never finished loading"
    report = json.loads(_unescape(found.group(1)))
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(screenshot, report["elements"], report["errors"], console)


def _unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    )


def assert_rendered(rendered: Rendered, expected_plots: set[str]) -> None:
    """Every expected plot is there, drawn and of a visible size; nothing broke; the
    screenshot is a real picture (many colours, mostly not blank)."""
    from PIL import Image

    assert not rendered.errors, f"page errors: {rendered.errors}"
    assert not rendered.console, f"console messages: {rendered.console}"
    plots = {e["plot"]: e for e in rendered.elements if e["tag"] == "svg" and e["plot"]}
    assert expected_plots <= set(plots), f"missing plots: {sorted(expected_plots - set(plots))}"
    for element in rendered.elements:
        assert element["decoded"], f"broken image: {element}"
        assert element["width"] > 100 and element["height"] > 100, f"not visible: {element}"
        if element["tag"] == "svg":
            assert element["drawn"] > 5, f"an empty plot: {element}"
    assert rendered.screenshot.stat().st_size > 30_000, "a near-empty screenshot"
    with Image.open(rendered.screenshot) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 200, f"{len(colours)} colours: not a rendered report"
        white = max((count for count, colour in colours if colour == (255, 255, 255)), default=0)
        assert white < 0.97 * rgb.width * rgb.height, "the screenshot is blank"
