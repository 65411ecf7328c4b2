import Foundation

/// The `/v1/stream` line format: the first line is the whole snapshot with
/// `"stream":"full"`; each later line is a delta, `"stream":"delta"` plus
/// only the top-level keys whose value changed since the line before
/// (`time_unix_ms` and `uptime_seconds` always do; `hooks` seldom does;
/// `version` is always there). A client keeps the last document and overlays
/// each delta on it.
public struct SnapshotStream: Sendable {
    /// Sender: each top-level key's encoded value, as last sent.
    public private(set) var document: [String: WireJSON.Fragment] = [:]
    /// Receiver: the snapshot the lines so far make.
    public private(set) var last: APISnapshot?

    public init() {}

    /// A line: the members to send (already encoded) and the kind, under
    /// `stream`; keys sorted by the format, as every line has had them.
    struct Line: Encodable {
        var members: [(key: String, value: WireJSON.Fragment)]
        var kind: String

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(_ s: String) { stringValue = s }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            for m in members { try c.encode(m.value, forKey: Key(m.key)) }
            try c.encode(kind, forKey: Key("stream"))
        }
    }

    /// Sender: the next line (no newline) for this snapshot. Each top-level
    /// member is encoded on its own and compared, as bytes, with what was
    /// sent for its key before.
    public mutating func line(for snapshot: APISnapshot) -> String {
        let format = WireJSON.apiStream
        guard let now = try? format.members(snapshot) else { return snapshot.json() }
        let line: Line
        if document.isEmpty {
            line = Line(members: now, kind: "full")
        } else {
            line = Line(members: now.filter { $0.key == "version" || document[$0.key] != $0.value }, kind: "delta")
        }
        document = Dictionary(now, uniquingKeysWith: { _, new in new })
        return (try? format.string(line)) ?? snapshot.json()
    }

    /// The receiver's view of a line: its kind, and the snapshot it makes
    /// over the one before (a full line, or the first, stands alone).
    struct Received: Decodable {
        static let base = CodingUserInfoKey(rawValue: "flowmeter.stream.base")!
        var snapshot: APISnapshot

        enum CodingKeys: String, CodingKey { case stream }

        init(from decoder: any Decoder) throws {
            let kind = try decoder.container(keyedBy: CodingKeys.self).decodeIfPresent(String.self, forKey: .stream)
            let base = kind == "full" ? nil : decoder.userInfo[Self.base] as? APISnapshot
            snapshot = try APISnapshot(from: decoder, over: base)
        }
    }

    /// Receiver: merges one line and returns the whole snapshot it makes.
    public mutating func apply(_ line: Data) throws -> APISnapshot {
        let decoder = JSONDecoder()
        if let last { decoder.userInfo[Received.base] = last }
        let s = try decoder.decode(Received.self, from: line).snapshot
        last = s
        return s
    }
}
