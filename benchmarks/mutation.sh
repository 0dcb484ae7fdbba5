#!/usr/bin/env bash
# Mutation score of the pure modules and of the serving admission and containment code (issue 11).
#
#   benchmarks/mutation.sh                       # every module below, each with its own tests (~15 min, 2 cores)
#   benchmarks/mutation.sh eval_metrics serve_admin    # only these (names: the first column below)
#   MUTATION_SHOW=1 benchmarks/mutation.sh serve_admin # also print the diff of every surviving mutant
#
# Tool: mutmut 3 (.venv/bin/pip install "mutmut==3.8.1"; not a runtime dependency). Each module runs in its
# own copy of tuneforge/ and tests/ under .cache/mutation/<name> (git-ignored), with a setup.cfg written
# there, so nothing in the checkout is mutated and the tests of one module do not run for another.
# mutmut runs the listed tests once to learn which test reaches which function, then runs, for each
# mutant, only the tests that reach the mutated function (forked, `pytest -x -q`).
# Prints a table (killed / survived / timeout / no tests / total per module) and a final JSON line.
# Exit status: 0 when it ran (whatever the score), non-zero when a module could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MUTMUT=${MUTMUT:-$ROOT/.venv/bin/mutmut}
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${MUTATION_WORK:-$ROOT/.cache/mutation}

# name | file to mutate | functions to mutate (mutmut name globs; empty: the whole file) | its tests
MODULES=$(cat <<'EOF'
eval_metrics|tuneforge/eval/metrics.py||tests/test_eval_metrics.py
bench_stats|tuneforge/bench/stats.py||tests/test_bench.py tests/test_properties_bench.py
data_split|tuneforge/data/split.py||tests/test_data_prepare.py tests/test_properties_data.py
data_stats|tuneforge/data/stats.py||tests/test_data_prepare.py tests/test_properties_data.py
cost_analyzer|tuneforge/cost/analyzer.py||tests/test_cost.py tests/test_properties_cost.py tests/test_mutation_cost.py
cost_serving|tuneforge/cost/serving.py||tests/test_cost.py tests/test_properties_cost.py tests/test_mutation_cost.py
serve_admin|tuneforge/serve/admin.py||tests/test_serve_app.py tests/test_properties_serve.py
serve_admission|tuneforge/serve/service.py|*ǁGenerationServiceǁenter__mutmut_* *ǁGenerationServiceǁleave__mutmut_* *ǁGenerationServiceǁstart_stream__mutmut_* *ǁGenerationServiceǁcomplete_batch__mutmut_*|tests/test_serve_app.py tests/test_properties_serve.py
EOF
)

[ -x "$MUTMUT" ] || { echo "mutmut not found at $MUTMUT: .venv/bin/pip install 'mutmut==3.8.1'" >&2; exit 2; }
mkdir -p "$WORK"
selected=("$@")
for want in "${selected[@]}"; do
    grep -q "^$want|" <<<"$MODULES" || { echo "unknown module '$want'; one of: $(cut -d'|' -f1 <<<"$MODULES" | xargs)" >&2; exit 2; }
done
summaries=()

while IFS='|' read -r name file functions tests; do
    [ -n "$name" ] || continue
    if [ ${#selected[@]} -gt 0 ] && [[ ! " ${selected[*]} " == *" $name "* ]]; then
        continue
    fi
    dir="$WORK/$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    # the working tree as it is now (tracked or not), without caches
    tar -C "$ROOT" --exclude=__pycache__ --exclude=.hypothesis -cf - tuneforge tests data configs benchmarks pyproject.toml | tar -C "$dir" -xf -
    existing_tests=()
    for t in $tests; do [ -e "$ROOT/$t" ] && existing_tests+=("$t"); done
    {
        echo "[mutmut]"
        echo "source_paths = tuneforge"
        echo "only_mutate = $file"
        echo "pytest_add_cli_args = -p no:cacheprovider"
        printf 'also_copy =\n    data\n    configs\n    benchmarks\n'  # what tests read from the repo root
        echo "pytest_add_cli_args_test_selection ="
        for t in "${existing_tests[@]}"; do echo "    $t"; done
        echo "use_git_change_detection = false"
    } >"$dir/setup.cfg"
    echo "== $name: mutating $file${functions:+ ($functions)} with ${existing_tests[*]}" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086  # the globs are mutmut's, not the shell's
    if ! (cd "$dir" && set -f && "$MUTMUT" run $functions >"$dir/run.log" 2>&1); then
        tail -30 "$dir/run.log" >&2
        echo "mutmut failed on $name (log: $dir/run.log)" >&2
        exit 1
    fi
    (cd "$dir" && "$MUTMUT" results --all true >"$dir/results.txt" 2>/dev/null)
    seconds=$(($(date +%s) - start))
    summaries+=("$("$PY" - "$name" "$file" "$dir/results.txt" "$seconds" "$functions" <<'PY'
import fnmatch, json, sys
name, file, results, seconds, functions = sys.argv[1:]
globs = functions.split()
counts, survivors = {}, []
for line in open(results, encoding="utf-8"):
    key, _, status = line.strip().rpartition(": ")
    if not key or (globs and not any(fnmatch.fnmatch(key, g) for g in globs)):
        continue
    counts[status] = counts.get(status, 0) + 1
    if status != "killed":
        survivors.append(f"{key}: {status}")
print(json.dumps({"module": name, "file": file, "seconds": int(seconds), "counts": counts, "not_killed": survivors}))
PY
)")
    if [ "${MUTATION_SHOW:-0}" = 1 ]; then
        grep -v ": killed$" "$dir/results.txt" | while read -r line; do
            key=${line%: *}
            [ -z "$functions" ] || "$PY" -c 'import fnmatch,sys; sys.exit(not any(fnmatch.fnmatch(sys.argv[1], g) for g in sys.argv[2:]))' "$key" $functions || continue
            (cd "$dir" && "$MUTMUT" show "$key" 2>/dev/null) || true
        done
    fi
done <<<"$MODULES"

printf '%s\n' "${summaries[@]}" >"$WORK/summary.jsonl"
"$PY" - "$WORK/summary.jsonl" <<'PY'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
cols = ("killed", "survived", "timeout", "no tests", "suspicious")
print(f"{'module':<16} {'file':<28} " + " ".join(f"{c:>10}" for c in cols) + f" {'total':>6} {'score':>7} {'time':>6}")
tot = dict.fromkeys(cols, 0)
total_all = 0
for r in rows:
    n = sum(r["counts"].values())
    total_all += n
    for c in cols:
        tot[c] += r["counts"].get(c, 0)
    # a timeout counts as killed (the mutant made the tests hang), as mutmut scores it
    score = (r["counts"].get("killed", 0) + r["counts"].get("timeout", 0)) / n if n else 0.0
    cells = " ".join(f"{r['counts'].get(c, 0):>10}" for c in cols)
    print(f"{r['module']:<16} {r['file']:<28} {cells} {n:>6} {score:>7.1%} {r['seconds']:>5}s")
for r in rows:
    for s in r["not_killed"]:
        print(f"  not killed: {s}")
killed = tot["killed"] + tot["timeout"]
modules = {r["module"]: r["counts"] for r in rows}
score = round(killed / total_all, 4) if total_all else None
print(json.dumps({"tool": "mutmut", "modules": modules, "killed": killed, "total": total_all, "score": score}))
PY
