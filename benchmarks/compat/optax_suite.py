"""Run optax's own test files with adamx's optimizers in place of optax's same-named ones.

    python benchmarks/compat/optax_suite.py [--files _src/alias_test.py ...] [--report out.md]
        [--expect benchmarks/compat/expected_failures.txt] [--blocks] [-- pytest args]

The selected test files of the *installed* optax are copied into a temporary directory (with an
empty pytest.ini, so no project configuration leaks in) and run twice under pytest with
``compat_plugin``: once as they are (the baseline) and once with adamx substituted. A failure is
"caused by substitution" when the test fails substituted but not in the baseline. The report
lists those per file, with a one-line reason each, grouped into categories.

``--expect FILE`` (one test id or fnmatch pattern per line, ``# reason`` comments allowed): exit
1 when a substitution failure is not on that list (entries that now pass are reported as stale).
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (category, regex searched in the failure message); the first match wins. "{kw}" in a category
# is filled from the regex's named group, so each unknown keyword gets a category of its own.
CATEGORIES = [
    ("harness: test file not importable", r"ERROR collecting|ImportError|ModuleNotFoundError"),
    (
        "update() rejects extra keyword args (optax: GradientTransformationExtraArgs)",
        r"update\(\) got an unexpected keyword argument",
    ),
    (
        "factory rejects keyword `{kw}`",
        r"\w+\(\) got an unexpected keyword argument '(?P<kw>\w+)'|"
        r"Given `static_args`: \{'(?P<kw2>\w+)'\}",
    ),
    (
        "positional arguments: count or meaning differs",
        r"positional arguments? but \d+ (were|was) given|multiple values for argument",
    ),
    (
        "learning_rate annotation is the string 'ScalarOrSchedule', not optax.ScalarOrSchedule",
        r"doesn't accept a learning schedule",
    ),
    ("init on jax.ShapeDtypeStruct raises", r"ShapeDtypeStruct"),
    ("complex params refused", r"has dtype complex\d+ \(complex\)"),
    ("integer params refused", r"has dtype u?int\d+ \(not a float\)"),
    ("grads/params dtype mismatch refused", r"grads\S* has dtype \w+ but params"),
    (
        "inject_hyperparams: weight_decay=0 becomes an array, then update() needs params",
        r"reads the current parameters, but `update` was called without them",
    ),
    (
        "inject_hyperparams: state structure differs from the plain optimizer's",
        r"Trees have different structures",
    ),
    (
        "state layout differs from optax's (tests name optax state classes / fields)",
        r"ScaleBy\w*State|TraceState|object has no attribute '(trace|mu|nu|count)'|"
        r"'ArrayImpl' and 'dict'",
    ),
    ("numerics differ (assert_allclose)", r"[Nn]ot equal to tolerance|[Nn]ot almost equal"),
]


def locate_optax() -> Path:
    import optax

    return Path(optax.__file__).resolve().parent


def default_files(optax_dir: Path, names: list[str]) -> list[str]:
    """Every optax test file that, or whose module under test, mentions a substituted name."""
    word = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def mentions(test: Path) -> bool:
        module = test.with_name(test.name.removesuffix("_test.py") + ".py")
        return any(p.exists() and word.search(p.read_text()) for p in (test, module))

    files = sorted(p for p in optax_dir.rglob("*_test.py") if mentions(p))
    return [str(p.relative_to(optax_dir)) for p in files]


def run_pytest(mode: str, files: list[str], src: Path, work: Path, out_dir: Path, extra: list):
    for rel in files:
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest)
    (work / "pytest.ini").write_text("[pytest]\n")
    result_json = out_dir / f"{mode}.json"
    env = dict(os.environ)
    env.update(
        ADAMX_COMPAT_MODE=mode,
        ADAMX_COMPAT_OUT=str(result_json),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
        JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"),
        # sharding_test.py sets this itself, too late when another module initialised jax first.
        XLA_FLAGS=env.get("XLA_FLAGS", "--xla_force_host_platform_device_count=8"),
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "compat_plugin", "-p", "no:cacheprovider"]
    cmd += ["--import-mode=importlib", "--continue-on-collection-errors", "-q", "--tb=line"]
    cmd += [*files, *extra]
    log = out_dir / f"{mode}.log"
    print(f"[{mode}] pytest on {len(files)} files (log: {log})", flush=True)
    with open(log, "w") as f:
        rc = subprocess.call(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    print(f"[{mode}] rc={rc}: {tail[0]}", flush=True)
    if rc not in (0, 1) or not result_json.exists():
        print(log.read_text()[-4000:], file=sys.stderr)
        sys.exit(f"pytest in mode {mode} failed to run (rc={rc}); see {log}")
    return json.loads(result_json.read_text())


def one_line(message: str) -> str:
    skipped = re.match(r"\('.*', \d+, '(.*)'\)$", message.strip(), re.S)  # a skip's longrepr
    message = skipped.group(1) if skipped else message
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    text = " ".join(lines[:3]) if lines and lines[0].endswith(":") else (lines or [""])[0]
    text = re.sub(r"\s+", " ", text)
    return text[:220] + ("..." if len(text) > 220 else "")


def categorize(message: str) -> str:
    for name, pattern in CATEGORIES:
        m = re.search(pattern, message)
        if m:
            kw = next((v for v in m.groupdict().values() if v), "")
            return name.format(kw=kw)
    return "other"


def aliases_of(entry: dict, names: set[str]) -> list[str]:
    """The substituted names the test called (`name` from the test, `name (via optax)` else);
    when it called none (skipped first, say), the names quoted in its absl parameters."""
    direct = {c.split("@")[0] for c in entry.get("calls", []) if c.endswith("@test")}
    indirect = {c.split("@")[0] for c in entry.get("calls", []) if c.endswith("@optax")} - direct
    if not direct and not indirect:
        quoted = set(re.findall(r"'(\w+)'", entry.get("params", ""))) & names
        return [f"{n} (by params)" for n in sorted(quoted)]
    return sorted(direct) + [f"{n} (via optax)" for n in sorted(indirect)]


def file_of(test_id: str) -> str:
    return test_id.split("::")[0]


def compare(base: dict, subst: dict) -> list[dict]:
    """Failures (and errors) under substitution that the baseline does not have, and tests the
    baseline passes that substitution skips (a skip can hide a difference just as well)."""
    names = {p.rsplit("adamx.", 1)[1] for p in subst["patched"]}
    caused = []
    for tid, entry in sorted(subst["results"].items()):
        before = base["results"].get(tid, {}).get("outcome")
        failed = entry["outcome"] in ("failed", "error") and before not in ("failed", "error")
        if failed or (entry["outcome"] == "skipped" and before == "passed"):
            caused.append(
                dict(
                    id=tid,
                    outcome=entry["outcome"],
                    reason=one_line(entry["message"]),
                    category=categorize(entry["message"]),
                    aliases=aliases_of(entry, names),
                    params=entry.get("params", ""),
                )
            )
    return caused


def counts(results: dict) -> dict[str, collections.Counter]:
    per_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for tid, entry in results.items():
        per_file[file_of(tid)][entry["outcome"]] += 1
    return per_file


def fmt(c: collections.Counter) -> str:
    return f"{c['passed']}/{c['failed'] + c['error']}/{c['skipped']}"


def render(base: dict, subst: dict, caused: list[dict], header: str) -> str:
    b, s = counts(base["results"]), counts(subst["results"])
    by_file = collections.Counter(file_of(c["id"]) for c in caused)
    out = [header, "", "## Per file", ""]
    out += ["passed/failed/skipped (errors count as failed). *Caused*: fails (or is newly"]
    out += ["skipped) with adamx substituted but not in the baseline.", ""]
    out += ["| file | tests | baseline | adamx substituted | caused by substitution |"]
    out += ["|---|---:|---|---|---:|"]
    for f in sorted(set(b) | set(s)):
        n = max(sum(b[f].values()), sum(s[f].values()))
        out.append(f"| `{f}` | {n} | {fmt(b[f])} | {fmt(s[f])} | {by_file[f]} |")
    tb, ts = sum(b.values(), collections.Counter()), sum(s.values(), collections.Counter())
    n = max(sum(tb.values()), sum(ts.values()))
    out.append(f"| **total** | {n} | {fmt(tb)} | {fmt(ts)} | **{len(caused)}** |")

    by_cat: dict[str, list[dict]] = collections.defaultdict(list)
    for c in caused:
        by_cat[c["category"]].append(c)
    order = sorted(by_cat, key=lambda cat: (-len(by_cat[cat]), cat))
    out += ["", "## Categories", "", "| category | tests | per alias |", "|---|---:|---|"]
    for cat in order:
        per_alias = collections.Counter(a for c in by_cat[cat] for a in c["aliases"] or ["(none)"])
        aliases = ", ".join(f"{a} {k}" for a, k in sorted(per_alias.items()))
        out.append(f"| {cat} | {len(by_cat[cat])} | {aliases} |")
    per_alias = collections.Counter(
        a.removesuffix(" (by params)") for c in caused for a in c["aliases"] or ["(none)"]
    )
    out += ["", "Per alias (a test calling several aliases counts for each; *via optax*: called by"]
    out += ["optax's own code, e.g. muon's adamw, not by the test):", ""]
    out += [", ".join(f"`{a}` {k}" for a, k in per_alias.most_common()), ""]

    out += ["## Tests caused to fail (or skip) by substitution", ""]
    for cat in order:
        out += [f"### {cat} ({len(by_cat[cat])})", "", "| test id | aliases | reason |"]
        out += ["|---|---|---|"]
        for c in by_cat[cat]:
            reason = c["reason"].replace("|", "\\|")
            if c["outcome"] == "skipped":
                reason = "SKIPPED (passes in the baseline): " + reason
            params = f"<br>{c['params'][:160]}".replace("|", "\\|") if c["params"] else ""
            out.append(f"| `{c['id']}`{params} | {', '.join(c['aliases'])} | {reason} |")
        out.append("")

    base_fail = sorted(t for t, e in base["results"].items() if e["outcome"] in ("failed", "error"))
    fixed = [t for t in base_fail if subst["results"].get(t, {}).get("outcome") == "passed"]
    out += [f"## Baseline failures (optax itself, not counted above): {len(base_fail)}", ""]
    out += [f"- `{t}`: {one_line(base['results'][t]['message'])}" for t in base_fail]
    if fixed:
        out += ["", f"Of these, {len(fixed)} pass with adamx substituted."]
    return "\n".join(out) + "\n"


def write_expect(path: Path, caused: list[dict]) -> None:
    lines = ["# test id  # category: reason (generated by optax_suite.py --write-expect)"]
    for c in sorted(caused, key=lambda c: (c["category"], c["id"])):
        lines.append(f"{c['id']}  # {c['category']}: {c['reason'][:120]}")
    path.write_text("\n".join(lines) + "\n")


def read_expect(path: Path) -> list[str]:
    patterns = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            patterns.append(line)
    return patterns


def check_expect(caused: list[dict], patterns: list[str]) -> int:
    unexpected = [c for c in caused if not any(fnmatch.fnmatchcase(c["id"], p) for p in patterns)]
    stale = [p for p in patterns if not any(fnmatch.fnmatchcase(c["id"], p) for c in caused)]
    for p in stale:
        print(f"stale expectation (no longer fails): {p}")
    for c in unexpected:
        print(f"UNEXPECTED: {c['id']}  [{c['category']}] {c['reason']}")
    print(f"{len(caused)} substitution failures, {len(unexpected)} unexpected, {len(stale)} stale")
    return 1 if unexpected else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", nargs="+", help="test files relative to the optax package")
    p.add_argument("--report", type=Path, help="write the markdown report here")
    p.add_argument("--expect", type=Path, help="exit 1 on substitution failures not listed here")
    p.add_argument("--blocks", action="store_true", help="also substitute same-named blocks")
    p.add_argument("--write-expect", type=Path, help="write today's failures as an expect file")
    p.add_argument("--out-dir", type=Path, help="keep the JSON results and logs here")
    p.add_argument("--reuse", action="store_true", help="re-render from --out-dir, run nothing")
    p.add_argument(
        "--reuse-baseline",
        action="store_true",
        help="take the baseline (it depends on optax only) from --out-dir/none.json if present",
    )
    args = p.parse_args(argv)

    import adamx

    mode = "blocks" if args.blocks else "optimizers"
    optax_dir = locate_optax()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="adamx-compat-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        base = json.loads((out_dir / "none.json").read_text())
        subst = json.loads((out_dir / f"{mode}.json").read_text())
    else:
        sys.path.insert(0, str(HERE))
        from compat_plugin import substitution_table

        files = args.files or default_files(optax_dir, list(substitution_table(mode)))
        with tempfile.TemporaryDirectory(prefix="optax-tests-") as work:
            if args.reuse_baseline and (out_dir / "none.json").exists():
                base = json.loads((out_dir / "none.json").read_text())
            else:
                base = run_pytest("none", files, optax_dir, Path(work), out_dir, extra)
            subst = run_pytest(mode, files, optax_dir, Path(work), out_dir, extra)

    import optax

    caused = compare(base, subst)
    substituted = sorted({p.rsplit("adamx.", 1)[1] for p in subst["patched"]})
    header = "\n".join(
        [
            "# optax's test suite with adamx substituted (generated by optax_suite.py)",
            "",
            f"optax {optax.__version__} (`{optax_dir}`), adamx {adamx.__version__}, mode `{mode}`.",
            f"Substituted ({len(subst['patched'])} optax attributes): "
            + ", ".join(f"`{n}`" for n in substituted)
            + ".",
        ]
    )
    report = render(base, subst, caused, header)
    if args.report:
        args.report.write_text(report)
        print(f"report: {args.report}")
    else:
        print(report)
    if args.write_expect:
        write_expect(args.write_expect, caused)
    print(f"results and logs: {out_dir}")
    return check_expect(caused, read_expect(args.expect)) if args.expect else 0


if __name__ == "__main__":
    sys.exit(main())
