import CZlib

/// gzip (RFC 1952) with zlib's deflate, for OTLP/HTTP bodies
/// (Content-Encoding: gzip). gRPC compresses in its transport.
public enum Gzip {
    /// The gzip member of `data`. zlib writes the gzip header and trailer
    /// itself when windowBits is 15 + 16.
    public static func compress(_ data: [UInt8], level: Int32 = 6) -> [UInt8] {
        var s = z_stream()
        // deflateInit2 is a macro; deflateInit2_ is what it calls.
        let rc = deflateInit2_(&s, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        precondition(rc == Z_OK, "deflateInit2: \(rc)")  // only fails for bad arguments or no memory
        defer { deflateEnd(&s) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&s, uLong(data.count))))
        var input = data
        let produced: Int = input.withUnsafeMutableBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { o in
                s.next_in = inp.baseAddress
                s.avail_in = uInt(inp.count)
                s.next_out = o.baseAddress
                s.avail_out = uInt(o.count)
                let r = deflate(&s, Z_FINISH)
                // deflateBound is enough for one Z_FINISH call.
                precondition(r == Z_STREAM_END, "deflate: \(r)")
                return o.count - Int(s.avail_out)
            }
        }
        out.removeLast(out.count - produced)
        return out
    }
}
