#!/bin/bash -eu
# Builds every cargo-fuzz target of fuzz/fuzz_targets into $OUT, the way
# OSS-Fuzz and ClusterFuzzLite call a project's build script: from the
# source tree (cwd, or $VIRTIO_SRC), with $OUT, $SANITIZER, $FUZZING_ENGINE
# and $ARCHITECTURE set by the engine. Beside each binary it puts
# <target>_seed_corpus.zip (the checked-in corpus) and <target>.options.
# `.ci/fuzz` runs this very script with the same variables in every CI run.
set -euo pipefail
src="${VIRTIO_SRC:-$PWD}"
cd "$src/fuzz"

: "${OUT:?OUT must name the output directory}"
sanitizer="${SANITIZER:-address}"
engine="${FUZZING_ENGINE:-libfuzzer}"
arch="${ARCHITECTURE:-x86_64}"

if [ "$engine" != libfuzzer ]; then
    echo "build.sh: fuzzing engine $engine not supported (cargo-fuzz targets are libFuzzer only)" >&2
    exit 1
fi
if [ "$arch" != x86_64 ]; then
    echo "build.sh: architecture $arch not supported (the workspace is x86_64: KVM harness, PVH loader)" >&2
    exit 1
fi
case "$sanitizer" in
    address|memory|thread|leak) san_flag=(--sanitizer "$sanitizer") ;;
    none|undefined|coverage) san_flag=(--sanitizer none) ;;
    *) echo "build.sh: sanitizer $sanitizer not supported" >&2; exit 1 ;;
esac

# Use the engine's cargo (OSS-Fuzz's base-builder-rust wraps it and defaults
# to nightly); elsewhere ask for nightly explicitly.
cargo_cmd=(cargo)
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && ! cargo --version | grep -q nightly; then
    cargo_cmd=(cargo +nightly)
fi
# Coverage builds get their instrumentation from the engine's RUSTFLAGS.
"${cargo_cmd[@]}" fuzz build --fuzz-dir fuzz_targets -O --debug-assertions "${san_flag[@]}"

target_dir="${CARGO_TARGET_DIR:-fuzz_targets/target}"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
mkdir -p "$OUT"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz_targets/Cargo.toml | grep -v '^virtio-fuzz-targets$')
for t in $targets; do
    cp "$bin_dir/$t" "$OUT/$t"
    if [ -d "corpus/$t" ]; then
        rm -f "$OUT/${t}_seed_corpus.zip"
        (cd "corpus/$t" && zip -q -r "$OUT/${t}_seed_corpus.zip" .)
    fi
    # The limits fuzz/campaign uses too.
    printf '[libfuzzer]\nrss_limit_mb = 2048\ntimeout = 10\n' >"$OUT/$t.options"
done
echo "build.sh: $(echo "$targets" | wc -w) targets in $OUT"
