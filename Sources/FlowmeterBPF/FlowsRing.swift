import CLibbpf
import FlowmeterCore
import Foundation
import Synchronization

/// Drains the "flows" ring buffer on a thread of its own, so a burst of
/// overflow records cannot fill the ring while the collector sleeps between
/// evictions. The collector takes what arrived with `take()`.
public final class FlowsRing: @unchecked Sendable {
    /// State the C callback writes into: reached through the context pointer,
    /// so the per-record path does no retain/release.
    struct Sink {
        var records: [FlowRecord] = []
        /// Records with a size or version that is not ours (never expected).
        var rejected: UInt64 = 0
    }

    private let ring: OpaquePointer
    private let sink: UnsafeMutablePointer<Sink>
    private let shared = Mutex<(records: [FlowRecord], rejected: UInt64)>(([], 0))
    private let running = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    private var thread: Thread?

    public init(ringFD: Int32) throws {
        sink = .allocate(capacity: 1)
        sink.initialize(to: Sink())
        let cb: ring_buffer_sample_fn = { ctx, data, size in
            let sink = ctx!.assumingMemoryBound(to: Sink.self)
            if let r = ABI.decodeFlowEvent(UnsafeRawBufferPointer(start: data, count: size)) {
                sink.pointee.records.append(r)
            } else {
                sink.pointee.rejected += 1
            }
            return 0
        }
        guard let rb = ring_buffer__new(ringFD, cb, UnsafeMutableRawPointer(sink), nil) else {
            sink.deinitialize(count: 1); sink.deallocate()
            throw BPFError.from("open ring buffer flows", result: -1)
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
        t.name = "flowmeter-flows-ring"
        thread = t
        t.start()
    }

    /// Stops the thread (waits for it), then empties the ring synchronously.
    public func stop() {
        if running.exchange(false, ordering: .acquiringAndReleasing) {
            stopped.wait()
        }
        _ = ring_buffer__consume(ring)
        publish()
    }

    private func publish() {
        guard !sink.pointee.records.isEmpty || sink.pointee.rejected > 0 else { return }
        let batch = sink.pointee.records
        let rejected = sink.pointee.rejected
        sink.pointee.records.removeAll(keepingCapacity: true)
        sink.pointee.rejected = 0
        shared.withLock { s in
            s.records.append(contentsOf: batch)
            s.rejected += rejected
        }
    }

    /// Consumes on the caller's thread (only when the polling thread is not running).
    public func consumeNow() {
        precondition(!running.load(ordering: .acquiring), "consumeNow while the ring thread runs")
        _ = ring_buffer__consume(ring)
        publish()
    }

    /// Records received since the last call.
    public func take() -> (records: [FlowRecord], rejected: UInt64) {
        shared.withLock { s in
            defer { s.records.removeAll(keepingCapacity: true); s.rejected = 0 }
            return (s.records, s.rejected)
        }
    }

    deinit {
        stop()
        ring_buffer__free(ring)
        sink.deinitialize(count: 1)
        sink.deallocate()
    }
}
