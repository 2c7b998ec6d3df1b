#!/usr/bin/env bash
# make dist: static release binaries of tether for linux, darwin and windows
# on amd64 and arm64, with the version and commit stamped in (`tether
# version` prints them), and their SHA256SUMS.
#
#   VERSION   the version to stamp (default: git describe --tags --always --dirty)
#   TARGETS   GOOS/GOARCH pairs, or "host" (default: the six release targets)
#   DIST_DIR  where to put them (default: dist)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+dirty"; fi
out=${DIST_DIR:-dist}
targets=${TARGETS:-"linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64"}
if [ "$targets" = host ]; then targets="$(go env GOOS)/$(go env GOARCH)"; fi
rm -rf "$out"
mkdir -p "$out"
for t in $targets; do
  os=${t%/*} arch=${t#*/} ext=""
  if [ "$os" = windows ]; then ext=.exe; fi
  name="tether-$version-$os-$arch$ext"
  echo "building $name"
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath \
    -ldflags "-s -w -X main.version=$version -X main.commit=$commit" -o "$out/$name" ./cmd/tether
done
(cd "$out" && sha256sum tether-* > SHA256SUMS)
echo "in $out/:"
cat "$out/SHA256SUMS"
