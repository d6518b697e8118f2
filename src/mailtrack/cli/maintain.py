"""`mailtrack maintain`: retention and IP anonymization once, for cron (safe next to a running `serve`)."""

from __future__ import annotations

import typer

from mailtrack.cli.common import open_engine, print_json, stderr
from mailtrack.maintenance.jobs import run_maintenance
from mailtrack.maintenance.settings import get_operations_settings


def maintain_command(
    json_output: bool = typer.Option(False, "--json", help="Print what was done as one JSON object."),
) -> None:
    """Delete expired raw events and rollups and anonymize old IP addresses once; prints what it did."""
    _, engine = open_engine()
    operations = get_operations_settings()
    report = run_maintenance(
        engine,
        chunk_rows=operations.maintenance_chunk_rows,
        lease_seconds=operations.maintenance_lease_seconds,
    )
    if json_output:
        print_json(report.as_dict())
    else:
        for salon in report.salons:
            if salon.status == "done":
                print(
                    f"salon {salon.tenant_id}: {salon.events_deleted} events deleted, "
                    f"{salon.ips_anonymized} IPs anonymized, {salon.rollup_rows_deleted} rollup rows deleted "
                    f"({salon.seconds:.2f}s)"
                )
            elif salon.status == "skipped":
                print(f"salon {salon.tenant_id}: skipped (another run holds it)")
            else:
                print(f"salon {salon.tenant_id}: FAILED ({salon.error})")
        parts = report.partitions
        if parts.status != "not_partitioned":
            failed = f", FAILED ({parts.error})" if parts.status == "failed" else ""
            dropped = f"{parts.dropped} dropped ({parts.events_dropped} events)"
            print(f"partitions: {dropped}, {parts.created} created{failed}")
        totals = report.totals()
        print(
            f"total: {totals['events_deleted']} events deleted, {totals['ips_anonymized']} IPs anonymized, "
            f"{totals['rollup_rows_deleted']} rollup rows deleted in {report.seconds:.2f}s"
        )
    if report.failed:
        stderr.print("[bold red]some steps failed[/]; the next run resumes where they stopped")
        raise typer.Exit(1)
