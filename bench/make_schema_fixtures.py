"""Copy a seeded, stratified sample of JSONSchemaBench schemas into the test fixtures.

For each split of ``SPLITS`` (a folder of ``<name>.json`` files under ``--data``), the files are
sorted by name and shuffled with ``random.Random(f"{seed}/{split}")`` (so one split's pick does
not depend on the others); the first ``--per-split`` of them that pass the filters are copied
byte for byte to ``--out`` as ``<split>__<name>.json``. Filters, and nothing else (in
particular no check of what a grammar backend supports): the file is at most ``--max-bytes``
bytes, parses as JSON, is not one of the 60 older fixtures (``LEGACY``, picked another way: see
the fixtures' README) and is not a duplicate of one of them or of a schema picked before it
(same content once parsed). The pick depends only on ``--data`` and the options, so a rerun
copies nothing new; files already in ``--out`` are kept.

    python bench/make_schema_fixtures.py --per-split 25 --seed 2024 --max-bytes 20000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SPLITS = (
    "Github_trivial",
    "Glaiveai2K",
    "Github_easy",
    "Github_medium",
    "Snowplow",
    "WashingtonPost",
)
# The 60 fixtures of the first sample (10 per split), kept as they are.
LEGACY = {
    "Github_easy": "o14025 o27395 o33707 o38553 o47040 o47148 o5202 o67501 o85187 o90325",
    "Github_medium": "o41044 o41283 o41508 o68444 o70016 o83282 o83394 o8475 o85208 o9520",
    "Github_trivial": "o32735 o41702 o46364 o46562 o57711 o60129 o64727 o65608 o85940 o90442",
    "Glaiveai2K": "calculate_area_2f953bb0 calculate_area_5a2bb813 calculate_area_8f5e3e5c "
    "calculate_area_bc8cb44f calculate_area_e9c99a9d calculate_perimeter_fa61f5a8 "
    "create_calendar_event_d21ed730 generate_invoice_97c217c8 schedule_meeting_9ed64d34 "
    "search_jobs_7b9cb0e1",
    "Snowplow": "sp_161_Normalized sp_165_Normalized sp_221_Normalized sp_263_Normalized "
    "sp_269_Normalized sp_392_Normalized sp_401_Normalized sp_44_Normalized sp_59_Normalized "
    "sp_68_Normalized",
    "WashingtonPost": "wp_103_Normalized wp_40_Normalized wp_42_Normalized wp_52_Normalized "
    "wp_58_Normalized wp_64_Normalized wp_69_Normalized wp_82_Normalized wp_86_Normalized "
    "wp_92_Normalized",
}
REPO = Path(__file__).resolve().parent.parent


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def sample(data: Path, per_split: int, seed: int, max_bytes: int) -> dict[str, list[Path]]:
    """The source files picked, per split."""
    legacy = {(s, f"{n}.json") for s, names in LEGACY.items() for n in names.split()}
    seen = {_canonical((data / s / f).read_text()) for s, f in legacy if (data / s / f).is_file()}
    picked: dict[str, list[Path]] = {}
    for split in SPLITS:
        folder = data / split
        if not folder.is_dir():
            raise SystemExit(f"error: no split folder {folder}")
        files = sorted(folder.glob("*.json"))
        random.Random(f"{seed}/{split}").shuffle(files)
        picked[split] = []
        for f in files:
            if len(picked[split]) == per_split:
                break
            if (split, f.name) in legacy or f.stat().st_size > max_bytes:
                continue
            try:
                key = _canonical(f.read_text())
            except ValueError:
                continue
            if key not in seen:
                seen.add(key)
                picked[split].append(f)
        if len(picked[split]) < per_split:
            print(f"warning: {split}: only {len(picked[split])} schemas passed", file=sys.stderr)
    return picked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default="../shared/data/jsonschemabench",
        help="JSONSchemaBench folder, one sub-folder per split (relative paths: from the repo root)",
    )
    parser.add_argument(
        "--out",
        default="tests/fixtures/jsonschemabench",
        help="fixture folder (relative paths: from the repo root)",
    )
    parser.add_argument("--per-split", type=int, default=25, help="schemas picked per split")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--max-bytes", type=int, default=20_000, help="skip schema files larger than this"
    )
    args = parser.parse_args(argv)
    data = Path(args.data) if Path(args.data).is_absolute() else REPO / args.data
    out = Path(args.out) if Path(args.out).is_absolute() else REPO / args.out
    if not data.is_dir():
        parser.error(
            f"--data {data} is not a folder: point it at a JSONSchemaBench checkout "
            f"(one sub-folder per split: {', '.join(SPLITS)})"
        )
    picked = sample(data, args.per_split, args.seed, args.max_bytes)
    out.mkdir(parents=True, exist_ok=True)
    total_new = 0
    for split, files in picked.items():
        new = 0
        for f in files:
            target = out / f"{split}__{f.name}"
            if not target.exists():
                target.write_bytes(f.read_bytes())
                new += 1
        total_new += new
        print(f"{split}: {len(files)} picked, {new} copied")
    print(f"{total_new} schemas copied to {out}")


if __name__ == "__main__":
    main()
