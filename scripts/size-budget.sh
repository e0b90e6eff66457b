#!/usr/bin/env bash
# Prints a warren binary's stripped size and fails when it is over its budget.
#
#   scripts/size-budget.sh BINARY BUDGET_MIB [STRIP_PROGRAM]
#
# The release profile strips already; this strips a copy anyway (with STRIP_PROGRAM, default
# `strip`, e.g. aarch64-linux-gnu-strip for a foreign binary) so a build with symbols is judged
# the same way.
set -euo pipefail
bin=$1
budget_mib=$2
strip_program=${3:-strip}
copy=$(mktemp)
trap 'rm -f "$copy"' EXIT
cp "$bin" "$copy"
"$strip_program" "$copy" 2>/dev/null || objcopy --strip-all "$copy"
bytes=$(stat -c %s "$copy")
budget=$((budget_mib * 1048576))
awk -v b="$bytes" -v max="$budget" -v name="$bin" -v mib="$budget_mib" 'BEGIN {
    printf "size budget: %s stripped %.2f MiB (%d bytes), budget %d MiB: %s\n",
        name, b / 1048576, b, mib, (b <= max ? "within" : "OVER")
}'
if [ "$bytes" -gt "$budget" ]; then
    echo "size budget: $bin is $((bytes - budget)) bytes over; see docs/building.md (Size budget)" >&2
    exit 1
fi
