"""Every alert links a runbook section that exists, and every section says what to do."""
from __future__ import annotations

import re

from alert_scenarios import alert_rules
from deployutil import ROOT

RUNBOOK = ROOT / "docs" / "runbooks.md"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections() -> dict[str, str]:
    text = RUNBOOK.read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {github_anchor(h): body for h, body in zip(parts[1::2], parts[2::2])}


def test_anchor_rule():
    assert github_anchor("SLO: what counts") == "slo-what-counts"
    assert github_anchor("SidecarErrorBudgetBurnFast") == "sidecarerrorbudgetburnfast"


def test_every_alert_has_a_runbook_section_that_exists():
    secs = sections()
    for name, rule in alert_rules().items():
        url = rule["annotations"].get("runbook_url")
        assert url, f"{name} has no runbook_url"
        path, _, anchor = url.partition("#")
        assert (ROOT / path).resolve() == RUNBOOK.resolve(), f"{name}: {url} is not docs/runbooks.md"
        assert anchor == github_anchor(name), f"{name}: anchor {anchor!r} is not the alert's own section"
        assert anchor in secs, f"{name}: {url} has no heading in docs/runbooks.md"
        body = secs[anchor]
        for part in ("**What it means.**", "**How to confirm.**", "**What to do.**"):
            assert part in body, f"runbook section {name} lacks {part}"
        assert "`" in body.split("**How to confirm.**")[1], f"{name}: confirming needs a query or command"
        assert {"summary", "description"} <= rule["annotations"].keys()


def test_runbook_links_between_sections_resolve():
    secs = sections()
    links = re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text())
    assert links
    assert not [a for a in links if a not in secs]
    # the SLO decision on sheds is written down where the SLO alerts point
    assert "shed" in secs["slo-what-counts"] and "counts" in secs["slo-what-counts"]
