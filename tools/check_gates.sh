#!/usr/bin/env bash
# Quality gates that rustc and clippy do not cover, run by .ci/run:
# - `unsafe` lives only in resnet-kernels: every other crate root says #![forbid(unsafe_code)].
# - no test is skipped silently: #[ignore] must carry a written reason, #[ignore = "why"].
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for root in resnet-core/src/lib.rs resnet-cli/src/main.rs resnet-server/src/lib.rs benches/lib.rs; do
  if [ -f "$root" ] && ! grep -q '^#!\[forbid(unsafe_code)\]' "$root"; then
    echo "gate: $root lacks #![forbid(unsafe_code)] (unsafe belongs in resnet-kernels only)" >&2
    fail=1
  fi
done
# Crate roots of every other workspace member must forbid unsafe too.
for manifest in */Cargo.toml; do
  dir=${manifest%/Cargo.toml}
  [ "$dir" = resnet-kernels ] && continue
  for root in "$dir/src/lib.rs" "$dir/src/main.rs" "$dir/lib.rs"; do
    if [ -f "$root" ] && ! grep -q '^#!\[forbid(unsafe_code)\]' "$root"; then
      echo "gate: $root lacks #![forbid(unsafe_code)]" >&2
      fail=1
    fi
  done
done
if bare=$(grep -rn --include='*.rs' -E '#\[ignore\]' . --exclude-dir=target --exclude-dir=fuzz 2>/dev/null) && [ -n "$bare" ]; then
  echo "gate: #[ignore] without a reason (write #[ignore = \"why\"]):" >&2
  echo "$bare" >&2
  fail=1
fi
# Every unsafe block in resnet-kernels states its invariant in a // SAFETY: comment within the
# six lines above it (comments may span lines, attributes may sit between).
missing=$(awk '
  FNR == 1 { n = 0 }
  /unsafe[[:space:]]*\{/ {
    ok = ($0 ~ /SAFETY:/)
    for (i = 1; i <= 6 && i <= n; i++) if (last[(n - i) % 6] ~ /SAFETY:/) ok = 1
    if (!ok) print FILENAME ":" FNR ": " $0
  }
  { last[n % 6] = $0; n++ }
' $(find resnet-kernels/src -name '*.rs'))
if [ -n "$missing" ]; then
  echo "gate: unsafe block without a // SAFETY: comment just above:" >&2
  echo "$missing" >&2
  fail=1
fi
[ "$fail" = 0 ] && echo "gates: ok"
exit "$fail"
