"""Great Expectations' Data Docs made readable offline: their CSS/JS copied in, every page pointed at it.

GE 1.24.1 pages load bootstrap, jQuery, bootstrap-table, Font Awesome, vega and more from CDNs, and
GE's logo from S3. Opened without a network the index is blank (bootstrap-table and jQuery build its
list) and every page is unstyled, while the project's runs need no network. `make install` fetches
the same files, at the CDNs' versions, from npm (pinned in tasks/data/docs_assets/) into
.cache/docs_assets/; `make_offline` copies them into <docs>/static/vendor/ and rewrites the links, so
the docs folder is self-contained and works from file://.
"""
from __future__ import annotations

import posixpath
import re
import shutil
import sys
from pathlib import Path

NODE_MODULES = Path(__file__).resolve().parents[2] / ".cache/docs_assets/node_modules"
VENDOR = "static/vendor"

# Every CDN URL of GE's page templates -> the same file in node_modules (folders as package.json names
# them). vega@5 / vega-lite@5 / vega-embed@6 are ranges: the CDN serves the newest release in them.
CDN_FILES = {
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        "@fortawesome/fontawesome-free/css/all.min.css",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/dist/umd/popper.min.js",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table-1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
}
# GE's logo, light and dark theme, from S3 (with a cache-busting query); the light one ships in the
# docs' own static/images. The dark one is in no package: the light logo stands in for it.
S3_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
                     r"(?:logo-long|full_logo_dark)\.png[^\"')\s]*")
# A link into the docs' static/ folder, however many ../ GE wrote (its favicon link on validation
# pages is one level short).
STATIC_LINK = re.compile(r"(?<=[\"'(])(?:\./|(?:\.\./)+)static/")
# SRI and CORS attributes of the CDN tags: a browser refuses both for a file:// script.
SRI = re.compile(r"\s(?:integrity|crossorigin)=\"[^\"]*\"")
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+?)['\"]?\s*\)")


def make_offline(docs_dir: Path, node_modules: Path = NODE_MODULES) -> bool:
    """Copy the vendored CSS/JS into docs_dir and point every page at it; False (and one warning line,
    the CDN links left as they are) when the files are not installed."""
    missing = [name for name in CDN_FILES.values() if not (node_modules / name).is_file()]
    if missing:
        print(f"warning: Data Docs load their CSS/JS from CDNs (need a network): {node_modules} lacks "
              f"{missing[0]}; install it with `make install`", file=sys.stderr)
        return False
    for name in CDN_FILES.values():
        vendor_file(node_modules, name, docs_dir / VENDOR)
    for page in [*docs_dir.rglob("*.html"), *(docs_dir / "static/styles").glob("*.css")]:
        page.write_text(localize(page.read_text(encoding="utf-8"), to_root(page, docs_dir)), encoding="utf-8")
    return True


def vendor_file(node_modules: Path, name: str, vendor_dir: Path) -> None:
    """Copy one file and, for a stylesheet, the files its relative url()s name (fonts), keeping the layout."""
    source, target = node_modules / name, vendor_dir / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    if source.suffix == ".css":
        for ref in relative_urls(source.read_text(encoding="utf-8")):
            beside = posixpath.normpath(posixpath.join(posixpath.dirname(name), ref))
            vendor_file(node_modules, beside, vendor_dir)


def relative_urls(css: str) -> set[str]:
    """The relative url()s of a stylesheet, without query or fragment (data: URIs and hosts left out)."""
    refs = {re.split(r"[?#]", ref, maxsplit=1)[0] for ref in CSS_URL.findall(css)}
    return {ref for ref in refs if ref and not re.match(r"[a-z]+:|/", ref)}


def to_root(file: Path, docs_dir: Path) -> str:
    """The relative path from a file's folder to the docs root: '' or '../../'."""
    return "../" * (len(file.relative_to(docs_dir).parts) - 1)


def localize(text: str, root: str) -> str:
    """A page or stylesheet with every CDN and S3 link replaced by its local copy, relative to root."""
    for url, name in CDN_FILES.items():
        text = re.sub(rf"(?<=[\"']){re.escape(url)}(?=[\"'])", f"{root}{VENDOR}/{name}", text)
    text = S3_LOGO.sub(f"{root}static/images/logo-long.png", text)
    text = STATIC_LINK.sub(f"{root}static/", text)
    return SRI.sub("", text)
