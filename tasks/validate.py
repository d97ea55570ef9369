"""Validate stage: a manifest of every file under data.root, checked with Great Expectations.

Reads data.root (never writes there) and writes:
  data/manifest.csv                        one row per file (tasks/data/manifest.py), with duplicate groups
  reports/validate/validation.json         result per expectation and images per class
  reports/validate/summary.html            self-contained page for people (no external assets)
  reports/validate/data_docs/index.html    Great Expectations Data Docs (unstyled offline: CDN CSS)

Every expectation comes from params.yaml. One that fails stops the pipeline with a one-screen
summary once the reports are written, unless it is listed in validate.warn_only.
"""
from __future__ import annotations

import html
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from tasks.common.cli import run_stage
from tasks.common.config import Params, UserError, ValidateParams
from tasks.common.paths import MANIFEST_CSV
from tasks.data.duplicates import duplicate_groups
from tasks.data.layout import check_layout, check_outputs_outside, resolve_root
from tasks.data.manifest import build_manifest, class_counts, write_manifest

REPORT_DIR = Path("reports/validate")
# (check name, column) of every GE expectation, in report order; image_size has one per dimension.
EXPECTATIONS = [
    ("decodable", "decodes"),
    ("allowed_formats", "format"),
    ("image_size", "width"),
    ("image_size", "height"),
    ("aspect_ratio", "aspect_ratio"),
    ("label_conflict", "classes_in_group"),
    ("duplicate_share", "is_copy"),
    ("min_images_per_class", "images"),
    ("max_imbalance", "imbalance"),
    ("expected_labels", "label"),
]
CLASS_COLUMNS = {"images", "imbalance", "label"}  # checked on the class table, not per file
EXAMPLES = 5  # offending rows kept per expectation in the reports (the log shows 3)
NOT_A_CANDIDATE = ("symlink_leaves_root", "symlinked_folder", "broken_symlink")


# --- what is checked ----------------------------------------------------------------------------


def file_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows the file expectations judge, with derived columns.

    Hidden files and symlinks that are not followed are left out: they are recorded in the
    manifest and quarantined by the clean stage, but are not part of the data set's quality.
    """
    rows = manifest[~manifest["hidden"] & ~manifest["problem"].isin(NOT_A_CANDIDATE)].copy()
    rows["aspect_ratio"] = (rows["width"] / rows["height"]).astype("float64").round(4)
    labelled = rows[rows["decodes"] & (rows["label"] != "")]
    classes = labelled.groupby("duplicate_group")["label"].agg(lambda s: ", ".join(sorted(set(s))))
    rows["group_classes"] = rows["duplicate_group"].map(classes).fillna("")
    rows["classes_in_group"] = rows["group_classes"].map(lambda c: len(c.split(", ")) if c else 0)
    # Within a group, the first file by path is the original; every other file is a copy.
    in_group = rows[rows["duplicate_group"] >= 0]
    rows["is_copy"] = in_group.duplicated("duplicate_group").reindex(rows.index, fill_value=False)
    rows["original"] = rows["duplicate_group"].map(in_group.groupby("duplicate_group")["path"].first())
    return rows.reset_index(drop=True)


def class_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Class counts with the imbalance of each class: largest class / this class (empty: null)."""
    images = counts["images"].astype("float64")
    return counts.assign(imbalance=(images.max() / images.where(images > 0)).round(3))


def rules(p: ValidateParams) -> dict[tuple[str, str], str]:
    """What each expectation demands, in words, keyed like EXPECTATIONS."""
    lo, hi = p.aspect_ratio
    return {
        ("decodable", "decodes"): f"at least {p.decodable_mostly * 100:g}% of files decode fully",
        ("allowed_formats", "format"): f"decoded files are {', '.join(p.allowed_formats)}",
        ("image_size", "width"): f"images are {p.min_width}-{p.max_width} px wide",
        ("image_size", "height"): f"images are {p.min_height}-{p.max_height} px high",
        ("aspect_ratio", "aspect_ratio"): f"width / height is between {lo:g} and {hi:g}",
        ("label_conflict", "classes_in_group"): "no image (or near-copy of it) is in two classes",
        ("duplicate_share", "is_copy"): (
            f"at most {p.max_duplicate_share * 100:g}% of images are exact or near copies of another"
        ),
        ("min_images_per_class", "images"): f"every class has at least {p.min_images_per_class} decodable images",
        ("max_imbalance", "imbalance"): f"the largest class is at most {p.max_imbalance:g}x any other",
        ("expected_labels", "label"): f"the class folders are exactly {', '.join(p.expected_labels)}",
    }


def file_expectations(p: ValidateParams) -> list:
    """Expectations on the file table, one file per row.

    All but `decodable` judge decoded files only (a row condition), so a broken file counts
    once, against `decodable`, and each list of offenders has one cause.
    """
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    decoded = Column("decodes") == True  # noqa: E712  builds a GE condition, not a Python bool
    meta = {key: {"check": key[0], "rule": rule} for key, rule in rules(p).items()}
    lo, hi = p.aspect_ratio
    return [
        gxe.ExpectColumnValuesToBeInSet(
            column="decodes", value_set=[True], mostly=p.decodable_mostly, meta=meta[("decodable", "decodes")],
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="format", value_set=p.allowed_formats, row_condition=decoded,
            meta=meta[("allowed_formats", "format")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=p.min_width, max_value=p.max_width, row_condition=decoded,
            meta=meta[("image_size", "width")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=p.min_height, max_value=p.max_height, row_condition=decoded,
            meta=meta[("image_size", "height")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="aspect_ratio", min_value=lo, max_value=hi, row_condition=decoded,
            meta=meta[("aspect_ratio", "aspect_ratio")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="classes_in_group", max_value=1, row_condition=decoded,
            meta=meta[("label_conflict", "classes_in_group")],
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="is_copy", value_set=[False], mostly=1.0 - p.max_duplicate_share, row_condition=decoded,
            meta=meta[("duplicate_share", "is_copy")],
        ),
    ]


def class_expectations(p: ValidateParams) -> list:
    """Expectations on the class table, one class per row."""
    import great_expectations.expectations as gxe

    meta = {key: {"check": key[0], "rule": rule} for key, rule in rules(p).items()}
    expectations = [
        gxe.ExpectColumnValuesToBeBetween(
            column="images", min_value=p.min_images_per_class, meta=meta[("min_images_per_class", "images")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="imbalance", max_value=p.max_imbalance, meta=meta[("max_imbalance", "imbalance")],
        ),
    ]
    if p.expected_labels:
        expectations.append(gxe.ExpectColumnDistinctValuesToEqualSet(
            column="label", value_set=p.expected_labels, meta=meta[("expected_labels", "label")],
        ))
    return expectations


def gx_context(docs_dir: Path):
    """An in-memory GE context (no gx/ project folder, no cloud) whose Data Docs go to docs_dir."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        # GE requires an absolute folder when the context has no root directory.
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={"local_site": site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),  # the stage shows its own progress
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_checkpoint(context, name: str, frame: pd.DataFrame, expectations: list, key: str) -> list:
    """Validate one table with its own suite and checkpoint, and add the result to Data Docs.

    One checkpoint per table, because a checkpoint hands the same dataframe to all of its
    validation definitions. `key` is the column that names offending rows in the results.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    asset = context.data_sources.get("validate").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": [key],
                "partial_unexpected_count": EXAMPLES,
            },
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    return [r for suite_result in result.run_results.values() for r in suite_result.results]


def run_expectations(files: pd.DataFrame, classes: pd.DataFrame, p: ValidateParams, docs_dir: Path) -> list:
    """Run both suites and build Data Docs; returns GE's ExpectationValidationResult objects."""
    if docs_dir.exists():
        shutil.rmtree(docs_dir)  # pages of an earlier run would otherwise linger beside the new ones
    context = gx_context(docs_dir)
    context.data_sources.add_pandas("validate")
    columns = ["path", "label", "decodes", "format", "width", "height", "aspect_ratio", "classes_in_group", "is_copy"]
    return [
        *run_checkpoint(context, "files", files[columns], file_expectations(p), key="path"),
        *run_checkpoint(context, "classes", classes, class_expectations(p), key="label"),
    ]


# --- results ------------------------------------------------------------------------------------


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
        "symlinks_not_followed": int(manifest["problem"].isin(NOT_A_CANDIDATE).sum()),
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


def failure_message(report: dict) -> str:
    names = ", ".join(report["failed_blocking"])
    return (
        f"{len(report['failed_blocking'])} blocking expectation(s) failed: {names} (examples above). "
        f"See {REPORT_DIR / 'summary.html'}; fix the data, or list the expectation in validate.warn_only "
        "in params.yaml to only warn."
    )


# --- reports ------------------------------------------------------------------------------------


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


# --- stage --------------------------------------------------------------------------------------


def run(params: Params, workdir: Path = Path(".")) -> dict:
    """Build the manifest, run the expectations, write the reports; raise on blocking failures."""
    start, p = time.perf_counter(), params.validate_
    root = resolve_root(params, workdir)
    manifest_path, out_dir = workdir / MANIFEST_CSV, workdir / REPORT_DIR
    entries, classes = check_layout(root)
    check_outputs_outside(root, [manifest_path, out_dir])

    manifest, stats = build_manifest(root, entries, p.max_pixels, workdir)
    manifest["duplicate_group"] = duplicate_groups(manifest, p.near_duplicate_distance)
    write_manifest(manifest, manifest_path)
    files, counts = file_table(manifest), class_table(class_counts(manifest, classes))

    results = run_expectations(files, counts, p, out_dir / "data_docs")
    report = build_report(params, manifest, files, counts, results, out_dir / "data_docs")
    write_reports(out_dir, report, manifest, files)

    print(console_summary(report, stats, time.perf_counter() - start), file=sys.stderr)
    if report["failed_blocking"]:
        raise UserError(failure_message(report))
    keys = ["files", "classes", "decodable_share", "duplicate_groups", "failed_blocking", "failed_warning"]
    return {**{key: report[key] for key in keys}, "read": stats["read"], "cached": stats["cached"]}


if __name__ == "__main__":
    run_stage("validate", run)
