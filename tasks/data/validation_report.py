"""What the validate stage reports: validation.json, a self-contained summary.html, and one screen
for the log, built from Great Expectations' results.

The summary shows every duplicate group with thumbnails inlined as PNG data URIs, so a person can
judge in seconds whether a group is real before trusting clean.drop_near_duplicates.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.common.config import Params
from tasks.common.paths import MANIFEST_CSV
from tasks.data.expectations import CLASS_COLUMNS, EXPECTATIONS
from tasks.data.images import shrink, to_rgb
from tasks.data.manifest import NOT_FOLLOWED

THUMB_SIDE = 96  # px box every thumbnail fits in
MAX_GROUPS_SHOWN = 200  # bounds the page: groups with thumbnails
MAX_MEMBERS_SHOWN = 12  # files with thumbnails per group


def describe_example(item: dict, column: str, files: pd.DataFrame) -> str:
    """One offending row as text, naming the file (or class) and what is wrong with it."""
    if column in CLASS_COLUMNS:
        return f"{item['label']}: {column} {item.get(column)}"
    row = files.loc[item["path"]]
    if column == "decodes":
        return f"{item['path']}: {row['error'] or 'does not decode'}"
    if column == "classes_in_group":
        return f"{item['path']}: the same image is in classes {row['group_classes']}"
    if column == "is_copy":
        return f"{item['path']}: copy of {row['original']}"
    return f"{item['path']}: {column} {item.get(column)}"


def observed_text(result, column: str) -> str:
    stats = result.result or {}
    if column == "label":  # a set comparison has no per-row counts
        found, expected = set(stats.get("observed_value") or []), set(result.expectation_config.kwargs["value_set"])
        missing, extra = sorted(expected - found), sorted(found - expected)
        return "as expected" if not (missing or extra) else (
            f"missing {', '.join(missing) or 'none'}; unexpected {', '.join(extra) or 'none'}"
        )
    total, bad = stats.get("element_count"), stats.get("unexpected_count")
    if total is None or bad is None:
        reason = (result.exception_info or {}).get("exception_message") or "see Data Docs"
        return f"not evaluated ({reason})"
    unit = {"decodes": "files", "images": "classes", "imbalance": "classes"}.get(column, "images")
    return f"{total - bad} of {total} {unit} pass ({(total - bad) / total if total else 1:.1%})"


def summarise(result, warn_only: list[str], files: pd.DataFrame) -> dict:
    """One GE expectation result as a plain dict for validation.json, summary.html and the log."""
    config = result.expectation_config
    column, check = config.kwargs["column"], config.meta["check"]
    stats = result.result or {}
    return {
        "name": check,
        "severity": "warning" if check in warn_only else "blocking",
        "success": bool(result.success),
        "expectation": config.type,
        "column": column,
        "rule": config.meta["rule"],
        "observed": observed_text(result, column),
        "element_count": stats.get("element_count"),
        "unexpected_count": stats.get("unexpected_count"),
        "examples": [
            describe_example(item, column, files)
            for item in stats.get("partial_unexpected_index_list") or []
        ],
    }


def data_docs_pages(docs_dir: Path) -> dict[str, str]:
    """Data Docs pages by title, relative to the report folder: the index and each result.

    The index lists validation results with JavaScript loaded from CDNs, so offline a person
    reaches them only through direct links like these.
    """
    pages = {"index": (docs_dir / "index.html").relative_to(docs_dir.parent).as_posix()}
    for page in sorted(docs_dir.glob("validations/*/**/*.html")):
        suite = page.relative_to(docs_dir).parts[1]
        pages[f"{suite} results"] = page.relative_to(docs_dir.parent).as_posix()
    return pages


def build_report(
    params: Params, manifest: pd.DataFrame, files: pd.DataFrame, counts: pd.DataFrame, results: list,
    docs_dir: Path,
) -> dict:
    """Everything validation.json holds: overall success, the checks, class counts, page links."""
    lookup = files.set_index("path", drop=False)
    checks = sorted(
        (summarise(r, params.validate_.warn_only, lookup) for r in results),
        key=lambda c: EXPECTATIONS.index((c["name"], c["column"])),
    )
    failed = [c for c in checks if not c["success"]]
    blocking = [c["name"] for c in failed if c["severity"] == "blocking"]
    return {
        "success": not blocking,
        "data_root": params.data.root,
        "files": len(manifest),
        "classes": len(counts),
        "split_folders": sorted(set(manifest["split"]) - {""}),
        "decodable_share": round(float(files["decodes"].mean()), 4) if len(files) else 0.0,
        "hidden_files": int(manifest["hidden"].sum()),
        "symlinks_not_followed": int(manifest["problem"].isin(NOT_FOLLOWED).sum()),
        "duplicate_groups": int((files[files["duplicate_group"] >= 0].groupby("duplicate_group").size() > 1).sum()),
        # dict.fromkeys: image_size can fail on both of its columns but is one name.
        "failed_blocking": list(dict.fromkeys(blocking)),
        "failed_warning": list(dict.fromkeys(c["name"] for c in failed if c["severity"] == "warning")),
        "checks": checks,
        "class_counts": counts[["label", "files", "images"]].to_dict(orient="records"),
        "data_docs": data_docs_pages(docs_dir),
    }


def console_summary(report: dict, manifest_stats: dict, seconds: float) -> str:
    """One screen for the log: every check, and examples of what failed."""
    lines = [
        f"{report['files']:,} files ({manifest_stats['read']:,} read, {manifest_stats['cached']:,} cached) "
        f"in {seconds:.1f} s; {report['classes']} classes; {report['decodable_share']:.1%} decode; "
        f"{report['hidden_files']} hidden; {report['duplicate_groups']} duplicate groups"
    ]
    for check in report["checks"]:
        status = "pass" if check["success"] else "warn" if check["severity"] == "warning" else "FAIL"
        lines.append(f"  {status:<4}  {check['name']:<20} {check['rule']}; observed {check['observed']}")
        if not check["success"]:
            lines += [f"{'':28}e.g. {example}" for example in check["examples"][:3]]
    return "\n".join(lines)


def failure_message(report: dict, summary_page: Path) -> str:
    names = ", ".join(report["failed_blocking"])
    return (
        f"{len(report['failed_blocking'])} blocking expectation(s) failed: {names} (examples above). "
        f"See {summary_page}; fix the data, or list the expectation in validate.warn_only "
        "in params.yaml to only warn."
    )


def html_table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def thumbnail(path: Path) -> tuple[str, int, int] | None:
    """(PNG data URI, width, height) of the upright RGB image fitted into THUMB_SIDE px, or None.

    Small images stay at their own size (the page enlarges them, pixelated) to keep the page
    small; JPEGs are decoded at a reduced scale (draft) so large photos stay cheap.
    """
    try:
        with Image.open(path) as img:
            img.draft(None, (THUMB_SIDE, THUMB_SIDE))
            img.load()
            small = shrink(to_rgb(img), THUMB_SIDE)
    except Exception:  # damaged files raise many kinds of errors; a thumbnail must not stop the report
        return None
    out = io.BytesIO()
    small.save(out, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii"), *small.size


def thumb_html(thumb: tuple[str, int, int] | None) -> str:
    """The image shown in a THUMB_SIDE box, aspect kept; a text placeholder when it no longer decodes."""
    if thumb is None:
        return '<div class="thumb missing">does not decode (changed since the manifest?)</div>'
    uri, width, height = thumb
    scale = THUMB_SIDE / max(width, height)
    shown = f'width="{max(1, round(width * scale))}" height="{max(1, round(height * scale))}"'
    pixelated = ' class="pixelated"' if scale > 1 else ""
    return f'<div class="thumb"><img src="{uri}" {shown}{pixelated} alt="thumbnail"></div>'


def member_html(row, thumb: tuple[str, int, int] | None) -> str:
    """One file of a group: thumbnail, path, class, size, format and the start of its sha256."""
    size = f"{row.width}×{row.height}" if pd.notna(row.width) and pd.notna(row.height) else "size unknown"
    return (
        f"<figure>{thumb_html(thumb)}<figcaption><code>{html.escape(row.path)}</code><br>"
        f"class <b>{html.escape(row.label or '(none)')}</b><br>{size} {html.escape(row.format or '?')}<br>"
        f'<span class="hash">sha256 {row.sha256[:10]}</span></figcaption></figure>'
    )


def group_html(group_id: int, group: pd.DataFrame, root: Path) -> str:
    """One duplicate group: what kind of copies, the classes, a flag when they differ, its files."""
    shown = group.head(MAX_MEMBERS_SHOWN)
    unique = shown.drop_duplicates("sha256")  # exact copies are decoded once
    thumbs = {row.sha256: thumbnail(root / row.path) for row in unique.itertuples()}
    contents = group["sha256"].nunique()
    kind = "exact copies (same sha256)" if contents == 1 else f"near copies ({contents} different contents)"
    classes, n_classes = group["group_classes"].iloc[0], int(group["classes_in_group"].iloc[0])
    spans = n_classes > 1
    flag = (f'<p class="flag">Spans {n_classes} classes ({html.escape(classes)}): label conflict; '
            "clean quarantines every file.</p>") if spans else ""
    more = (f'<p class="more">Not shown: {count(len(group) - len(shown), "more file")} of this group; see '
            f"{MANIFEST_CSV} (duplicate_group {group_id}).</p>") if len(group) > len(shown) else ""
    members = "".join(member_html(row, thumbs.get(row.sha256)) for row in shown.itertuples())
    return (
        f'<section class="group{" conflict" if spans else ""}"><h3>Group {group_id}: {len(group)} files, '
        f"{kind}, class{'es' if spans else ''} {html.escape(classes or '(none)')}</h3>"
        f'{flag}<div class="members">{members}</div>{more}</section>'
    )


def duplicate_groups_html(files: pd.DataFrame, root: Path) -> str:
    """Every group of more than one file, those that span classes first, then larger groups first.

    Only files of the groups shown are opened, so the page stays cheap to build and small.
    """
    # Largest image first, then by path: the order in which the clean stage picks the file it keeps.
    members = files[files["duplicate_group"] >= 0]
    members = members.assign(pixels=members["width"].fillna(0) * members["height"].fillna(0))
    grouped = members.sort_values(["pixels", "path"], ascending=[False, True]).groupby("duplicate_group")
    sizes = grouped.size()
    order = (
        pd.DataFrame({"files": sizes, "spans": grouped["classes_in_group"].first() > 1})
        .loc[sizes > 1].reset_index().sort_values(["spans", "files", "duplicate_group"], ascending=[False, False, True])
    )
    shown = order.head(MAX_GROUPS_SHOWN)["duplicate_group"]
    sections = "".join(group_html(int(gid), grouped.get_group(gid), root) for gid in shown)
    hidden = len(order) - len(shown)
    rest = f"Not shown: {count(hidden, 'more group')}. " if hidden else ""
    return (
        f"<h2>Exact and near-duplicate groups ({len(order)} groups, {int(order['files'].sum())} files)</h2>"
        f"<p>Groups that span classes first, then larger groups. Thumbnails fit in {THUMB_SIDE} px, small "
        f"images enlarged (pixelated); at most {MAX_GROUPS_SHOWN} groups and {MAX_MEMBERS_SHOWN} files per "
        f"group are shown. {rest}The full list is in {MANIFEST_CSV} (duplicate_group column).</p>"
        f'<div class="groups">{sections}</div>'
    )


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:75em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    "th{background:#eee}.PASSED{color:#070}.FAILED{color:#b00}"
    ".groups{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
    ".group{border:1px solid #ccc;border-radius:4px;padding:0 1em .8em}"
    # Headings wrap to the width of the thumbnails instead of widening a group: small groups share a row.
    ".group>h3,.group>p{width:0;min-width:100%;box-sizing:border-box}.group h3{font-size:1em;margin:.8em 0 .5em}"
    ".conflict{border:2px solid #b00;background:#fff6f6}"
    ".flag{color:#fff;background:#b00;padding:.2em .6em;border-radius:3px;margin:0 0 .6em}"
    ".members{display:flex;flex-wrap:wrap;gap:.8em}"
    "figure{margin:0;width:9.5em;font-size:.8em;line-height:1.35}"
    f".thumb{{width:{THUMB_SIDE}px;height:{THUMB_SIDE}px;display:flex;align-items:center;justify-content:center;"
    "background:#f3f3f3;border:1px solid #ddd;margin-bottom:.3em}"
    ".pixelated{image-rendering:pixelated}"
    ".missing{color:#b00;font-size:.85em;text-align:center;overflow:hidden;word-break:break-word;padding:.2em}"
    "figcaption code{word-break:break-all}.hash{color:#777}.more{color:#555;font-style:italic}"
)


def summary_html(report: dict, manifest: pd.DataFrame, files: pd.DataFrame, root: Path) -> str:
    """A small page that looks the same offline as online: inline CSS, no scripts, no links out."""
    status = "PASSED" if report["success"] else "FAILED"
    checks = [
        [
            c["name"], c["severity"],
            "pass" if c["success"] else "warn" if c["severity"] == "warning" else "FAIL",
            c["rule"], c["observed"], "; ".join(c["examples"]),
        ]
        for c in report["checks"]
    ]
    classes = [[c["label"], c["files"], c["images"]] for c in report["class_counts"]]
    problems = manifest.loc[(manifest["problem"] != "") | manifest["hidden"], ["path", "problem", "error"]]
    problems = problems.assign(problem=problems["problem"].replace("", "hidden file"))
    links = ", ".join(
        f'<a href="{html.escape(page)}">{html.escape(title)}</a>'
        for title, page in report["data_docs"].items()
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Validation {status}</title><style>{STYLE}</style></head>
<body>
<h1>Data validation: <span class="{status}">{status}</span></h1>
<p>data.root <code>{html.escape(report["data_root"])}</code>: {report["files"]} files,
{report["classes"]} classes, {report["decodable_share"]:.1%} decode, {report["hidden_files"]} hidden,
{report["duplicate_groups"]} groups of duplicates.
Great Expectations Data Docs: {links}.</p>
<h2>Expectations</h2>
{html_table(["expectation", "severity", "result", "rule", "observed", "examples"], checks)}
<h2>Images per class</h2>
{html_table(["class", "files", "decodable images"], classes)}
<h2>Files with problems ({len(problems)}, first 100 listed)</h2>
{html_table(["path", "problem", "detail"], problems.head(100).values.tolist())}
{duplicate_groups_html(files, root)}
</body></html>
"""


def write_reports(out_dir: Path, report: dict, manifest: pd.DataFrame, files: pd.DataFrame, root: Path) -> None:
    """validation.json for machines, summary.html for people (thumbnails read from root, never written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "summary.html").write_text(summary_html(report, manifest, files, root))
