"""What the validate stage reports: validation.json, a self-contained summary.html, and one screen
for the log, built from Great Expectations' results."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from tasks.common.config import Params
from tasks.data.expectations import CLASS_COLUMNS, EXPECTATIONS
from tasks.data.manifest import NOT_FOLLOWED


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


def summary_html(report: dict, manifest: pd.DataFrame, files: pd.DataFrame) -> str:
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
    groups = files[files["duplicate_group"] >= 0].groupby("duplicate_group")
    dupes = [[", ".join(g["path"]), g["group_classes"].iloc[0]] for _, g in groups if len(g) > 1]
    links = ", ".join(
        f'<a href="{html.escape(page)}">{html.escape(title)}</a>'
        for title, page in report["data_docs"].items()
    )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:75em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
        "th{background:#eee}.PASSED{color:#070}.FAILED{color:#b00}"
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Validation {status}</title><style>{style}</style></head>
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
<h2>Exact and near-duplicate groups ({len(dupes)}, first 50 listed)</h2>
{html_table(["files", "classes"], dupes[:50])}
</body></html>
"""


def write_reports(out_dir: Path, report: dict, manifest: pd.DataFrame, files: pd.DataFrame) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "summary.html").write_text(summary_html(report, manifest, files))
