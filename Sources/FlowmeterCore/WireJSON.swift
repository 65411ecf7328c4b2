import Foundation

/// How Flowmeter writes JSON, all of it: the local API's snapshot, stream
/// lines and error bodies, and the flow log's records. Each document is a
/// Codable value with explicit CodingKeys, written by this encoder in one of
/// the formats below (`api`, `apiStream`, `apiError`, `flowLog`), which are
/// the only place the settings live.
///
/// Why an encoder of our own and not Foundation's JSONEncoder: the bytes of
/// these documents are schema 1 and older than this file, and JSONEncoder
/// cannot write all of them. Without `.sortedKeys` it writes an object's keys
/// in hash order, different from run to run, where the flow log and the error
/// bodies have a fixed order; it escapes U+0008 and U+000C as \b and \f where
/// the flow log writes \u0008 and \u000c; and it cannot write a number with a
/// fixed count of decimals (the flow log's `duration_ms`). Owning the writer
/// also keeps the bytes from changing with the toolchain's Foundation. What
/// JSONEncoder did write (the API's snapshot, sorted) this writes byte for
/// byte the same; the tests hold the two to that.
///
/// Values are written out as they are encoded, not collected into a tree
/// first (the flow log is up to 100,000 records a pass). So a container stays
/// writable until its parent is written to again, as with synthesized Codable
/// and every type here; writing to a container after that is a programming
/// error (a precondition). Dictionaries' keys come in hash order: only
/// `sorted` formats may carry them.
public struct WireJSON: Sendable {
    /// The order of an object's keys.
    public enum KeyOrder: Sendable {
        /// By their UTF-8 bytes (JSONEncoder's `.sortedKeys` on Linux).
        case sorted
        /// As the value encodes them; for synthesized Codable, the order of its properties.
        case encoded
    }

    /// How strings (and keys) are escaped. Every way escapes `"` and `\`,
    /// and writes `/` and all text not named here as it is (UTF-8).
    public enum Escapes: Sendable {
        /// U+0008, U+000C, LF, CR and tab as \b \f \n \r \t, the other
        /// control characters as \u00XX: JSONEncoder's (and JSONSerialization's).
        case standard
        /// LF, CR and tab as \n \r \t, the other control characters (U+0008
        /// and U+000C too) as \u00XX: the flow log's.
        case lineBreaksShort
        /// Every control character, DEL, U+2028, U+2029 and U+FEFF as \uXXXX.
        /// The error bodies echo the client's text (the request path), and
        /// some decoders mangle those raw (JavaScript's eval takes the
        /// separators for line breaks).
        case invisiblesEscaped
    }

    /// How a Double is written.
    public enum Doubles: Sendable {
        /// The shortest text that reads back as the same Double, without a
        /// trailing ".0" ("0.5", "2", "3.7e-05"): JSONEncoder's.
        case shortest
        /// As `shortest`, except where the stream's first implementation,
        /// which parsed the snapshot back with JSONSerialization and wrote it
        /// again, wrote a Double differently, so that the stream's bytes did
        /// not change: -0 as 0, and a number in exponent form with more than
        /// 16 characters of sign and digits and an exponent from -128 to 127
        /// positionally, as Foundation's Decimal writes it
        /// (3.7000000000000005e-05 as 0.000037000000000000005).
        case streamV1
    }

    public let keys: KeyOrder
    public let escapes: Escapes
    public let doubles: Doubles

    /// `GET /v1/snapshot`: what JSONEncoder wrote with `.sortedKeys` and `.withoutEscapingSlashes`.
    public static let api = WireJSON(keys: .sorted, escapes: .standard, doubles: .shortest)
    /// `GET /v1/stream` lines: the snapshot's format, with the stream's Doubles.
    public static let apiStream = WireJSON(keys: .sorted, escapes: .standard, doubles: .streamV1)
    /// The API's error bodies: `{"version":1,"error":"...","status":404}`.
    public static let apiError = WireJSON(keys: .encoded, escapes: .invisiblesEscaped, doubles: .shortest)
    /// Flow-log records (JSON lines): keys in the schema's order.
    public static let flowLog = WireJSON(keys: .encoded, escapes: .lineBreaksShort, doubles: .shortest)

    /// The value as JSON text. Throws only for what JSON cannot carry (an
    /// infinite or NaN Double).
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let w = Writer(self)
        try w.value(value, path: [])
        w.finish()
        return w.out
    }

    /// `encode`, as a String.
    public func string<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encode(value), as: UTF8.self)
    }

    /// The top-level members of a value that encodes as an object, each as
    /// its own fragment, in the format's key order (the stream compares them
    /// one by one with those it sent before).
    public func members<T: Encodable>(_ value: T) throws -> [(key: String, value: Fragment)] {
        let w = Writer(self)
        w.captureMembers = true
        try w.value(value, path: [])
        w.finish()
        return w.members.map { ($0.key, Fragment(bytes: Array(w.out[$0.range]))) }
    }

    /// JSON text this encoder wrote, or a number in a form of its own: written
    /// as it is where a value of this type is encoded (by WireJSON only).
    public struct Fragment: Encodable, Sendable, Hashable {
        public let bytes: [UInt8]
        /// Only WireJSON makes fragments from text: nothing else writes JSON.
        init(bytes: [UInt8]) { self.bytes = bytes }

        /// A number with exactly `decimals` digits after the point, as
        /// printf's %.Nf writes it (2.000); `value` must be finite.
        public static func fixed(_ value: Double, decimals: Int) -> Fragment {
            precondition(value.isFinite, "WireJSON.Fragment.fixed: \(value) is no JSON number")
            return Fragment(bytes: Array(String(format: "%.\(decimals)f", value).utf8))
        }

        public func encode(to encoder: any Encoder) throws {
            guard let e = encoder as? WireEncoder else {
                throw EncodingError.invalidValue(
                    self,
                    .init(
                        codingPath: encoder.codingPath,
                        debugDescription: "a WireJSON.Fragment is written by WireJSON only"))
            }
            e.writer.out += bytes
        }
    }
}

// MARK: - The writer

/// The output and the containers open in it, innermost last.
final class Writer {
    let format: WireJSON
    // Unchecked: every method touches these a few times per key and value,
    // and the runtime's exclusivity checks of a class's properties were a
    // fifth of the flow log's encoding time. A writer is used by one thread,
    // one access at a time (nothing here hands out inout references to them).
    @exclusivity(unchecked) var out: [UInt8] = []
    @exclusivity(unchecked) private var frames: [Frame] = []
    private var nextID = 0
    /// Record the top-level object's members (`WireJSON.members`).
    var captureMembers = false
    private(set) var members: [(key: String, range: Range<Int>)] = []

    struct Frame {
        let id: Int
        let isObject: Bool
        /// Where the first member or element starts (after the bracket).
        let contentStart: Int
        var count = 0
        /// Each member's key, where it starts and where its value starts,
        /// where they are needed: sorted objects, and the top level for `members`.
        var keys: [String] = []
        var starts: [Int] = []
        var valueStarts: [Int] = []
    }

    /// A container's frame; stale once the frame is closed.
    struct Ref {
        let index: Int
        let id: Int
    }

    init(_ format: WireJSON) {
        self.format = format
        out.reserveCapacity(256)
    }

    func open(object: Bool) -> Ref {
        out.append(object ? UInt8(ascii: "{") : UInt8(ascii: "["))
        nextID &+= 1
        frames.append(Frame(id: nextID, isObject: object, contentStart: out.count))
        return Ref(index: frames.count - 1, id: nextID)
    }

    func isOpen(_ ref: Ref) -> Bool { ref.index < frames.count && frames[ref.index].id == ref.id }

    /// Makes `ref` the innermost container again: what was opened inside it is complete.
    private func resume(_ ref: Ref) {
        precondition(isOpen(ref), "WireJSON: a container was written to after its parent was")
        while frames.count > ref.index + 1 { close() }
    }

    /// Starts a member of the object `ref`: the separator and the key.
    func key(_ key: String, in ref: Ref) {
        resume(ref)
        let i = ref.index
        if frames[i].count > 0 { out.append(UInt8(ascii: ",")) }
        frames[i].count += 1
        let keep = format.keys == .sorted || (captureMembers && i == 0)
        if keep {
            frames[i].keys.append(key)
            frames[i].starts.append(out.count)
        }
        string(key)
        out.append(UInt8(ascii: ":"))
        if keep { frames[i].valueStarts.append(out.count) }
    }

    /// Starts an element of the array `ref`: the separator.
    func element(in ref: Ref) {
        resume(ref)
        if frames[ref.index].count > 0 { out.append(UInt8(ascii: ",")) }
        frames[ref.index].count += 1
    }

    func count(_ ref: Ref) -> Int { isOpen(ref) ? frames[ref.index].count : 0 }

    /// Closes the innermost container, putting a sorted object's members in order.
    private func close() {
        let f = frames.removeLast()
        if f.isObject && !f.keys.isEmpty {
            // Member i runs from its start to the comma before member i + 1 (the
            // last to the end); its value starts keyLength bytes in.
            var spans = f.keys.indices.map { i in
                (
                    key: f.keys[i], range: f.starts[i]..<(i + 1 < f.keys.count ? f.starts[i + 1] - 1 : out.count),
                    keyLength: f.valueStarts[i] - f.starts[i]
                )
            }
            func before(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }
            if format.keys == .sorted, zip(spans, spans.dropFirst()).contains(where: { before($1.key, $0.key) }) {
                spans.sort { before($0.key, $1.key) }
                var sorted: [UInt8] = []
                sorted.reserveCapacity(out.count - f.contentStart)
                for (n, s) in spans.enumerated() {
                    if n > 0 { sorted.append(UInt8(ascii: ",")) }
                    let start = f.contentStart + sorted.count
                    sorted += out[s.range]
                    spans[n].range = start..<f.contentStart + sorted.count
                }
                out.replaceSubrange(f.contentStart..., with: sorted)
            }
            if captureMembers && frames.isEmpty {
                members = spans.map { ($0.key, $0.range.lowerBound + $0.keyLength..<$0.range.upperBound) }
            }
        }
        out.append(f.isObject ? UInt8(ascii: "}") : UInt8(ascii: "]"))
    }

    func finish() { while !frames.isEmpty { close() } }

    // MARK: Values

    /// Any Encodable: primitives directly, anything else by its own encode(to:).
    func value<T: Encodable>(_ v: T, path: @autoclosure () -> [any CodingKey]) throws {
        switch v {
        case let s as String: string(s)
        case let f as WireJSON.Fragment: out += f.bytes
        case let b as Bool: bool(b)
        case let d as Double: try double(d, path())
        case let d as Float: try double(d, path())
        case let i as Int: integer(i)
        case let i as UInt64: integer(i)
        case let i as UInt32: integer(i)
        case let i as UInt16: integer(i)
        case let i as UInt8: integer(i)
        case let i as UInt: integer(i)
        case let i as Int64: integer(i)
        case let i as Int32: integer(i)
        case let i as Int16: integer(i)
        case let i as Int8: integer(i)
        default:
            let depth = frames.count, mark = out.count
            try v.encode(to: WireEncoder(self, path: path()))
            while frames.count > depth { close() }
            // JSONEncoder writes a value that encoded nothing as an empty object.
            if out.count == mark { out += [UInt8(ascii: "{"), UInt8(ascii: "}")] }
        }
    }

    func null() { out += [UInt8(ascii: "n"), UInt8(ascii: "u"), UInt8(ascii: "l"), UInt8(ascii: "l")] }

    func bool(_ b: Bool) { out.append(contentsOf: (b ? "true" : "false").utf8) }

    func integer<I: BinaryInteger>(_ v: I) {
        if v < 0 { out.append(UInt8(ascii: "-")) }
        let m = UInt64(v.magnitude)
        var n = m, digits = 1
        while n >= 10 { n /= 10; digits += 1 }
        out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: digits))
        var p = out.count - 1
        n = m
        repeat {
            out[p] = UInt8(ascii: "0") + UInt8(n % 10)
            n /= 10
            p -= 1
        } while n > 0
    }

    func double<F: BinaryFloatingPoint & LosslessStringConvertible>(_ d: F, _ path: [any CodingKey]) throws {
        guard d.isFinite else {
            throw EncodingError.invalidValue(d, .init(codingPath: path, debugDescription: "\(d) is no JSON number"))
        }
        var text = d.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        if format.doubles == .streamV1 { text = Self.streamV1(text) }
        out.append(contentsOf: text.utf8)
    }

    /// See `WireJSON.Doubles.streamV1`.
    static func streamV1(_ text: String) -> String {
        if text == "-0" { return "0" }
        guard let e = text.firstIndex(of: "e") else { return text }
        let mantissa = text[..<e]
        guard mantissa.utf8.count - (mantissa.contains(".") ? 1 : 0) > 16,
            let exponent = Int(text[text.index(after: e)...]), (-128...127).contains(exponent),
            let decimal = Decimal(string: text)
        else { return text }
        return decimal.description
    }

    private static let hex = Array("0123456789abcdef".utf8)

    func string(_ s: String) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { u in
            var mark = 0
            var i = 0
            // Copies what came before an escape in one piece, then the escape.
            func escape(_ length: Int, _ bytes: [UInt8]) {
                out.append(contentsOf: UnsafeBufferPointer(rebasing: u[mark..<i]))
                out += bytes
                i += length
                mark = i
            }
            func unicode(_ length: Int, _ scalar: UInt32) {
                escape(
                    length,
                    [
                        UInt8(ascii: "\\"), UInt8(ascii: "u"),
                        Self.hex[Int(scalar >> 12 & 0xf)], Self.hex[Int(scalar >> 8 & 0xf)],
                        Self.hex[Int(scalar >> 4 & 0xf)], Self.hex[Int(scalar & 0xf)],
                    ])
            }
            while i < u.count {
                let b = u[i]
                switch b {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    escape(1, [UInt8(ascii: "\\"), b])
                case 0x20..<0x7f:
                    i += 1
                case 0..<0x20:
                    let short: UInt8? =
                        switch (b, format.escapes) {
                        case (0x0a, .standard), (0x0a, .lineBreaksShort): UInt8(ascii: "n")
                        case (0x0d, .standard), (0x0d, .lineBreaksShort): UInt8(ascii: "r")
                        case (0x09, .standard), (0x09, .lineBreaksShort): UInt8(ascii: "t")
                        case (0x08, .standard): UInt8(ascii: "b")
                        case (0x0c, .standard): UInt8(ascii: "f")
                        default: nil
                        }
                    if let short { escape(1, [UInt8(ascii: "\\"), short]) } else { unicode(1, UInt32(b)) }
                default:
                    // DEL and the invisibles, for the one format that escapes them:
                    // U+2028/U+2029 are E2 80 A8/A9 in UTF-8, U+FEFF is EF BB BF.
                    guard format.escapes == .invisiblesEscaped else { i += 1; continue }
                    if b == 0x7f {
                        unicode(1, 0x7f)
                    } else if b == 0xe2, i + 2 < u.count, u[i + 1] == 0x80, u[i + 2] == 0xa8 || u[i + 2] == 0xa9 {
                        unicode(3, u[i + 2] == 0xa8 ? 0x2028 : 0x2029)
                    } else if b == 0xef, i + 2 < u.count, u[i + 1] == 0xbb, u[i + 2] == 0xbf {
                        unicode(3, 0xfeff)
                    } else {
                        i += 1
                    }
                }
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: u[mark..<u.count]))
        }
        out.append(UInt8(ascii: "\""))
    }
}

// MARK: - Codable's side

/// The Encoder a value's encode(to:) is handed: it opens (at most) one
/// container where the writer is.
final class WireEncoder: Encoder {
    let writer: Writer
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    private var opened: Writer.Ref?

    init(_ writer: Writer, path: [any CodingKey]) {
        self.writer = writer
        codingPath = path
    }

    /// The container this encoder opened, or a new one (asked twice, the same).
    private func open(object: Bool) -> Writer.Ref {
        if let opened, writer.isOpen(opened) { return opened }
        let ref = writer.open(object: object)
        opened = ref
        return ref
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(KeyedContainer<Key>(writer: writer, ref: open(object: true), codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        UnkeyedContainer(writer: writer, ref: open(object: false), codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleValueContainer(writer: writer, codingPath: codingPath)
    }
}

struct IndexKey: CodingKey {
    let intValue: Int?
    var stringValue: String { "Index \(intValue ?? 0)" }
    init(intValue: Int) { self.intValue = intValue }
    init?(stringValue: String) { nil }
}

struct SuperKey: CodingKey {
    var stringValue: String { "super" }
    var intValue: Int? { nil }
    init() {}
    init?(stringValue: String) { nil }
    init?(intValue: Int) { nil }
}

struct KeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let writer: Writer
    let ref: Writer.Ref
    let codingPath: [any CodingKey]

    mutating func encodeNil(forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.null() }
    mutating func encode(_ value: Bool, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.bool(value) }
    mutating func encode(_ value: String, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.string(value) }
    mutating func encode(_ value: Double, forKey key: Key) throws {
        writer.key(key.stringValue, in: ref); try writer.double(value, codingPath + [key])
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        writer.key(key.stringValue, in: ref); try writer.double(value, codingPath + [key])
    }
    mutating func encode(_ value: Int, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { writer.key(key.stringValue, in: ref); writer.integer(value) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        writer.key(key.stringValue, in: ref)
        try writer.value(value, path: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(
        keyedBy keyType: NestedKey.Type,
        forKey key: Key
    ) -> KeyedEncodingContainer<NestedKey> {
        writer.key(key.stringValue, in: ref)
        return KeyedEncodingContainer(
            KeyedContainer<NestedKey>(
                writer: writer, ref: writer.open(object: true),
                codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        writer.key(key.stringValue, in: ref)
        return UnkeyedContainer(writer: writer, ref: writer.open(object: false), codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        writer.key("super", in: ref)
        return WireEncoder(writer, path: codingPath + [SuperKey()])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        writer.key(key.stringValue, in: ref)
        return WireEncoder(writer, path: codingPath + [key])
    }
}

struct UnkeyedContainer: UnkeyedEncodingContainer {
    let writer: Writer
    let ref: Writer.Ref
    let codingPath: [any CodingKey]
    var count: Int { writer.count(ref) }

    private var nextKey: IndexKey { IndexKey(intValue: count) }

    mutating func encodeNil() throws { writer.element(in: ref); writer.null() }
    mutating func encode(_ value: Bool) throws { writer.element(in: ref); writer.bool(value) }
    mutating func encode(_ value: String) throws { writer.element(in: ref); writer.string(value) }
    mutating func encode(_ value: Double) throws {
        let key = nextKey
        writer.element(in: ref); try writer.double(value, codingPath + [key])
    }
    mutating func encode(_ value: Float) throws {
        let key = nextKey
        writer.element(in: ref); try writer.double(value, codingPath + [key])
    }
    mutating func encode(_ value: Int) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: Int8) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: Int16) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: Int32) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: Int64) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt8) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt16) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt32) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode(_ value: UInt64) throws { writer.element(in: ref); writer.integer(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let key = nextKey
        writer.element(in: ref)
        try writer.value(value, path: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let key = nextKey
        writer.element(in: ref)
        return KeyedEncodingContainer(
            KeyedContainer<NestedKey>(
                writer: writer, ref: writer.open(object: true),
                codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let key = nextKey
        writer.element(in: ref)
        return UnkeyedContainer(writer: writer, ref: writer.open(object: false), codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let key = nextKey
        writer.element(in: ref)
        return WireEncoder(writer, path: codingPath + [key])
    }
}

struct SingleValueContainer: SingleValueEncodingContainer {
    let writer: Writer
    let codingPath: [any CodingKey]

    mutating func encodeNil() throws { writer.null() }
    mutating func encode(_ value: Bool) throws { writer.bool(value) }
    mutating func encode(_ value: String) throws { writer.string(value) }
    mutating func encode(_ value: Double) throws { try writer.double(value, codingPath) }
    mutating func encode(_ value: Float) throws { try writer.double(value, codingPath) }
    mutating func encode(_ value: Int) throws { writer.integer(value) }
    mutating func encode(_ value: Int8) throws { writer.integer(value) }
    mutating func encode(_ value: Int16) throws { writer.integer(value) }
    mutating func encode(_ value: Int32) throws { writer.integer(value) }
    mutating func encode(_ value: Int64) throws { writer.integer(value) }
    mutating func encode(_ value: UInt) throws { writer.integer(value) }
    mutating func encode(_ value: UInt8) throws { writer.integer(value) }
    mutating func encode(_ value: UInt16) throws { writer.integer(value) }
    mutating func encode(_ value: UInt32) throws { writer.integer(value) }
    mutating func encode(_ value: UInt64) throws { writer.integer(value) }
    mutating func encode<T: Encodable>(_ value: T) throws { try writer.value(value, path: codingPath) }
}
