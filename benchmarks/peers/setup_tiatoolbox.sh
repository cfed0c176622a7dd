#!/usr/bin/env bash
# Build (or refresh) the separate TIAToolbox 2.1.3 benchmark environment at .venv-tia.
#
#   bash benchmarks/peers/setup_tiatoolbox.sh        # from the repository root or anywhere
#
# Idempotent: re-running only installs what is missing. Never touches .venv.
# TIAToolbox 2.1.3 declares torch<2.13 / torchvision<0.28; we run it beside torch 2.13.0+cpu,
# so tiatoolbox is installed with --no-deps and every other package comes from the pinned
# lock file benchmarks/peers/tiatoolbox-requirements.txt, also with --no-deps (no resolution,
# hence no chance of pip pulling an unpinned torch or nvidia-* wheels). Before installing,
# a --dry-run report is checked for exactly that.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${TIA_VENV:-$ROOT/.venv-tia}"
LOCK="$HERE/tiatoolbox-requirements.txt"
PY_BASE="${PYTHON:-python3}"
TIA_PIN="tiatoolbox==2.1.3"
TORCH_PIN="2.13.0+cpu"

die() { echo "setup_tiatoolbox: $*" >&2; exit 1; }

[ -f "$LOCK" ] || die "missing lock file $LOCK"
"$PY_BASE" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
  || die "need CPython 3.11 (torch 2.13.0+cpu wheel is cp311); set PYTHON=/path/to/python3.11"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY_BASE" -m venv "$VENV" || die "python -m venv $VENV failed"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
LOG="$(mktemp)"; REPORT="$(mktemp)"
trap 'rm -f "$LOG" "$REPORT"' EXIT

check_report() {  # $1 = pip --report json; refuse nvidia-*/cuda wheels or any torch but 2.13.0+cpu
  "$PY" - "$1" "$TORCH_PIN" <<'EOF'
import json, sys
rep = json.load(open(sys.argv[1])); want = sys.argv[2]
bad = []
for it in rep.get("install", []):
    name = it["metadata"]["name"].lower().replace("_", "-"); ver = it["metadata"]["version"]
    if name.startswith(("nvidia-", "cuda-", "triton")):
        bad.append(f"{name}=={ver}")
    if name == "torch" and ver != want:
        bad.append(f"torch=={ver} (want {want})")
if bad:
    print("would install forbidden packages: " + ", ".join(bad)); sys.exit(1)
EOF
}

# 1) pinned dependencies (incl. torch==2.13.0+cpu from the local wheel), no resolution.
"${PIP[@]}" install --dry-run --no-deps --only-binary=:all: --quiet --report "$REPORT" -r "$LOCK" >"$LOG" 2>&1 \
  || die "dry-run of pinned requirements failed: $(grep -m1 -E '^ERROR' "$LOG" || tail -n1 "$LOG")"
msg="$(check_report "$REPORT")" || die "$msg"
"${PIP[@]}" install --no-deps --only-binary=:all: --quiet -r "$LOCK" >"$LOG" 2>&1 \
  || die "installing pinned requirements failed: $(grep -m1 -E '^ERROR' "$LOG" || tail -n1 "$LOG")"

# 2) tiatoolbox itself, ignoring its torch<2.13 / torchvision<0.28 caps.
"${PIP[@]}" install --dry-run --no-deps --only-binary=:all: --quiet --report "$REPORT" "$TIA_PIN" >"$LOG" 2>&1 \
  || die "dry-run of $TIA_PIN failed: $(grep -m1 -E '^ERROR' "$LOG" || tail -n1 "$LOG")"
msg="$(check_report "$REPORT")" || die "$msg"
"${PIP[@]}" install --no-deps --only-binary=:all: --quiet "$TIA_PIN" >"$LOG" 2>&1 \
  || die "installing $TIA_PIN failed: $(grep -m1 -E '^ERROR' "$LOG" || tail -n1 "$LOG")"

# 3) sanity: pip check may only complain about tiatoolbox's torch/torchvision caps.
"${PIP[@]}" check >"$LOG" 2>&1
if grep -v -E '^tiatoolbox 2\.1\.3 has requirement (torch|torchvision)[<>=]' "$LOG" \
     | grep -v -E '^No broken requirements' | grep -q .; then
  die "unexpected broken requirements: $(grep -v -E '^tiatoolbox 2\.1\.3 has requirement (torch|torchvision)' "$LOG" | head -n1)"
fi
# torchvision 0.28.0 is the +cu130 build: its ops cannot load beside torch 2.13.0+cpu, so a plain
# `import torchvision` fails; the runner declares the two op schemas first (see its docstring).
"$PY" "$HERE/tiatoolbox_segment.py" --self-check >"$LOG" 2>&1 \
  || die "import check (tiatoolbox_segment.py --self-check) failed: $(grep -v '^|' "$LOG" | tail -n1)"
grep -q '"tiatoolbox": "2.1.3", "torch": "2.13.0+cpu"' "$LOG" \
  || die "unexpected versions: $(grep -v '^|' "$LOG" | tail -n1)"

echo "setup_tiatoolbox: ok ($VENV: tiatoolbox 2.1.3, torch $TORCH_PIN)"
