import FlowmeterCore
import Testing

@Suite struct LinkTests {
    /// One rtnetlink message as the kernel writes it (little-endian host).
    static func message(type: UInt16, ifindex: UInt32, flags: UInt32, name: String?, extraAttr: Bool = false) -> [UInt8] {
        func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
        func le32(_ v: UInt32) -> [UInt8] { le16(UInt16(v & 0xffff)) + le16(UInt16(v >> 16)) }
        var attrs: [UInt8] = []
        if extraAttr { attrs += le16(8) + le16(4) + le32(1500) }  // IFLA_MTU
        if let name {
            let data = Array(name.utf8) + [0]
            attrs += le16(UInt16(4 + data.count)) + le16(3) + data
            while attrs.count % 4 != 0 { attrs.append(0) }
        }
        let body: [UInt8] = [0, 0] + le16(1) + le32(ifindex) + le32(flags) + le32(0xffff_ffff) + attrs
        return le32(UInt32(16 + body.count)) + le16(type) + le16(0) + le32(0) + le32(0) + body
    }

    @Test func parsesNewAndDeletedLinks() {
        let bytes =
            Self.message(type: 16, ifindex: 7, flags: 0x1043, name: "veth9", extraAttr: true)
            + Self.message(type: 17, ifindex: 8, flags: 0, name: "cali-x")
            + Self.message(type: 20, ifindex: 9, flags: 0, name: "addr")  // RTM_NEWADDR: ignored
        let events = RTNetlink.parse(bytes)
        #expect(
            events == [
                LinkEvent(kind: .new, ifindex: 7, name: "veth9", flags: 0x1043),
                LinkEvent(kind: .deleted, ifindex: 8, name: "cali-x", flags: 0),
            ])
    }

    @Test func truncatedMessagesEndTheParse() {
        let good = Self.message(type: 16, ifindex: 7, flags: 1, name: "a")
        let cut = Array(Self.message(type: 16, ifindex: 8, flags: 1, name: "b").prefix(20))
        #expect(RTNetlink.parse(good + cut).map(\.ifindex) == [7])
        #expect(RTNetlink.parse([]).isEmpty)
        #expect(RTNetlink.parse([1, 2, 3]).isEmpty)
        var zeroLength = good
        zeroLength[0] = 0; zeroLength[1] = 0
        #expect(RTNetlink.parse(zeroLength).isEmpty)
    }

    static func c(_ name: String, _ idx: UInt32, up: Bool = true) -> InterfaceSelection.Candidate {
        .init(name: name, ifindex: idx, isUp: up, isLoopback: name == "lo")
    }

    @Test func planAttachesNewAndDetachesGone() {
        let host = [Self.c("lo", 1), Self.c("eth0", 2), Self.c("veth5", 5), Self.c("veth6", 6, up: false)]
        let plan = AttachPlan.make(selection: InterfaceSelection(), host: host, attached: [2: "eth0", 4: "veth4"])
        #expect(plan.attach.map(\.name) == ["veth5"])
        #expect(plan.detach == [4])
    }

    @Test func planFollowsGlobsExcludesAndRenames() {
        let sel = InterfaceSelection(include: ["veth*", "eth0"], exclude: ["veth9*"])
        let host = [Self.c("eth0", 2), Self.c("veth1", 3, up: false), Self.c("veth90", 4), Self.c("renamed", 5)]
        let plan = AttachPlan.make(selection: sel, host: host, attached: [5: "veth5"])
        // Named explicitly or by glob: taken even while down; veth90 excluded;
        // ifindex 5 was renamed away from the glob, so it is let go.
        #expect(plan.attach.map(\.name) == ["eth0", "veth1"])
        #expect(plan.detach == [5])
        // A missing literal name is no error after start.
        #expect(AttachPlan.make(selection: InterfaceSelection(include: ["eth7"]), host: host, attached: [:]).attach.isEmpty)
    }

    @Test func nothingToDoWhenInStep() {
        let host = [Self.c("eth0", 2)]
        #expect(AttachPlan.make(selection: InterfaceSelection(), host: host, attached: [2: "eth0"]) == AttachPlan(attach: [], detach: []))
    }
}
