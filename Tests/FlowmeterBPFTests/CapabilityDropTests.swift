import FlowmeterBPF
import Testing

/// The pure parts of the capability drop: reading /proc status and choosing
/// what to keep. (The drop itself is tested end to end: Tests/e2e/test_privileges.py.)
@Suite struct CapabilityDropTests {
    // This module has a Privileges of its own (the privileged-test gate).
    typealias P = FlowmeterBPF.Privileges

    static let status = """
        Name:\tflowmeterd
        Umask:\t0022
        State:\tS (sleeping)
        CapInh:\t0000000000000000
        CapPrm:\t0000008000001000
        CapEff:\t0000008000001000
        CapBnd:\t0000008000001000
        CapAmb:\t0000000000000000
        NoNewPrivs:\t1
        Seccomp:\t0
        """

    @Test func parsesStatus() throws {
        let p = try #require(ThreadPrivileges(status: Self.status))
        #expect(p.effective == P.mask(P.bpf, P.netAdmin))
        #expect(p.permitted == p.effective && p.bounding == p.effective)
        #expect(p.inheritable == 0 && p.ambient == 0 && p.noNewPrivs)
    }

    @Test func statusWithoutCapLinesIsNil() {
        #expect(ThreadPrivileges(status: "Name:\tx\nNoNewPrivs:\t0\n") == nil)
    }

    @Test func names() {
        #expect(P.names(P.mask(P.bpf, P.netAdmin)) == ["CAP_NET_ADMIN", "CAP_BPF"])
        #expect(P.names(1 << 45) == ["CAP_45"])
    }

    @Test func keepsBPFAndNetAdminWhileFollowing() {
        let root: UInt64 = (1 << 41) - 1
        #expect(P.neededAfterAttach(followsInterfaces: true, clsact: false, permitted: root) == P.mask(P.bpf, P.netAdmin))
        #expect(P.neededAfterAttach(followsInterfaces: false, clsact: true, permitted: root) == P.mask(P.bpf, P.netAdmin))
        #expect(P.neededAfterAttach(followsInterfaces: false, clsact: false, permitted: root) == P.mask(P.bpf))
    }

    @Test func keepsSysAdminWhereThereIsNoCapBPF() {
        // A kernel before 5.8 (no bit 39), or a process given CAP_SYS_ADMIN in its place.
        let old: UInt64 = (1 << 38) - 1
        #expect(P.neededAfterAttach(followsInterfaces: true, clsact: false, permitted: old) == P.mask(P.sysAdmin, P.netAdmin))
    }

    @Test func neverKeepsWhatIsNotPermitted() {
        #expect(P.neededAfterAttach(followsInterfaces: true, clsact: false, permitted: P.mask(P.bpf)) == P.mask(P.bpf))
    }
}
