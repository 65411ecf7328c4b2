# Shared by tools/generate-otlp and tools/generate-containerd (sourced, not
# run): finds or builds the two protoc plugins at the versions Package.swift
# pins, and runs protoc once for the messages and once for a gRPC client stub,
# with the options both generated modules need. One place, so the two
# modules cannot drift apart in how they are generated.
#
# The caller sets TOOL (its name, for errors) and calls
#   protoc_swift ROOT OUT "MESSAGE_PROTOS..." "GRPC_PROTOS..."
# PROTOC_GEN_SWIFT=PATH and PROTOC_GEN_GRPC_SWIFT=PATH use those plugins
# instead of building them with swift build.

protoc_swift() {
    local root=$1 out=$2 messages=$3 grpc=$4
    command -v protoc >/dev/null || { echo "$TOOL: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
    local swift_plugin=${PROTOC_GEN_SWIFT:-} grpc_plugin=${PROTOC_GEN_GRPC_SWIFT:-}
    if [ -z "$swift_plugin" ] || [ -z "$grpc_plugin" ]; then
        swift build --product protoc-gen-swift >&2
        swift build --product protoc-gen-grpc-swift-2 >&2
        local bin
        bin="$(swift build --show-bin-path)"
        swift_plugin=${swift_plugin:-$bin/protoc-gen-swift}
        grpc_plugin=${grpc_plugin:-$bin/protoc-gen-grpc-swift-2}
    fi
    local p
    for p in "$swift_plugin" "$grpc_plugin"; do
        [ -x "$p" ] || { echo "$TOOL: no protoc plugin at $p" >&2; exit 1; }
    done
    mkdir -p "$out"
    rm -f "$out"/*.pb.swift "$out"/*.grpc.swift
    # Public: the modules that use the types are other modules. The file
    # names keep the proto paths (two packages may share a file name).
    # shellcheck disable=SC2086 # the proto lists are word lists
    protoc --plugin=protoc-gen-swift="$swift_plugin" -I "$root" \
        --swift_opt=Visibility=Public --swift_opt=FileNaming=PathToUnderscores \
        --swift_out="$out" $messages
    # The client only: flowmeterd is never the OTLP collector, nor containerd.
    # shellcheck disable=SC2086
    protoc --plugin=protoc-gen-grpc-swift-2="$grpc_plugin" -I "$root" \
        --grpc-swift-2_opt=Visibility=Public,Server=false,Client=true,FileNaming=PathToUnderscores \
        --grpc-swift-2_out="$out" $grpc
}
