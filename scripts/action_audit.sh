#!/usr/bin/env bash
# The audit step of the mlsec GitHub Action (action.yml): run `mlsec audit` with the action's
# inputs, write the reports, publish the Markdown report and the report paths, and exit with
# mlsec's exit code (0 ok, 1 a threshold failed, 2 bad input, 3 internal error).
#
# The inputs arrive as environment variables (INPUT_MODEL, INPUT_ARCH, INPUT_DATA, INPUT_SUITE,
# INPUT_EPS, INPUT_FAIL_UNDER, INPUT_STRICT, INPUT_OUTPUT_DIR, INPUT_EXTRA_ARGS), never pasted
# into this script's text, so an input cannot run shell code. Each value reaches mlsec as one
# argument; only INPUT_FAIL_UNDER and INPUT_EXTRA_ARGS are split, at whitespace, without glob
# expansion or evaluation.
set -u -o pipefail
set -f  # no glob expansion when splitting the inputs

out="${INPUT_OUTPUT_DIR:-mlsec-report}"
args=(audit --out "$out" --no-color --no-progress)
[ -n "${INPUT_MODEL:-}" ] && args+=(--model "$INPUT_MODEL")
[ -n "${INPUT_ARCH:-}" ] && args+=(--arch "$INPUT_ARCH")
[ -n "${INPUT_DATA:-}" ] && args+=(--data "$INPUT_DATA")
[ -n "${INPUT_SUITE:-}" ] && args+=(--suite "$INPUT_SUITE")
[ -n "${INPUT_EPS:-}" ] && args+=(--eps "$INPUT_EPS")
for spec in ${INPUT_FAIL_UNDER:-}; do  # one or more ATTACK@EPS=MIN, space or newline separated
    args+=(--fail-under "$spec")
done
case "${INPUT_STRICT:-false}" in
    true | True | TRUE) args+=(--strict) ;;
    false | False | FALSE | "") ;;
    *)
        echo "::error::input strict must be true or false (got '${INPUT_STRICT}')"
        exit 2
        ;;
esac
read -r -a extra <<< "${INPUT_EXTRA_ARGS:-}"
args+=("${extra[@]}")

"${MLSEC:-mlsec}" "${args[@]}"
code=$?

for kind in json markdown html junit; do
    case "$kind" in
        json) file="$out/report.json" ;;
        markdown) file="$out/report.md" ;;
        html) file="$out/report.html" ;;
        junit) file="$out/report.junit.xml" ;;
    esac
    if [ -f "$file" ] && [ -n "${GITHUB_OUTPUT:-}" ]; then
        echo "$kind=$file" >> "$GITHUB_OUTPUT"
    fi
done
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    echo "exit-code=$code" >> "$GITHUB_OUTPUT"
fi
if [ -f "$out/report.md" ] && [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$out/report.md" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$code"
