#!/usr/bin/env python3
"""Sets two parley-bench reports of the same scenario side by side: Parley's and the reference
server's (`./dev bench side-by-side`).

    bench-side-by-side.py PARLEY_RESULTS.json REFERENCE_RESULTS.json

Each file is the JSON array `parley-bench --json` writes; the first report of each is compared.
Every figure either reports is a row, then CPU µs per message and cores for each part (the
gateway, persistence and NATS for Parley; node for the reference; Postgres and the bench for
both). The last column is the reference's figure divided by Parley's. Standard library only.
"""
import json
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        reports = json.load(f)
    if not reports:
        sys.exit(f"{path} holds no report")
    return reports[0]


def number(v):
    if v is None:
        return "–"
    if v == int(v) or abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or a == 0:
        return ""
    return f"{b / a:.2f}×"


def rows(parley, reference):
    """(label, parley value, reference value, unit) for every figure and part."""
    names, units = [], {}
    for report in (parley, reference):
        for f in report["figures"]:
            if f["name"] not in units:
                names.append(f["name"])
                units[f["name"]] = f["unit"]
    figures = [
        {f["name"]: f["value"] for f in r["figures"]} for r in (parley, reference)
    ]
    for name in names:
        yield name, figures[0].get(name), figures[1].get(name), units[name]
    for key, label, unit in (
        ("cpu_us_per_message", "cpu µs/message", "µs"),
        ("cpu_cores", "cpu cores", "cores"),
    ):
        parts = list(parley[key]) + [p for p in reference[key] if p not in parley[key]]
        # `total` last, the bench (not part of the system under test) just before it.
        parts.sort(key=lambda p: (p == "total", p == "bench"))
        for part in parts:
            yield f"{label}: {part}", parley[key].get(part), reference[key].get(part), unit


def main(parley_path, reference_path):
    parley, reference = load(parley_path), load(reference_path)
    params = {k: v for k, v in parley["params"].items() if k not in ("server", "persistence")}
    table = [("", "parley", "reference", "", "ref ÷ parley")]
    table.append(
        (
            "verified",
            "yes" if parley["verified"] else "NO",
            "yes" if reference["verified"] else "NO",
            "",
            "",
        )
    )
    for name, p, r, unit in rows(parley, reference):
        table.append((name, number(p), number(r), unit, ratio(p, r)))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    print(f"── {parley['scenario']} side by side {json.dumps(params)}")
    for row in table:
        print(
            f"   {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}"
            f"  {row[3]:<{widths[3]}}  {row[4]}".rstrip()
        )
    for name, report in (("parley", parley), ("reference", reference)):
        for problem in report["problems"]:
            print(f"   ! {name}: {problem}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
