"""Validate stage: a manifest of every file under data.root, checked with Great Expectations.

Reads data.root (never writes there) and writes:
  data/manifest.csv                        one row per file; later stages read it with tasks.manifest.read_manifest
  reports/validate/validation.json         result per expectation and images per class
  reports/validate/summary.html            self-contained page for people (no external assets)
  reports/validate/data_docs/index.html    Great Expectations Data Docs (unstyled offline: CDN CSS)

A blocking expectation that fails stops the pipeline with a UserError once the reports are
written; expectations listed in validate.warn_only only print a warning.
"""
from __future__ import annotations

import html
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from tasks.cli import run_stage
from tasks.config import Params, UserError, ValidateParams
from tasks.manifest import (
    MANIFEST_FILE,
    build_manifest,
    check_classes_have_images,
    check_layout,
    check_outputs_outside,
    class_counts,
    resolve_root,
    write_manifest,
)

REPORT_DIR = Path("reports/validate")
# (check name, column) of every GE expectation, in report order; min_size has one per dimension.
EXPECTATIONS = [
    ("decodable", "decodes"),
    ("allowed_formats", "format"),
    ("min_size", "width"),
    ("min_size", "height"),
    ("min_images_per_class", "images"),
]
EXAMPLES = 5  # offending rows kept per expectation in the reports (the error message shows 3)


# --- Great Expectations -------------------------------------------------------------------------
# GE is imported inside these functions: it takes seconds to import.


def rules(p: ValidateParams) -> dict[tuple[str, str], str]:
    """What each expectation demands, in words, keyed like EXPECTATIONS."""
    return {
        ("decodable", "decodes"): f"at least {p.decodable_mostly * 100:g}% of files decode fully",
        ("allowed_formats", "format"): f"decoded files are {', '.join(p.allowed_formats)}",
        ("min_size", "width"): f"decoded images are at least {p.min_width} px wide",
        ("min_size", "height"): f"decoded images are at least {p.min_height} px high",
        ("min_images_per_class", "images"): (
            f"every class has at least {p.min_images_per_class} decodable images"
        ),
    }


def manifest_expectations(p: ValidateParams) -> list:
    """Expectations on the manifest, one file per row.

    Format and size are judged on decoded files only (a row condition), so a broken file counts
    once, against `decodable`, and each list of offenders has one cause. Format and size are
    strict: allowed_formats, min_width and min_height are explicit choices in params.yaml.
    """
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    decoded = Column("decodes") == True  # noqa: E712  builds a GE condition, not a Python bool
    meta = {key: {"check": key[0], "rule": rule} for key, rule in rules(p).items()}
    return [
        gxe.ExpectColumnValuesToBeInSet(
            column="decodes", value_set=[True], mostly=p.decodable_mostly,
            meta=meta[("decodable", "decodes")],
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="format", value_set=p.allowed_formats, row_condition=decoded,
            meta=meta[("allowed_formats", "format")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=p.min_width, row_condition=decoded,
            meta=meta[("min_size", "width")],
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=p.min_height, row_condition=decoded,
            meta=meta[("min_size", "height")],
        ),
    ]


def class_expectations(p: ValidateParams) -> list:
    """Expectations on the class count table, one class per row."""
    import great_expectations.expectations as gxe

    rule = rules(p)[("min_images_per_class", "images")]
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="images", min_value=p.min_images_per_class,
            meta={"check": "min_images_per_class", "rule": rule},
        )
    ]


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


def run_expectations(
    manifest: pd.DataFrame, counts: pd.DataFrame, p: ValidateParams, docs_dir: Path
) -> list:
    """Run both suites and build Data Docs; returns GE's ExpectationValidationResult objects."""
    if docs_dir.exists():
        shutil.rmtree(docs_dir)  # pages of an earlier run would otherwise linger beside the new ones
    context = gx_context(docs_dir)
    context.data_sources.add_pandas("validate")
    return [
        *run_checkpoint(context, "manifest", manifest, manifest_expectations(p), key="path"),
        *run_checkpoint(context, "class_counts", counts, class_expectations(p), key="label"),
    ]


# --- results ------------------------------------------------------------------------------------


def describe_example(item: dict, key: str, column: str, errors: dict[str, str]) -> str:
    """One offending row as text: the file's error for undecodable files, else the bad value."""
    if column == "decodes":
        return f"{item[key]}: {errors.get(item[key]) or 'does not decode'}"
    return f"{item[key]}: {column} {item.get(column)}"


def summarise(result, warn_only: list[str], errors: dict[str, str]) -> dict:
    """One GE expectation result as a plain dict for validation.json, summary.html and messages."""
    config = result.expectation_config
    column, check = config.kwargs["column"], config.meta["check"]
    stats = result.result or {}
    total, bad = stats.get("element_count"), stats.get("unexpected_count")
    unit = {"decodes": "files", "images": "classes"}.get(column, "decoded files")
    if total is None or bad is None:
        reason = (result.exception_info or {}).get("exception_message") or "see Data Docs"
        observed = f"not evaluated ({reason})"
    else:
        observed = f"{total - bad} of {total} {unit} pass ({(total - bad) / total if total else 1:.1%})"
    key = "label" if column == "images" else "path"
    return {
        "name": check,
        "severity": "warning" if check in warn_only else "blocking",
        "success": bool(result.success),
        "expectation": config.type,
        "column": column,
        "rule": config.meta["rule"],
        "observed": observed,
        "element_count": total,
        "unexpected_count": bad,
        "examples": [
            describe_example(item, key, column, errors)
            for item in stats.get("partial_unexpected_index_list", [])
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
    params: Params, manifest: pd.DataFrame, counts: pd.DataFrame, results: list, docs_dir: Path
) -> dict:
    """Everything validation.json holds: overall success, the checks, class counts, page links."""
    errors = dict(zip(manifest["path"], manifest["error"]))
    checks = sorted(
        (summarise(r, params.validate_.warn_only, errors) for r in results),
        key=lambda c: EXPECTATIONS.index((c["name"], c["column"])),
    )
    failed = [c for c in checks if not c["success"]]
    blocking = [c["name"] for c in failed if c["severity"] == "blocking"]
    return {
        "success": not blocking,
        "data_root": params.data.root,
        "files": len(manifest),
        "classes": len(counts),
        "decodable_share": round(float(manifest["decodes"].mean()), 4),
        # dict.fromkeys: min_size can fail on both of its columns but is one name.
        "failed_blocking": list(dict.fromkeys(blocking)),
        "failed_warning": list(dict.fromkeys(c["name"] for c in failed if c["severity"] == "warning")),
        "checks": checks,
        "class_counts": counts.to_dict(orient="records"),
        "data_docs": data_docs_pages(docs_dir),
    }


def failure_message(failed: list[dict]) -> str:
    """A one-screen account of the blocking failures and how to act on them."""
    lines = [f"{len(failed)} blocking expectation(s) failed:"]
    for check in failed:
        lines.append(f"  - {check['name']}: {check['rule']}; observed {check['observed']}")
        lines += [f"      e.g. {example}" for example in check["examples"][:3]]
    lines.append(
        f"See {REPORT_DIR / 'summary.html'}. Fix the data, or list the expectation in "
        "validate.warn_only in params.yaml to only warn."
    )
    return "\n".join(lines)


def raise_on_failures(report: dict) -> None:
    """Print each failed warning-only expectation; raise a UserError if any blocking one failed."""
    failed = [c for c in report["checks"] if not c["success"]]
    for check in failed:
        if check["severity"] == "warning":
            print(f"validate: warning: {check['name']}: {check['rule']}; observed {check['observed']}",
                  file=sys.stderr)
    blocking = [c for c in failed if c["severity"] == "blocking"]
    if blocking:
        raise UserError(failure_message(blocking))


# --- reports ------------------------------------------------------------------------------------


def html_table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_html(report: dict, manifest: pd.DataFrame) -> str:
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
    undecodable = manifest.loc[~manifest["decodes"], ["path", "error"]]
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
{report["classes"]} classes, {report["decodable_share"]:.1%} decode.
Great Expectations Data Docs: {links}.</p>
<h2>Expectations</h2>
{html_table(["expectation", "severity", "result", "rule", "observed", "examples"], checks)}
<h2>Images per class</h2>
{html_table(["class", "files", "decodable images"], classes)}
<h2>Files that do not decode ({len(undecodable)}, first 50 listed)</h2>
{html_table(["path", "error"], undecodable.head(50).values.tolist())}
</body></html>
"""


def write_reports(out_dir: Path, report: dict, manifest: pd.DataFrame) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "summary.html").write_text(summary_html(report, manifest))


# --- stage --------------------------------------------------------------------------------------


def run(params: Params, workdir: Path = Path(".")) -> dict:
    """Build the manifest, run the expectations, write the reports; raise on blocking failures."""
    root = resolve_root(params, workdir)
    manifest_path, out_dir = workdir / MANIFEST_FILE, workdir / REPORT_DIR
    files, classes = check_layout(root)
    check_outputs_outside(root, [manifest_path, out_dir])

    manifest = build_manifest(root, files)
    write_manifest(manifest, manifest_path)
    check_classes_have_images(manifest, classes)
    counts = class_counts(manifest, classes)

    results = run_expectations(manifest, counts, params.validate_, out_dir / "data_docs")
    report = build_report(params, manifest, counts, results, out_dir / "data_docs")
    write_reports(out_dir, report, manifest)

    raise_on_failures(report)
    keys = ["files", "classes", "decodable_share", "failed_blocking", "failed_warning"]
    return {key: report[key] for key in keys}


if __name__ == "__main__":
    run_stage("validate", run)
