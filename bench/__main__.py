"""``python -m bench [name ...]``: run the benchmark modules, print a table, merge the figures
into ``bench/results.json``.

Every ``bench/bench_*.py`` module is run (or those whose names contain one of the arguments),
in name order. A module whose ``run()`` raises prints its error and the others still run; its
figures are left as they were in ``results.json``. Exit status 1 if any failed.
"""

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"


def modules(selected=()):
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    return [n for n in names if not selected or any(s in n for s in selected)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    figures, failed, rows = {}, [], []
    for name in modules(argv):
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            result = importlib.import_module(f"bench.{name}").run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            print(f"   {name} FAILED after {time.perf_counter() - start:.1f} s", flush=True)
            continue
        print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
        figures.update(result)
        rows += [(key, value, name) for key, value in result.items()]
    if rows:
        width = max(len(key) for key, _, _ in rows)
        print()
        print(f"{'figure':<{width}}  {'value':>14}  module")
        for key, value, name in rows:
            if isinstance(value, float):
                text = f"{value:,.4g}"
            elif isinstance(value, int):
                text = f"{value:,}"
            else:                       # a table (a list of rows): printed by its module
                text = f"{len(value)} rows"
            print(f"{key:<{width}}  {text:>14}  {name}")
    try:
        merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    except ValueError:
        print(f"{RESULTS} was not valid JSON: starting it afresh")
        merged = {}
    merged.update(figures)
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"\n{len(figures)} figures merged into {RESULTS}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
