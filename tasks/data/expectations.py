"""The Great Expectations suites of the validate stage: every rule from params.yaml (validate.*),
checked on the file table and the class table, with Data Docs written beside the reports
(self-contained: tasks/data/data_docs_offline.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from tasks.common.config import ValidateParams
from tasks.data.data_docs_offline import make_offline

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
    """Run both suites and build Data Docs that read offline; returns GE's ExpectationValidationResult objects."""
    if docs_dir.exists():
        shutil.rmtree(docs_dir)  # pages of an earlier run would otherwise linger beside the new ones
    context = gx_context(docs_dir)
    context.data_sources.add_pandas("validate")
    columns = ["path", "label", "decodes", "format", "width", "height", "aspect_ratio", "classes_in_group", "is_copy"]
    results = [
        *run_checkpoint(context, "files", files[columns], file_expectations(p), key="path"),
        *run_checkpoint(context, "classes", classes, class_expectations(p), key="label"),
    ]
    make_offline(docs_dir)
    return results
