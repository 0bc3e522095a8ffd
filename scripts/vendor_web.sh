#!/usr/bin/env bash
# Vendors transformers.js and onnxruntime-web's WASM runtime into quantize/page/vendor/ from the npm registry, so the
# extraction page (backend 'web') runs offline from its own origin: no CDN. Idempotent: a matching VERSION file
# means done. --ignore-scripts: onnxruntime-node's and sharp's install scripts download native binaries the browser
# never uses.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSFORMERS_JS=4.3.1
VENDORED="$TRANSFORMERS_JS with the plain WASM build"  # a new line here re-vendors an older copy
dest=quantize/page/vendor
if [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$VENDORED" ]; then exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node.js (e.g. apt-get install npm) to vendor transformers.js" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npm install --prefix "$tmp" --no-audit --no-fund --ignore-scripts --omit=optional --no-package-lock \
  "@huggingface/transformers@$TRANSFORMERS_JS" >/dev/null
modules="$tmp/node_modules"
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
cp "$modules/@huggingface/transformers/dist/transformers.min.js" "$dest.tmp/"
cp "$modules/@huggingface/transformers/LICENSE" "$dest.tmp/transformers.js.LICENSE"
# Two WASM builds of the onnxruntime-web version transformers.js bundles: asyncify (transformers.js's default,
# which WebGPU needs) and the plain one, which the page loads on WASM (half the size; see extract.js).
for build in ort-wasm-simd-threaded.asyncify ort-wasm-simd-threaded; do
  cp "$modules/onnxruntime-web/dist/$build.mjs" "$modules/onnxruntime-web/dist/$build.wasm" "$dest.tmp/"
done
cp "$modules/onnxruntime-web/LICENSE" "$dest.tmp/onnxruntime-web.LICENSE" 2>/dev/null || true
echo "$VENDORED" > "$dest.tmp/VERSION"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "== transformers.js $TRANSFORMERS_JS vendored into $dest =="
