"""Times specc's verbs on one spec in a fresh process; prints one JSON line.

Run by `bench_compiler` as `python -m benchmarks.compiler_worker SPEC TINY REPS META [PAIR]`.
torch is imported first and timed apart, so every later time is "beyond import torch".
`fixed` is importing specc plus checking a 1-layer spec (grammar, registries); `build`,
`compile` of the tiny spec then warm their own paths unmeasured. Each verb then runs
`REPS` times on SPEC in rotating order (the first check counts as one; REPS 0: only that
first check, a cold sample). With META=1,
`build` runs under ``torch.device("meta")`` (shapes only, no parameter memory). Peak
RSS growth is measured around the first check of SPEC. With PAIR, `check` and `compile`
of SPEC and of PAIR then alternate for REPS more rounds (order swapped each round) and
`paired` holds (SPEC, PAIR) seconds per round: a ratio of two specs measured side by side.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
import traceback


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str]) -> dict:
    spec, tiny, reps, meta = argv[0], argv[1], int(argv[2]), argv[3] == "1"
    out: dict = {"errors": {}}
    t = time.perf_counter()
    import torch

    out["import_torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import specc

    specc.check(tiny)
    out["fixed"] = time.perf_counter() - t
    specc.build(tiny)
    try:
        specc.compile(tiny)
    except Exception:  # reported below, on the real spec
        pass
    gc.collect()
    before = _peak_mb()
    t = time.perf_counter()
    inst = specc.check(spec)
    out["first_check"] = time.perf_counter() - t
    out["rss_growth_mb"] = _peak_mb() - before
    out["params"] = inst.params
    del inst

    def build():
        if meta:
            with torch.device("meta"):
                return specc.build(spec)
        return specc.build(spec)

    verbs = {
        "check": lambda: specc.check(spec),
        "build": build,
        "compile": lambda: specc.compile(spec),
    }
    samples: dict[str, list[float]] = {v: [] for v in verbs}
    samples["check"].append(out["first_check"])
    names = list(verbs)
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if name in out["errors"] or (name == "check" and r == 0):  # first_check is one
                continue
            t = time.perf_counter()
            try:
                result = verbs[name]()
            except Exception as exc:
                out["errors"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
                traceback.print_exc()
                continue
            samples[name].append(time.perf_counter() - t)
            del result
            gc.collect()
    out["samples"] = samples
    if len(argv) > 4:
        pair = argv[4]
        out["paired"] = {"check": [], "compile": []}
        for verb, fn in (("check", specc.check), ("compile", specc.compile)):
            fn(pair)  # warm: the first call of a spec reads and parses its file cold
            for r in range(reps):
                times = {}
                for name in (spec, pair) if r % 2 == 0 else (pair, spec):
                    t = time.perf_counter()
                    fn(name)
                    times[name] = time.perf_counter() - t
                    gc.collect()
                out["paired"][verb].append((times[spec], times[pair]))
    out["torchvision_imported"] = "torchvision" in sys.modules
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
