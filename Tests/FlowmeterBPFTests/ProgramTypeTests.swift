import CLibbpf
import FlowmeterCore
import Foundation
import Testing

@testable import FlowmeterBPF

/// Program types, refusals and the messages around them.
@Suite struct ProgramTypeTests {
    @Test func sectionsMapToTheirTypes() {
        #expect(ProgramType(section: "fentry/tcp_set_state") == .fentry)
        #expect(ProgramType(section: "fexit/udp_sendmsg") == .fexit)
        #expect(ProgramType(section: "kprobe/tcp_reset") == .kprobe)
        #expect(ProgramType(section: "kretprobe/udp_sendmsg") == .kretprobe)
        #expect(ProgramType(section: "tp_btf/inet_sock_set_state") == .tpBTF)
        #expect(ProgramType(section: "tracepoint/sock/inet_sock_set_state") == .tracepoint)
        #expect(ProgramType(section: "raw_tp") == .rawTPRun)
        #expect(ProgramType(section: "iter/bpf_map_elem") == .iterMapElem)
        #expect(ProgramType(section: "cgroup/sock_release") == .cgroupSockRelease)
        // Types the object does not use are not guessed at.
        #expect(ProgramType(section: "iter/tcp") == nil)
        #expect(ProgramType(section: "cgroup/skb") == nil)
        #expect(ProgramType(section: "tc") == nil)
    }

    /// Every program of the socket object has a probed type, and every name
    /// the loader uses is a program of the object, of the section it was
    /// generated with (a rename does not compile; this guards the generator).
    @Test func everySocketProgramHasAProbedType() throws {
        let obj = try BPFObject(BPFNames.FlowmeterSock.self)
        var sections: [String: String] = [:]
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj.handle, p) {
            sections[String(cString: bpf_program__name(next))] = String(cString: bpf_program__section_name(next))
            p = next
        }
        for (name, section) in sections {
            #expect(ProgramType(section: section) != nil, "\(name) (\(section)) has no probed type")
        }
        var used = [SocketPrograms.updatesIterator, SocketPrograms.updatesRun, SocketPrograms.cgroupRelease]
        for t in SocketPrograms.twins {
            used += t.fentry + t.kprobe + (t.tpBTF ?? []) + (t.tracepoint ?? [])
        }
        for p in used { #expect(sections[p.name] == p.section, "the loader names \(p) (\(p.section)), which the object lacks") }
        #expect(SocketPrograms.updatesIterator.section == "iter/bpf_map_elem")
        #expect(SocketPrograms.updatesRun.section == "raw_tp")
    }

    @Test func probeProgramsExistForEveryType() throws {
        let obj = try BPFObject(BPFNames.FlowmeterProbe.self)
        for type in ProgramType.allCases {
            let prog = try obj.program(type.probeProgram)
            // The probe program is of the type it probes.
            #expect(ProgramType(section: String(cString: bpf_program__section_name(prog))) == type)
        }
    }

    @Test func refusalsSayProgramSectionErrnoAndCost() {
        let it = SocketPrograms.updatesIterator
        let r = ProgramRefusal(
            program: it.name, section: it.section, errno: EPERM,
            detail: "load: \(Errno.describe(EPERM))", consequence: "socket updates use the raw_tp run instead",
            loses: false)
        #expect(
            r.description
                == "program \(it.name) (iter/bpf_map_elem) refused by the kernel at load: Operation not permitted (EPERM); socket updates use the raw_tp run instead"
        )
        #expect(Errno.describe(ENOENT) == "No such file or directory (ENOENT)")
        #expect(Errno.describe(524) == "Operation not supported by this kernel (ENOTSUPP)")
        #expect(Errno.name(4242) == "errno 4242")
        // As an error, the refusal is the whole line, without a second errno.
        #expect(BPFError(refused: r).summary == r.description)
    }

    @Test func updateRequests() {
        #expect(SocketUpdatesRequest.auto.forced == nil)
        #expect(SocketUpdatesRequest.iterator.forced == .iterator)
        #expect(SocketUpdatesRequest.rawTP.forced == .rawTP)
        #expect(SocketUpdatesRequest(rawValue: "raw-tp") == .rawTP)
        #expect(SocketUpdatePath.rawTP.type == .rawTPRun && SocketUpdatePath.iterator.type == .iterMapElem)
    }

    @Test func libbpfLogNamesTheFailedProgramAndDropsTheUlimitHint() {
        // libbpf's lines as it writes them, about the socket object's iterator.
        let it = SocketPrograms.updatesIterator
        LibbpfLog.clear()
        LibbpfLog.record("libbpf: prog '\(it.name)': BPF program load failed: Operation not permitted\n")
        LibbpfLog.record("libbpf: permission error while running as root; try raising 'ulimit -l'? current value: 8.0 MiB\n")
        LibbpfLog.record("libbpf: prog '\(it.name)': failed to load: -1\n")
        LibbpfLog.record("libbpf: failed to load object '\(BPFNames.FlowmeterSock.object)'\n")
        let detail = LibbpfLog.recent()
        #expect(!detail.contains("ulimit -l"))
        #expect(detail.contains("note: "))
        #expect(LibbpfLog.failedProgram(in: detail) == it.name)
        #expect(LibbpfLog.failedProgram(in: "libbpf: prog 'x': BPF program load failed") == nil)
    }

    /// On every machine of the kind (and every kernel of the matrix) classic
    /// tracepoints load, and a raw_tp program runs under BPF_PROG_TEST_RUN:
    /// the update path for kernels that refuse iterators has what it needs.
    @Test(.privileged) func theFallbackTypesAreAcceptedHere() {
        #expect(ProgramTypes.probe(.rawTPRun).available, "\(ProgramTypes.probe(.rawTPRun).detail)")
        #expect(ProgramTypes.probe(.tpBTF).available || ProgramTypes.probe(.tracepoint).available)
    }

    /// With the raw_tp path forced the iterator is not loaded (as on a kernel
    /// that refuses it) and asking for it is an error naming it.
    @Test(.privileged) func forcedRawTPLoadsOnlyItsTwin() throws {
        let p = try SocketPrograms.load(.auto, updates: .rawTP)
        #expect(p.updatePath == .rawTP && p.updatePaths == [.rawTP])
        #expect(p.modes.contains(HookMode(hook: "socket_updates", mode: "raw_tp")))
        #expect(throws: BPFError.self) { try p.collectUpdates(via: .iterator) }
        _ = try p.collectUpdates()
        p.detach()
    }
}
