/// Everything wrong with one config source, one problem per line:
/// `SOURCE:LINE:COLUMN: KEY.PATH: message` for a file,
/// `environment: VARIABLE: message` for the environment.
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        /// The file name given to the parser, or "environment".
        public var source: String
        /// 1-based; nil where there is no position (the environment).
        public var line: Int?
        public var column: Int?
        /// Where in the document: `services[1].ports`, `series.expiry`; the
        /// variable's name for the environment; empty for the whole document
        /// (syntax errors, a document that is not a mapping).
        public var path: String
        public var message: String

        public init(source: String, line: Int? = nil, column: Int? = nil, path: String, message: String) {
            self.source = source; self.line = line; self.column = column; self.path = path; self.message = message
        }

        public var description: String {
            var s = source
            if let line {
                s += ":\(line)"
                if let column { s += ":\(column)" }
            }
            s += ": "
            if !path.isEmpty { s += path + ": " }
            return s + message
        }
    }

    /// In document order (or by variable name).
    public var problems: [Problem]

    public init(_ problems: [Problem]) { self.problems = problems }

    public var description: String { problems.map(\.description).joined(separator: "\n") }
}
