#!/usr/bin/env bash
# Quality gates that rustc and clippy do not cover, run by .ci/run:
# - `unsafe` lives only in resnet-kernels: every other crate root says #![forbid(unsafe_code)].
# - no test is skipped silently: #[ignore] must carry a written reason, #[ignore = "why"].
# The `// SAFETY:` comment on every unsafe block is clippy's `undocumented_unsafe_blocks`, and
# an unsafe operation inside an `unsafe fn` needs its own block (`unsafe_op_in_unsafe_fn`):
# both denied in Cargo.toml's [workspace.lints], so `cargo clippy` checks them.
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
[ "$fail" = 0 ] && echo "gates: ok"
exit "$fail"
