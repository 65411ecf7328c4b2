import CLibbpf
import FlowmeterCore
import Foundation
import Synchronization

/// Drains one BPF ring buffer on a thread of its own, so a burst cannot fill
/// the ring while the collector sleeps between ticks. Records are copied raw
/// into one byte buffer (the C callback cannot be generic, and it should not
/// allocate per record); `take` decodes them in a batch.
public final class RingReader: @unchecked Sendable {
    /// What the C callback writes into, reached through the context pointer,
    /// so the per-record path does no retain/release.
    struct Sink {
        var bytes: [UInt8] = []
        var ends: [Int] = []
    }

    private let ring: OpaquePointer
    private let sink: UnsafeMutablePointer<Sink>
    private let shared = Mutex<Sink>(Sink())
    private let running = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    private let name: String

    public init(ringFD: Int32, name: String) throws {
        self.name = name
        sink = .allocate(capacity: 1)
        sink.initialize(to: Sink())
        let cb: ring_buffer_sample_fn = { ctx, data, size in
            let s = ctx!.assumingMemoryBound(to: Sink.self)
            s.pointee.bytes.append(contentsOf: UnsafeRawBufferPointer(start: data, count: size))
            s.pointee.ends.append(s.pointee.bytes.count)
            return 0
        }
        guard let rb = ring_buffer__new(ringFD, cb, UnsafeMutableRawPointer(sink), nil) else {
            sink.deinitialize(count: 1); sink.deallocate()
            throw BPFError.from("open ring buffer \(name)", result: -1)
        }
        ring = rb
    }

    /// Starts the polling thread.
    public func start() {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let t = Thread { [self] in
            while running.load(ordering: .acquiring) {
                _ = ring_buffer__poll(ring, 100)
                publish()
            }
            stopped.signal()
        }
        t.name = "flowmeter-\(name)"
        t.start()
    }

    /// Stops the thread (waits for it), then empties the ring synchronously.
    public func stop() {
        if running.exchange(false, ordering: .acquiringAndReleasing) { stopped.wait() }
        consumeNow()
    }

    /// Consumes on the caller's thread (only while the polling thread is not running).
    public func consumeNow() {
        precondition(!running.load(ordering: .acquiring), "consumeNow while the ring thread runs")
        _ = ring_buffer__consume(ring)
        publish()
    }

    private func publish() {
        guard !sink.pointee.ends.isEmpty else { return }
        let batch = sink.pointee
        sink.pointee.bytes.removeAll(keepingCapacity: true)
        sink.pointee.ends.removeAll(keepingCapacity: true)
        shared.withLock { s in
            let base = s.bytes.count
            s.bytes.append(contentsOf: batch.bytes)
            s.ends.append(contentsOf: batch.ends.map { $0 + base })
        }
    }

    /// Records received since the last call, decoded; `rejected` counts those
    /// `decode` refused (a size or version that is not ours: never expected).
    public func take<R>(_ decode: (UnsafeRawBufferPointer) -> R?) -> (records: [R], rejected: UInt64) {
        let batch = shared.withLock { s -> Sink in
            defer { s.bytes.removeAll(keepingCapacity: true); s.ends.removeAll(keepingCapacity: true) }
            return s
        }
        var out: [R] = [], rejected: UInt64 = 0
        out.reserveCapacity(batch.ends.count)
        batch.bytes.withUnsafeBytes { all in
            var start = 0
            for end in batch.ends {
                if let r = decode(UnsafeRawBufferPointer(rebasing: all[start..<end])) { out.append(r) } else { rejected += 1 }
                start = end
            }
        }
        return (out, rejected)
    }

    deinit {
        stop()
        ring_buffer__free(ring)
        sink.deinitialize(count: 1)
        sink.deallocate()
    }
}

/// The "flows" ring: packets the full flow table could not take.
public final class FlowsRing: @unchecked Sendable {
    let reader: RingReader
    public init(ringFD: Int32) throws { reader = try RingReader(ringFD: ringFD, name: "flows-ring") }
    public func start() { reader.start() }
    public func stop() { reader.stop() }
    public func consumeNow() { reader.consumeNow() }
    public func take() -> (records: [FlowRecord], rejected: UInt64) { reader.take(ABI.decodeFlowEvent) }
}
