import CCrypt
import Foundation

/// Basic auth against bcrypt hashes (the web config's basic_auth_users).
/// The hash is checked by libxcrypt's crypt_rn(3), a kept implementation of
/// bcrypt ($2a$, $2b$, $2y$), not by code of ours.
public enum BasicAuth {
    /// User and password of an `Authorization: Basic ...` header; nil if it
    /// is absent or not well-formed basic auth.
    public static func credentials(_ header: String?) -> (user: String, password: String)? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "basic",
            let data = Data(base64Encoded: parts[1].trimmingCharacters(in: .whitespaces)),
            let text = String(data: data, encoding: .utf8),
            let colon = text.firstIndex(of: ":")
        else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    /// Equal contents, in a time that depends on the lengths only: where a
    /// secret is compared, the time must not tell how much of it matched.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    /// Whether `password` hashes to `hash` (bcrypt, with the cost and salt
    /// the hash carries). Takes as long as the hash's cost says (about 70 ms
    /// at cost 10): callers keep it off the event loops.
    public static func bcryptMatches(password: String, hash: String) -> Bool {
        // A NUL would end the C string early: a different password.
        guard !password.utf8.contains(0), !hash.utf8.contains(0) else { return false }
        let data = UnsafeMutablePointer<crypt_data>.allocate(capacity: 1)
        defer {
            // The state holds the password and its hash: wipe it before freeing.
            memset(data, 0, MemoryLayout<crypt_data>.size)
            data.deallocate()
        }
        memset(data, 0, MemoryLayout<crypt_data>.size)
        guard let out = crypt_rn(password, hash, data, Int32(MemoryLayout<crypt_data>.size)) else { return false }
        return constantTimeEqual(Array(String(cString: out).utf8), Array(hash.utf8))
    }
}
