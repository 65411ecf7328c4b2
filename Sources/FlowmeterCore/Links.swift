// Interfaces coming and going: the pure half of following netlink link events.
// Parsing rtnetlink messages and deciding what to attach or detach are plain
// functions over bytes and sets, so they are tested without privileges.

/// What an RTM_NEWLINK / RTM_DELLINK message says about one interface.
public struct LinkEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case new, deleted }
    public var kind: Kind
    public var ifindex: UInt32
    /// IFLA_IFNAME, when the message carries it.
    public var name: String?
    /// IFF_* flags (IFF_UP = 0x1, IFF_LOOPBACK = 0x8).
    public var flags: UInt32

    public init(kind: Kind, ifindex: UInt32, name: String?, flags: UInt32) {
        self.kind = kind; self.ifindex = ifindex; self.name = name; self.flags = flags
    }
}

public enum RTNetlink {
    static let newLink: UInt16 = 16  // RTM_NEWLINK
    static let delLink: UInt16 = 17  // RTM_DELLINK
    static let done: UInt16 = 3  // NLMSG_DONE
    static let ifnameAttr: UInt16 = 3  // IFLA_IFNAME

    /// Parses a datagram read from a NETLINK_ROUTE socket (host byte order,
    /// as the kernel writes it). Messages of other types are skipped;
    /// truncated ones end the parse.
    public static func parse(_ b: [UInt8]) -> [LinkEvent] {
        func u16(_ i: Int) -> UInt16 { UInt16(b[i]) | UInt16(b[i + 1]) << 8 }
        func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) | UInt32(u16(i + 2)) << 16 }
        var events: [LinkEvent] = []
        var off = 0
        while off + 16 <= b.count {
            let len = Int(u32(off)), type = u16(off + 4)
            guard len >= 16, off + len <= b.count else { break }
            defer { off += (len + 3) & ~3 }
            guard type == newLink || type == delLink else { continue }
            // struct ifinfomsg: family(1) pad(1) type(2) index(4) flags(4) change(4)
            let info = off + 16
            guard info + 16 <= off + len else { continue }
            var event = LinkEvent(kind: type == newLink ? .new : .deleted, ifindex: u32(info + 4), name: nil, flags: u32(info + 8))
            var attr = info + 16
            while attr + 4 <= off + len {
                let alen = Int(u16(attr)), atype = u16(attr + 2) & 0x3fff
                guard alen >= 4, attr + alen <= off + len else { break }
                if atype == ifnameAttr {
                    let raw = b[(attr + 4)..<(attr + alen)].prefix { $0 != 0 }
                    event.name = String(decoding: raw, as: UTF8.self)
                }
                attr += (alen + 3) & ~3
            }
            events.append(event)
        }
        return events
    }
}

/// What to change so that the attached interfaces match the selection.
public struct AttachPlan: Sendable, Equatable {
    public var attach: [InterfaceSelection.Candidate]
    /// Interface indexes to detach from (gone, or no longer selected).
    public var detach: [UInt32]

    public init(attach: [InterfaceSelection.Candidate], detach: [UInt32]) {
        self.attach = attach; self.detach = detach
    }

    /// `attached`: ifindex -> name of what we are attached to now.
    /// An interface that was renamed (same index, new name) counts as a new one
    /// when the new name is selected, and is detached when it is not.
    public static func make(
        selection: InterfaceSelection, host: [InterfaceSelection.Candidate],
        attached: [UInt32: String]
    ) -> AttachPlan {
        let wanted = selection.matching(host)
        let wantedByIndex = Dictionary(wanted.map { ($0.ifindex, $0) }, uniquingKeysWith: { a, _ in a })
        let detach = attached.keys.sorted().filter { idx in wantedByIndex[idx]?.name != attached[idx] }
        let attach = wanted.filter { c in attached[c.ifindex] != c.name }
        return AttachPlan(attach: attach, detach: detach)
    }
}

extension InterfaceSelection {
    /// Like `select`, for interfaces that appear after start: names that do not
    /// exist are not an error (they may appear later), and an interface named
    /// explicitly is taken only once it exists.
    public func matching(_ all: [Candidate]) -> [Candidate] {
        let chosen =
            include.isEmpty
            ? all.filter { $0.isUp && !$0.isLoopback }
            : all.filter { c in include.contains(where: { globMatch($0, c.name) }) }
        return chosen.filter { c in !exclude.contains(where: { globMatch($0, c.name) }) }
    }
}
