"""What the commands print for people: `cost`'s numbers are formatted, its JSON is not."""

from __future__ import annotations

import json
import re

import pytest

from search.cli import main

MODEL = ["--model", "search.tasks._digits:DigitsCNN", "--input-shape", "1,8,8", "--target", "mcu"]


def test_cost_prints_readable_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", *MODEL]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    # `latency_ms 23.61`, not `23.60628...`; thousands separated; no float noise anywhere.
    assert re.fullmatch(r"\d+\.\d{1,2}", rows["latency_ms"]), rows["latency_ms"]
    assert rows["weight_bytes"] == "375,848" and rows["params"] == "94,186"
    assert rows["traced"] == "yes"
    for key, value in rows.items():
        digits = re.sub(r"\D", "", value.split(".")[-1]) if "." in value else ""
        assert len(digits) <= 4, f"{key}: {value}"
    # --json keeps full precision for programs.
    assert main(["cost", *MODEL, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weight_bytes"] == 375848
    assert abs(float(rows["latency_ms"]) - data["latency_ms"]) < 0.01
    assert len(repr(data["latency_ms"])) > len(rows["latency_ms"])
