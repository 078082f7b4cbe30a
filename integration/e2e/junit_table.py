"""A Markdown table of the tests a focused e2e.test run selected, from its JUnit report.

    python3 junit_table.py FOCUS SKIP junit_01.xml...

Ginkgo's report lists every spec of the suite; specs outside FOCUS (or inside SKIP) were never
selected and are left out; the suite's own nodes (BeforeSuite, ...) appear only when they failed. Each row: test name, result (passed / FAILED / skipped), seconds, and for a
failure or a skip the first line of its message. Stdlib only.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET


def rows(focus: str, skip: str, paths: list[str]) -> list[tuple[str, str, float, str]]:
    want, unwanted = re.compile(focus), re.compile(skip) if skip else None
    out = []
    for path in paths:
        for case in ET.parse(path).getroot().iter("testcase"):
            name = case.get("name", "")
            suite_node = not name.startswith("[It]")  # [SynchronizedBeforeSuite] ...: listed when they fail
            if suite_node and case.find("failure") is None and case.find("error") is None:
                continue
            if not suite_node and (not want.search(name) or (unwanted and unwanted.search(name))):
                continue
            seconds = float(case.get("time") or 0)
            failure = case.find("failure")
            if failure is None:
                failure = case.find("error")
            skipped = case.find("skipped")
            if failure is not None:
                msg = (failure.get("message") or failure.text or "").strip()
                out.append((name, "FAILED", seconds, msg))
            elif skipped is not None:
                out.append((name, "skipped", seconds, (skipped.get("message") or "").strip()))
            else:
                out.append((name, "passed", seconds, ""))
    return sorted(out)


def first_line(text: str, limit: int = 220) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line[:limit].replace("|", "\\|")


def main() -> None:
    focus, skip, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    table = rows(focus, skip, paths)
    counts = {r: sum(1 for row in table if row[1] == r) for r in ("passed", "FAILED", "skipped")}
    print(f"{len(table)} tests: {counts['passed']} passed, {counts['FAILED']} failed, {counts['skipped']} skipped; "
          f"{sum(r[2] for r in table) / 60:.1f} min\n")
    print("| test | result | s | reason |")
    print("|---|---|---|---|")
    for name, result, seconds, msg in table:
        print(f"| {name.replace('|', '/')} | {result} | {seconds:.0f} | {first_line(msg)} |")


if __name__ == "__main__":
    main()
