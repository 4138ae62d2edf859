"""The vendored chart library is exactly the pinned npm package's files, with its licence, and the
pages load nothing from anywhere but the server."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from nni_ts.dashboard.server import STATIC

VENDOR = STATIC / "vendor"


def test_vendored_files_match_their_checksums() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    listed = set()
    for name, pkg in manifest["packages"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", pkg["version"]), f"{name} must be pinned to one version"
        assert pkg["integrity"].startswith("sha512-")
        assert any(f.endswith("LICENSE") for f in pkg["files"]), f"{name} ships without its licence"
        for rel, info in pkg["files"].items():
            digest = hashlib.sha256((VENDOR / rel).read_bytes()).hexdigest()
            assert digest == info["sha256"], f"{rel} differs from {name}@{pkg['version']}"
            listed.add(rel)
    on_disk = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert on_disk == listed, "every vendored file is listed in MANIFEST.json"


def test_pages_and_scripts_use_relative_urls_and_no_html_parsing() -> None:
    for page in ("index.html", "login.html"):
        html = (STATIC / page).read_text()
        urls = re.findall(r'(?:src|href|action)="([^"]*)"', html)
        assert urls and all(not u.startswith(("/", "http:", "https:", "//")) for u in urls), urls
    for js in (STATIC / "js").rglob("*.js"):
        text = js.read_text()
        # Everything a trial wrote is inserted as text: no HTML parsing sinks in our own code.
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, f"{js.name} uses {sink}"
        assert "http://" not in text and "https://" not in text, f"{js.name} names an absolute URL"


def test_package_data_lists_every_static_file() -> None:
    setup = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    line = next(x for x in setup.splitlines() if x.startswith("nni_ts = "))
    patterns = [p.strip().removeprefix("dashboard/static/") for p in line.split("=", 1)[1].split(",")]
    for path in STATIC.rglob("*"):
        if path.is_file():
            rel = path.relative_to(STATIC)
            assert any(rel.match(p) for p in patterns if "*" in p or p == str(rel)), f"{rel} is not package data"
