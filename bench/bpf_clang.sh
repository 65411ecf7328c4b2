# Sourced by the bench/ scripts: sets $clang to a clang that compiles
# `-target bpf` (FLOWMETER_BPF_CLANG, else the first found), or exits
# naming the script ($1) that needed one. One list for every script.
clang="${FLOWMETER_BPF_CLANG:-}"
if [ -z "$clang" ]; then
    for c in /opt/swift/usr/bin/clang clang clang-16 clang-15 clang-14; do
        if command -v "$c" >/dev/null; then clang="$c"; break; fi
    done
fi
[ -n "$clang" ] || { echo "$1: no clang for -target bpf (set FLOWMETER_BPF_CLANG)" >&2; exit 1; }
