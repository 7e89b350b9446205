"""validate: a Great Expectations 1.x suite over the ingested documents, with Data Docs.

Two suites run in one checkpoint: `documents` (one row per document: lengths, printable share, required
columns, counts) and `ingest_stats` (one row: the share of input removed as duplicates). Thresholds come
from conf/validate.yaml.

    report = validate_documents(cfg.validate_, docs_dir, stats, Path("out"))   # out/data_docs, out/result.json
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from lifecycle.config import ValidateConfig
from lifecycle.data.clean import printable_share
from lifecycle.data.ingest import load_documents

log = logging.getLogger("lifecycle.validate")


def documents_frame(docs_dir: Path) -> pd.DataFrame:
    dd = load_documents(docs_dir)
    frame = pd.concat([dd[split].to_pandas() for split in dd], ignore_index=True)
    frame["n_chars"] = frame["text"].str.len()
    frame["printable_share"] = frame["text"].map(printable_share)
    return frame


def build_suites(cfg: ValidateConfig) -> dict[str, list[Any]]:
    import great_expectations.expectations as gxe

    docs = [gxe.ExpectColumnToExist(column=c) for c in cfg.required_columns]
    docs += [
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_documents),
        gxe.ExpectColumnSumToBeBetween(column="n_chars", min_value=cfg.min_characters),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=cfg.min_doc_chars,
                                                max_value=cfg.max_doc_chars, mostly=cfg.length_mostly),
        gxe.ExpectColumnValuesToBeBetween(column="printable_share", min_value=cfg.min_printable_share,
                                          mostly=cfg.printable_mostly),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
    ]
    stats = [gxe.ExpectColumnValuesToBeBetween(column="duplicate_share", min_value=0,
                                               max_value=cfg.max_duplicate_share)]
    return {"documents": docs, "ingest_stats": stats}


def validate_documents(cfg: ValidateConfig, docs_dir: Path, ingest_stats: dict[str, float],
                       out_dir: Path) -> dict[str, Any]:
    """Run the suites, build Data Docs under out_dir/data_docs, write out_dir/result.json; return a report."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    frames = {"documents": documents_frame(docs_dir), "ingest_stats": pd.DataFrame([ingest_stats])}
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_root = out_dir / "data_docs"
    context.update_data_docs_site("local_site", {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_root)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("corpus")
    definitions = []
    for name, expectations in build_suites(cfg).items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definitions.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate-{name}", data=batch, suite=suite)))
    results = []
    for definition in definitions:  # one checkpoint per asset: each needs its own dataframe
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"checkpoint-{definition.name}", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")],
            result_format={"result_format": "SUMMARY"}))
        run = checkpoint.run(batch_parameters={"dataframe": frames[definition.data.data_asset.name]})
        results.extend(run.run_results.values())
    report = summarize(results)
    (out_dir / "result.json").write_text(json.dumps(
        {"report": report, "results": [r.to_json_dict() for r in results]}, indent=2, default=str))
    log.info("validate: %d/%d expectations met", report["passed"], report["evaluated"])
    return report


def summarize(results: list[Any]) -> dict[str, Any]:
    rows = []
    for result in results:
        suite = result.suite_name
        for r in result.results:
            cfg = r.expectation_config
            kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
            rows.append({"suite": suite, "expectation": cfg.type, "kwargs": kwargs, "success": bool(r.success),
                         "observed": _observed(r.result)})
    failed = [row for row in rows if not row["success"]]
    return {"success": not failed, "evaluated": len(rows), "passed": len(rows) - len(failed), "expectations": rows,
            "failed": failed}


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_percent" in result:
        return {"unexpected_percent": round(float(result["unexpected_percent"] or 0), 3),
                "unexpected_count": result.get("unexpected_count"),
                "examples": [str(v)[:60] for v in (result.get("partial_unexpected_list") or [])[:3]]}
    return result


def describe_failures(report: dict[str, Any]) -> str:
    lines = [f"data validation failed: {len(report['failed'])} of {report['evaluated']} expectations not met"]
    for row in report["failed"]:
        column = row["kwargs"].get("column")
        limits = {k: v for k, v in row["kwargs"].items() if k not in ("column",)}
        lines.append(f"  {row['suite']}: {row['expectation']}{f' ({column})' if column else ''}: "
                     f"observed {json.dumps(row['observed'], default=str)}, expected {json.dumps(limits)}")
    lines.append("  thresholds live in conf/validate.yaml")
    return "\n".join(lines)
