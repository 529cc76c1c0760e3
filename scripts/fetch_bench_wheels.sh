#!/usr/bin/env bash
# Wheels of the benchmark peers (the `bench` extra: lightly 1.6.x, byol-pytorch 0.9.x) and
# of all their dependencies but torch's, for a machine without network: Python 3.12,
# manylinux x86_64 (the GPU machine). Saved in wheels/ (git-ignored), where
# benchmarks/gpu_bench.sh installs them from with `pip install --no-index`.
#
# torch and torchvision are never fetched (nor triton, nvidia-*, cuda-*): pip resolves the
# tree in a scratch venv where a stub "torch 2.11.0" and "torchvision 0.26.0" count as
# installed, so the resolution stops at them and fetches no GPU build. Then every other
# package of the tree is downloaded with --no-deps for the target platform.
# antlr4-python3-runtime 4.9 (hydra-core's pin; hydra is only lightly's CLI) exists only as
# an sdist: it is built here into a pure-Python wheel first. Needs PyPI (pip's index).
#   scripts/fetch_bench_wheels.sh            # into wheels/
#   DEST=/some/dir scripts/fetch_bench_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${DEST:-wheels}
PEERS=("lightly>=1.6,<1.7" "byol-pytorch>=0.9,<0.10" "kornia>=0.9,<0.10")  # keep in step with pyproject's bench extra
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
# pip >= 24 resolves for another platform with --dry-run alone (older pips force --target,
# which ignores installed packages, stubs included).
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24" \
  2> >(grep -v "is ignored: it is neither" >&2)
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for stub in torch:2.11.0 torchvision:0.26.0; do
  name=${stub%%:*} version=${stub##*:}
  mkdir -p "$site/$name-$version.dist-info"
  printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$name" "$version" >"$site/$name-$version.dist-info/METADATA"
  printf 'stub\n' >"$site/$name-$version.dist-info/INSTALLER"
  : >"$site/$name-$version.dist-info/RECORD"
done

mkdir -p "$DEST"
"$tmp/venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DEST" \
  "antlr4-python3-runtime==4.9.*" 2> >(grep -v "is ignored: it is neither" >&2)
echo "fetch_bench_wheels: resolving ${PEERS[*]} for Python 3.12 manylinux x86_64"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --dry-run --report "$tmp/report.json" \
  --find-links "$DEST" "${TARGET[@]}" "${PEERS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
"$tmp/venv/bin/python" - "$tmp/report.json" >"$tmp/pins.txt" <<'EOF'
import json, re, sys
skip = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if skip.match(name.lower()):
        sys.exit(f"fetch_bench_wheels: the resolution wants {name} {version}; refusing to fetch it")
    print(f"{name}=={version}")
EOF
echo "fetch_bench_wheels: downloading $(wc -l <"$tmp/pins.txt") wheels into $DEST/"
"$tmp/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --find-links "$DEST" "${TARGET[@]}" -d "$DEST" \
  -r "$tmp/pins.txt" 2> >(grep -v "is ignored: it is neither" >&2)
# Keep one version of each package (an older download beside a newer one stops the install).
"$tmp/venv/bin/python" - "$DEST" "$tmp/pins.txt" <<'EOF'
import pathlib, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
wanted = {norm(line.split("==")[0]): line.split("==")[1].strip() for line in open(sys.argv[2]) if line.strip()}
for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if norm(name) in wanted and version != wanted[norm(name)]:
        print(f"fetch_bench_wheels: removing {wheel.name} (superseded)")
        wheel.unlink()
EOF
ls -1 "$DEST"
echo "fetch_bench_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST/"
