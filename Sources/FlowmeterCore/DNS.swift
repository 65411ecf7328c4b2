// DNS as the daemon counts it (bpf/flowmeter_dns.bpf.c): the kernel sends
// one record per message a local client sends or receives, with the header's
// fields, the query's latency when the kernel matched the answer, and the
// message's first bytes; here those bytes are parsed (question, answers) and
// each query ends once: answered (its rcode) or timed out (docs/metrics.md,
// "DNS").

/// The flow and transaction id of one query, from the client's side.
public struct DNSQueryKey: Sendable, Hashable {
    public var client: IPAddress16
    public var server: IPAddress16
    public var clientPort: UInt16
    public var serverPort: UInt16
    public var txid: UInt16
    /// IP protocol: 6 (TCP) or 17 (UDP).
    public var ipProtocol: UInt8
    public init(
        client: IPAddress16, server: IPAddress16, clientPort: UInt16, serverPort: UInt16, txid: UInt16, ipProtocol: UInt8
    ) {
        self.client = client; self.server = server; self.clientPort = clientPort; self.serverPort = serverPort
        self.txid = txid; self.ipProtocol = ipProtocol
    }
}

/// One DNS message the kernel saw, as decoded from its ring record.
public struct DNSEvent: Sendable, Equatable {
    public enum Kind: UInt16, Sendable { case query = 1, response = 2 }
    public var kind: Kind
    public var key: DNSQueryKey
    public var rcode: UInt8
    public var qdcount: UInt16
    public var ancount: UInt16
    /// The message's length; `payload` holds its first bytes.
    public var length: UInt16
    /// The record's payload is shorter than the message (FM_DNS_TRUNCATED).
    public var truncated: Bool
    /// A response whose query the kernel had pending: `latencyNanos` is set.
    public var matched: Bool
    /// A query the kernel's pending table had no room for.
    public var notTracked: Bool
    /// A query whose (flow, id) was already pending: a retransmission.
    public var repeated: Bool
    public var timestampNanos: UInt64
    public var latencyNanos: UInt64
    public var cgroupID: UInt64
    public var payload: [UInt8]

    public init(
        kind: Kind, key: DNSQueryKey, rcode: UInt8 = 0, qdcount: UInt16 = 1, ancount: UInt16 = 0, length: UInt16 = 0,
        truncated: Bool = false, matched: Bool = false, notTracked: Bool = false, repeated: Bool = false,
        timestampNanos: UInt64, latencyNanos: UInt64 = 0, cgroupID: UInt64 = 0, payload: [UInt8] = []
    ) {
        self.kind = kind; self.key = key; self.rcode = rcode; self.qdcount = qdcount; self.ancount = ancount
        self.length = length; self.truncated = truncated; self.matched = matched; self.notTracked = notTracked
        self.repeated = repeated; self.timestampNanos = timestampNanos; self.latencyNanos = latencyNanos
        self.cgroupID = cgroupID; self.payload = payload
    }
}

/// Labels of DNS numbers, as operators read them (RFC 1035, 2782, 3596, 6895).
public enum DNSNames {
    public static func qtype(_ t: UInt16) -> String {
        switch t {
        case 1: "A"
        case 2: "NS"
        case 5: "CNAME"
        case 6: "SOA"
        case 12: "PTR"
        case 15: "MX"
        case 16: "TXT"
        case 28: "AAAA"
        case 33: "SRV"
        case 64: "SVCB"
        case 65: "HTTPS"
        case 255: "ANY"
        default: "TYPE\(t)"
        }
    }

    public static func rcode(_ r: UInt8) -> String {
        switch r {
        case 0: "NOERROR"
        case 1: "FORMERR"
        case 2: "SERVFAIL"
        case 3: "NXDOMAIN"
        case 4: "NOTIMP"
        case 5: "REFUSED"
        default: "RCODE\(r)"
        }
    }

    /// The rcode label of a query no answer came for in time.
    public static let timeout = "timeout"
    /// The qtype label when the question could not be read.
    public static let unknownType = "unknown"
}

/// What the daemon reads of a DNS message's bytes.
public struct DNSMessage: Sendable, Equatable {
    public struct Answer: Sendable, Equatable {
        public var name: String
        public var type: UInt16
        public var ttl: UInt32
        /// A and AAAA: the address.
        public var address: IPAddress16?
        /// CNAME: the name it points at.
        public var target: String?
        public init(name: String, type: UInt16, ttl: UInt32, address: IPAddress16? = nil, target: String? = nil) {
            self.name = name; self.type = type; self.ttl = ttl; self.address = address; self.target = target
        }
    }
    /// The first question's name (lower case, no trailing dot; "" for the root).
    public var name: String?
    public var qtype: UInt16?
    public var answers: [Answer] = []
    /// The bytes ended before everything the header counts was read (the
    /// record's copy is a prefix, or the message is malformed).
    public var incomplete = false
}

/// A strict parser of DNS messages (RFC 1035 section 4) for the bounded
/// copies the kernel sends. Hand-written: a message here is a prefix cut at
/// FM_DNS_COPY_BYTES, and what is wanted is "as much as the bytes hold, never
/// past them", which a full DNS library (that rejects a cut message) does not
/// give; it reads only the question and the A/AAAA/CNAME answers.
public enum DNSParser {
    /// Longest name (RFC 1035: 255 bytes on the wire).
    static let maxNameBytes = 255
    /// Most compression pointers followed in one name: a loop ends here.
    static let maxPointers = 16

    public static func parse(_ b: [UInt8]) -> DNSMessage {
        var m = DNSMessage()
        guard b.count >= 12 else {
            m.incomplete = true
            return m
        }
        let qd = Int(b[4]) << 8 | Int(b[5]), an = Int(b[6]) << 8 | Int(b[7])
        var at = 12
        for i in 0..<qd {
            guard let (name, next) = readName(b, at), next + 4 <= b.count else {
                m.incomplete = true
                return m
            }
            if i == 0 {
                m.name = name
                m.qtype = UInt16(b[next]) << 8 | UInt16(b[next + 1])
            }
            at = next + 4
        }
        for _ in 0..<an {
            guard let (name, next) = readName(b, at), next + 10 <= b.count else {
                m.incomplete = true
                return m
            }
            let type = UInt16(b[next]) << 8 | UInt16(b[next + 1])
            let ttl = UInt32(b[next + 4]) << 24 | UInt32(b[next + 5]) << 16 | UInt32(b[next + 6]) << 8 | UInt32(b[next + 7])
            let rdlen = Int(b[next + 8]) << 8 | Int(b[next + 9])
            let rdata = next + 10
            guard rdata + rdlen <= b.count else {
                m.incomplete = true
                return m
            }
            var a = DNSMessage.Answer(name: name, type: type, ttl: ttl)
            if type == 1 && rdlen == 4 {
                a.address = .v4(b[rdata], b[rdata + 1], b[rdata + 2], b[rdata + 3])
            } else if type == 28 && rdlen == 16 {
                a.address = IPAddress16(bytes: Array(b[rdata..<rdata + 16]))
            } else if type == 5 {
                guard let (target, end) = readName(b, rdata), end <= rdata + rdlen else {
                    m.incomplete = true
                    return m
                }
                a.target = target
            }
            m.answers.append(a)
            at = rdata + rdlen
        }
        return m
    }

    /// The name at `offset` and the offset after it (after the first
    /// pointer, if it has one). nil when it runs past the bytes, is longer
    /// than 255 bytes, uses a reserved label type, or follows more than
    /// `maxPointers` pointers (a loop). A pointer may only point backwards,
    /// to an earlier part of the message.
    static func readName(_ b: [UInt8], _ offset: Int) -> (String, Int)? {
        var labels: [String] = []
        var at = offset, end: Int? = nil, jumps = 0, wire = 0
        while true {
            guard at < b.count else { return nil }
            let len = Int(b[at])
            if len == 0 {
                wire += 1
                if end == nil { end = at + 1 }
                break
            }
            switch len & 0xC0 {
            case 0xC0:
                guard at + 1 < b.count else { return nil }
                let target = (len & 0x3F) << 8 | Int(b[at + 1])
                jumps += 1
                guard jumps <= maxPointers, target < at else { return nil }
                if end == nil { end = at + 2 }
                at = target
            case 0:
                guard at + 1 + len <= b.count else { return nil }
                wire += 1 + len
                guard wire < maxNameBytes else { return nil }
                labels.append(label(b[(at + 1)..<(at + 1 + len)]))
                at += 1 + len
            default:
                return nil
            }
        }
        return (labels.joined(separator: "."), end!)
    }

    /// A label as text: lower-case ASCII, other bytes escaped as \DDD (RFC 4343).
    static func label(_ bytes: ArraySlice<UInt8>) -> String {
        var s = ""
        for c in bytes {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): s.unicodeScalars.append(Unicode.Scalar(c + 32))
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"),
                UInt8(ascii: "_"):
                s.unicodeScalars.append(Unicode.Scalar(c))
            default:
                let d = String(c)
                s += "\\" + String(repeating: "0", count: 3 - d.count) + d
            }
        }
        return s
    }
}

/// How a query ended: what the metrics count, once per query.
public struct DNSOutcome: Sendable, Equatable {
    public var key: DNSQueryKey
    /// DNSNames.qtype of the question, or DNSNames.unknownType.
    public var qtype: String
    /// DNSNames.rcode of the answer, or DNSNames.timeout.
    public var rcode: String
    /// Seconds from the query to its answer (nil: timed out, or not timed).
    public var latency: Double?
    /// CLOCK_MONOTONIC of the answer or of the timeout.
    public var timestampNanos: UInt64
    /// The question's name (nil: names off, or not in the copy).
    public var name: String?
    /// The answers read from the copy (names left empty with names off).
    public var answers: [DNSMessage.Answer] = []
    /// The header's answer count.
    public var answerCount: UInt16 = 0
    /// The client socket's cgroup v2 id (who resolved).
    public var cgroupID: UInt64 = 0
    /// The kernel's copy of the answer was shorter than the message (or the
    /// message was malformed): `answers` may lack some of its answers.
    public var truncated = false
    public init(key: DNSQueryKey, qtype: String, rcode: String, latency: Double?, timestampNanos: UInt64) {
        self.key = key; self.qtype = qtype; self.rcode = rcode; self.latency = latency; self.timestampNanos = timestampNanos
    }
}

/// The queries waiting for their answer, as the daemon sees them (a mirror
/// of the kernel's pending table): each ends once, with its answer or at the
/// timeout. Bounded: past `capacity` the oldest query is let go of, counted.
public struct DNSTracker: Sendable {
    struct Waiting {
        var sent: UInt64
        var qtype: String
        var name: String?
    }
    private var waiting: [DNSQueryKey: Waiting] = [:]
    public let timeoutNanos: UInt64
    public let capacity: Int
    /// Queries let go of because `capacity` were waiting.
    public private(set) var evicted: UInt64 = 0
    /// Answers that matched no query (late after their timeout, or to a query sent before the start).
    public private(set) var unmatched: UInt64 = 0

    /// Whether query names are kept (`--no-dns-names`: not; names are personal data in places).
    public let keepNames: Bool

    public init(timeoutNanos: UInt64, capacity: Int = 16384, keepNames: Bool = true) {
        self.timeoutNanos = timeoutNanos; self.capacity = capacity; self.keepNames = keepNames
    }

    public var pending: Int { waiting.count }

    /// The pass's messages, in order: answers end their queries.
    public mutating func take(_ events: [DNSEvent]) -> [DNSOutcome] {
        var out: [DNSOutcome] = []
        for e in events {
            switch e.kind {
            case .query:
                if waiting[e.key] != nil { continue }  // a retransmission: timed from the first
                if e.notTracked { continue }  // the kernel cannot match its answer; counted there
                let q = DNSParser.parse(e.payload)
                if waiting.count >= capacity, let oldest = waiting.min(by: { $0.value.sent < $1.value.sent })?.key {
                    waiting[oldest] = nil
                    evicted += 1
                }
                waiting[e.key] = Waiting(
                    sent: e.timestampNanos, qtype: q.qtype.map(DNSNames.qtype) ?? DNSNames.unknownType,
                    name: keepNames ? q.name : nil)
            case .response:
                guard let w = waiting.removeValue(forKey: e.key), e.matched else {
                    unmatched += 1
                    continue
                }
                let latency = Double(e.latencyNanos) / 1e9
                var o = DNSOutcome(
                    key: e.key, qtype: w.qtype, rcode: DNSNames.rcode(e.rcode), latency: latency,
                    timestampNanos: e.timestampNanos)
                let m = DNSParser.parse(e.payload)
                o.name = w.name
                o.answers = m.answers
                if !keepNames {
                    for i in o.answers.indices {
                        o.answers[i].name = ""
                        o.answers[i].target = nil
                    }
                }
                o.answerCount = e.ancount
                o.cgroupID = e.cgroupID
                o.truncated = e.truncated || m.incomplete
                out.append(o)
            }
        }
        return out
    }

    /// Queries older than the timeout at `now`: each ends as "timeout". Their
    /// keys are for the kernel's table to forget too.
    public mutating func sweep(now: UInt64) -> [DNSOutcome] {
        var out: [DNSOutcome] = []
        for (k, w) in waiting where now > w.sent && now - w.sent >= timeoutNanos {
            var o = DNSOutcome(key: k, qtype: w.qtype, rcode: DNSNames.timeout, latency: nil, timestampNanos: now)
            o.name = w.name
            out.append(o)
        }
        for o in out { waiting[o.key] = nil }
        return out
    }
}

/// The DNS series of one service pair.
public struct DNSStats: Sendable, Equatable {
    public struct Labels: Sendable, Hashable, Comparable {
        public var qtype: String
        public var rcode: String
        public init(qtype: String, rcode: String) { self.qtype = qtype; self.rcode = rcode }
        public static func < (a: Labels, b: Labels) -> Bool { (a.qtype, a.rcode) < (b.qtype, b.rcode) }
    }
    public var requests: [Labels: UInt64] = [:]
    /// Seconds from query to answer (answered queries only).
    public var latency = Histogram(bounds: DNSStats.latencyBuckets)
    /// 100 µs (a resolver on the node) to 5 s (the usual resolver timeout).
    public static let latencyBuckets: [Double] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
    ]
    public init() {}
}

/// DNS messages and queries counted nowhere, by why (cumulative).
public struct DNSLost: Sendable, Equatable {
    /// Records the kernel's DNS ring had no room for.
    public var ring: UInt64 = 0
    /// Queries the kernel's pending table had no room for.
    public var pendingFull: UInt64 = 0
    /// Queries flowmeterd let go of because its table of waiting queries was full.
    public var evicted: UInt64 = 0
    /// Answers to no waiting query.
    public var unmatched: UInt64 = 0
    public init() {}
}

/// What a resolved name becomes as a peer_service label: the first rule
/// whose suffix the name ends with maps the labels before it into its
/// template (`{1}` is the first label, `{2}` the second, ...; the name must
/// have exactly as many labels before the suffix as the template uses);
/// a name no rule matches is used as it is.
/// The default turns `<svc>.<ns>.svc.cluster.local` into `<ns>/<svc>`, the
/// names Kubernetes services get elsewhere in flowmeter.
public struct DNSPeerNaming: Sendable, Equatable {
    public struct Rule: Sendable, Equatable {
        public var suffix: [Substring]
        public var template: String
        /// The highest {n} the template uses.
        public var labels: Int
    }
    public var rules: [Rule]

    public static let defaultText = "svc.cluster.local={2}/{1}"

    /// From `SUFFIX=TEMPLATE[,SUFFIX=TEMPLATE...]`, or "" for no rule.
    public init(parsing text: String) throws {
        rules = []
        for part in text.split(separator: ",") {
            let kv = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard kv.count == 2, !kv[0].isEmpty, !kv[1].isEmpty else {
                throw ValueError("'\(part)' is not SUFFIX=TEMPLATE (e.g. \(Self.defaultText))")
            }
            var n = 0
            var rest = Substring(kv[1])
            while let open = rest.firstIndex(of: "{") {
                guard let close = rest[open...].firstIndex(of: "}"), let i = Int(rest[rest.index(after: open)..<close]), (1...9).contains(i)
                else { throw ValueError("'\(kv[1])': a template's placeholders are {1} to {9}") }
                n = max(n, i)
                rest = rest[rest.index(after: close)...]
            }
            guard n > 0 else { throw ValueError("'\(kv[1])': the template uses no label ({1} is the first)") }
            let suffix = kv[0].lowercased().split(separator: ".").filter { !$0.isEmpty }
            rules.append(Rule(suffix: suffix.map { Substring($0) }, template: kv[1], labels: n))
        }
    }

    /// The peer name for a resolved (lower-case) name.
    public func peerName(_ name: String) -> String {
        let labels = name.split(separator: ".")
        for r in rules where labels.count == r.suffix.count + r.labels && labels.suffix(r.suffix.count).elementsEqual(r.suffix) {
            var out = r.template
            for i in 1...r.labels { out = out.replacingOccurrences(of: "{\(i)}", with: labels[i - 1]) }
            return out
        }
        return name
    }
}

/// Which name each local client resolved to each address, for the answer's
/// TTL plus `graceNanos` (a client connects after its answer, and may keep
/// using an address a while past the TTL). A client is its socket's cgroup
/// (the one a container or a systemd service runs in, and the one a stub
/// resolver's client has too). Bounded: past `capacity` the entry that
/// expires first goes, counted in `evicted`.
public struct DNSNameCache: Sendable {
    struct Key: Hashable {
        var cgroup: UInt64
        var address: IPAddress16
    }
    private var entries: [Key: (name: String, expires: UInt64)] = [:]
    public let capacity: Int
    public let graceNanos: UInt64
    public private(set) var evicted: UInt64 = 0

    /// 30 s past the TTL; 65,536 entries (about 10 MB at most).
    public init(capacity: Int = 65536, graceNanos: UInt64 = 30_000_000_000) {
        self.capacity = capacity; self.graceNanos = graceNanos
    }

    public var count: Int { entries.count }

    /// Learns the addresses of an answer (A and AAAA, whatever CNAMEs led
    /// there) under the question's name. Nothing without a name (names off).
    public mutating func learn(_ o: DNSOutcome) {
        guard let name = o.name, !name.isEmpty else { return }
        for a in o.answers {
            guard let address = a.address else { continue }
            let k = Key(cgroup: o.cgroupID, address: address)
            let expires = o.timestampNanos &+ UInt64(a.ttl) * 1_000_000_000 &+ graceNanos
            if entries[k] == nil && entries.count >= capacity {
                expire(now: o.timestampNanos)
                if entries.count >= capacity, let first = entries.min(by: { $0.value.expires < $1.value.expires })?.key {
                    entries[first] = nil
                    evicted += 1
                }
            }
            entries[k] = (name, max(expires, entries[k]?.expires ?? 0))
        }
    }

    /// The name `cgroup` resolved to `address`, if it has not expired at `now`.
    public func name(cgroup: UInt64, address: IPAddress16, now: UInt64) -> String? {
        guard let e = entries[Key(cgroup: cgroup, address: address)], now < e.expires else { return nil }
        return e.name
    }

    /// Forgets what expired by `now`.
    public mutating func expire(now: UInt64) {
        entries = entries.filter { now < $0.value.expires }
    }
}
