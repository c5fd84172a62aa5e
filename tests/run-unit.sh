#!/usr/bin/env bash
# Runs each unit-test binary (optionally under valgrind) in its own scratch
# directory and prints one total line "N passed, N failed".
set -u
vg=""
if [ "${1:-}" = "--valgrind" ]; then
    vg="valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite -q"
    shift
fi
passed=0 failed=0 status=0
for t in "$@"; do
    dir=$(mktemp -d)
    out=$(cd "$dir" && $vg "$OLDPWD/$t" 2>&1)
    rc=$?
    rm -rf "$dir"
    line=$(printf '%s\n' "$out" | grep -E '[0-9]+ passed, [0-9]+ failed' | tail -1)
    p=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/')
    f=$(printf '%s' "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    if [ -z "$line" ]; then p=0; f=1; fi
    if [ $rc -ne 0 ] || [ "$f" != 0 ]; then
        printf '%s\n' "$out"
        status=1
        [ "$f" = 0 ] && f=1
    else
        printf '%s\n' "$line"
    fi
    passed=$((passed + p)) failed=$((failed + f))
done
echo "unit: $passed passed, $failed failed"
exit $status
