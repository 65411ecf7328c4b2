import Foundation

/// The `/v1/stream` line format: the first line is the whole snapshot with
/// `"stream":"full"`; each later line is a delta, `"stream":"delta"` plus
/// only the top-level keys whose value changed since the line before
/// (`time_unix_ms` and `uptime_seconds` always do; `hooks` seldom does). A
/// client keeps the last document and overlays each delta on it.
public struct SnapshotStream: Sendable {
    /// Top-level key -> its JSON text, as last sent (sender) or merged (receiver).
    public private(set) var document: [String: String] = [:]

    public init() {}

    static func parts(_ json: Data) throws -> [String: String] {
        guard let obj = try JSONSerialization.jsonObject(with: json, options: [.fragmentsAllowed]) as? [String: Any] else {
            throw ValueError("a stream line is not a JSON object")
        }
        var out: [String: String] = [:]
        for (k, v) in obj {
            let d = try JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])
            out[k] = String(decoding: d, as: UTF8.self)
        }
        return out
    }

    static func object(_ parts: [String: String]) -> String {
        "{"
            + parts.keys.sorted().map { k in
                let key = String(
                    decoding: (try? JSONSerialization.data(withJSONObject: k, options: [.fragmentsAllowed])) ?? Data(), as: UTF8.self)
                return key + ":" + parts[k]!
            }.joined(separator: ",") + "}"
    }

    /// Sender: the next line (no newline) for this snapshot.
    public mutating func line(for snapshot: APISnapshot) -> String {
        guard let now = try? Self.parts(Data(snapshot.json().utf8)) else { return snapshot.json() }
        var out: [String: String]
        if document.isEmpty {
            out = now
            out["stream"] = "\"full\""
        } else {
            out = now.filter { document[$0.key] != $0.value }
            out["version"] = now["version"]
            out["stream"] = "\"delta\""
        }
        document = now
        return Self.object(out)
    }

    /// Receiver: merges one line and returns the whole snapshot it makes.
    public mutating func apply(_ line: Data) throws -> APISnapshot {
        var p = try Self.parts(line)
        let kind = p.removeValue(forKey: "stream")
        if kind == "\"full\"" || document.isEmpty { document = [:] }
        document.merge(p) { _, new in new }
        return try JSONDecoder().decode(APISnapshot.self, from: Data(Self.object(document).utf8))
    }
}
