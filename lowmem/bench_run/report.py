"""SAVE/lowmem-bench-report.json (and .txt, its tables; a shard writes its own): what a benchmark run did, item by item (seconds,
SpotEdit's share of tokens computed, peak memory, why an item failed) and per task type. Rewritten
atomically after every item, so a killed run leaves a report of what it finished; the settings that
change an output are kept in it, so a resumed run cannot mix outputs of two settings in one tree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from lowmem.bench_run.meta import BadItem, BenchItem
from lowmem.common.paths import remove_temporaries, write_text_atomic
from lowmem.errors import LowmemError
from lowmem.offload import format_bytes
from lowmem.offload.plan import text_table

REPORT_NAME = "lowmem-bench-report"  # .json and .txt; a shard's: lowmem-bench-report-shard-K-of-N
STATUSES = ("done", "skipped", "failed")


class MixedSettingsError(LowmemError, ValueError):
    """A resumed run whose settings differ from the run that made the outputs already in the tree."""


def _peak(record: dict) -> int:
    """The device's peak on a GPU, else the process's resident peak."""
    return record.get("peak_device_bytes") or record.get("peak_rss_bytes") or 0


class BenchReport:
    def __init__(self, save: Path, settings: dict, shard: Optional[tuple[int, int]] = None):
        self.save = save
        name = REPORT_NAME if shard is None else f"{REPORT_NAME}-shard-{shard[0]}-of-{shard[1]}"
        self.path, self.table_path = save / f"{name}.json", save / f"{name}.txt"
        for path in (self.path, self.table_path):
            remove_temporaries(path)  # what a run killed while writing its report left
        self.settings = settings
        self.previous_settings, self.previous = self._read_previous()
        self.records: dict[int, dict] = {}

    def _read_previous(self) -> tuple[Optional[dict], dict[str, dict]]:
        """An earlier run's settings and finished records (by output path); an unreadable report counts as none."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data["settings"], {r["output"]: r for r in data["items"] if r.get("status") in ("done", "skipped")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None, {}

    def check_settings(self, complete: int) -> None:
        """Refuse to resume into a tree whose `complete` outputs were made with other settings."""
        if not complete or self.previous_settings is None:
            return
        changed = {key: value for key, value in self.settings.items() if self.previous_settings.get(key) != value}
        if changed:
            was = ", ".join(f"{key}={json.dumps(self.previous_settings.get(key))}" for key in changed)
            now = ", ".join(f"{key}={json.dumps(value)}" for key, value in changed.items())
            raise MixedSettingsError(f"{self.save} holds {complete} finished item(s) made with {was}; this run has {now} "
                                     "and would skip them as complete. Give another --out (or run with the same settings)")

    def output_name(self, item: BenchItem) -> str:
        return str(item.outputs.edit.relative_to(self.save))

    def add(self, item: Union[BenchItem, BadItem], status: str, error: Optional[str] = None, **details) -> None:
        record = {**item.describe(), "status": status, **details}
        if isinstance(item, BenchItem):
            record["output"] = self.output_name(item)
        if error is not None:
            record["error"] = error
        self.records[item.number] = record

    def skip(self, item: BenchItem) -> None:
        """An item whose edit is in the tree: the earlier run's measures are kept when it was lowmem's."""
        earlier = self.previous.get(self.output_name(item), {})
        self.add(item, "skipped", **{k: v for k, v in earlier.items() if k not in ("status", "error", *item.describe())})

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for record in self.records.values():
            counts[record["status"]] += 1
        return counts

    def totals(self) -> dict[str, dict]:
        """Per task type and for all items: counts, seconds of the items run now, SpotEdit's mean share, peak memory."""
        groups: dict[str, list[dict]] = {}
        for record in self.records.values():
            groups.setdefault(record["type"], []).append(record)
        groups["all"] = list(self.records.values())
        totals = {}
        for task, records in groups.items():
            ran = [r for r in records if r["status"] == "done"]
            fractions = [r["spot_active_fraction"] for r in ran if r.get("spot_active_fraction") is not None]
            seconds = sum(r["seconds"] for r in ran)
            totals[task] = {**{s: sum(r["status"] == s for r in records) for s in STATUSES}, "items": len(records),
                            "seconds": round(seconds, 3), "seconds_per_item": round(seconds / len(ran), 3) if ran else None,
                            "spot_active_fraction": round(sum(fractions) / len(fractions), 3) if fractions else None,
                            "peak_bytes": max((_peak(r) for r in ran), default=0)}
        return totals

    def write(self) -> None:
        items = [self.records[number] for number in sorted(self.records)]
        data = {"settings": self.settings, "totals": self.totals(), "items": items}
        write_text_atomic(self.path, json.dumps(data, indent=1) + "\n")
        write_text_atomic(self.table_path, self.format() + "\n")

    def format(self) -> str:
        """The per-type table, then every item run now or failed (skipped items are in the JSON)."""
        def number(value, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        header = ("type", "items", "done", "skipped", "failed", "s/item", "spot share", "peak memory")
        rows = [header] + [(task, t["items"], t["done"], t["skipped"], t["failed"], number(t["seconds_per_item"], ".2f"),
                            number(t["spot_active_fraction"], ".2f"), format_bytes(t["peak_bytes"]) if t["peak_bytes"] else "-")
                           for task, t in self.totals().items()]
        lines = [text_table(rows)]
        shown = [self.records[n] for n in sorted(self.records) if self.records[n]["status"] != "skipped"]
        if shown:
            item_rows = [("item", "type", "edit_id", "status", "seconds", "spot share", "peak memory", "error")]
            item_rows += [(r["item"], r["type"], r["edit_id"], r["status"], number(r.get("seconds"), ".2f"),
                           number(r.get("spot_active_fraction"), ".2f"), format_bytes(_peak(r)) if _peak(r) else "-",
                           r.get("error", "")) for r in shown]
            lines += ["", text_table(item_rows)]
        return "\n".join(lines)
