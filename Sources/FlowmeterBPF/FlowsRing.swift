import CLibbpf
import FlowmeterCore
import Foundation
import Synchronization

/// Drains one BPF ring buffer on a thread of its own, so a burst cannot fill
/// the ring while the collector sleeps between ticks.
///
/// Each record is decoded where it lies in the ring, during the drain, and
/// appended to the batch `take` hands over. The bytes are read once: copying
/// them out raw and decoding at `take` cost three passes over the data (one
/// copy per drain, one into the shared buffer, one to decode) and made the
/// drain several times slower than libbpf's own loop (`flowmeter-bench ring`).
///
/// Thread safety: the batch is guarded by a lock that the draining side holds
/// while libbpf runs the callback, so the callback appends to it directly and
/// `take` may be called from any thread at any time. `start`/`stop` belong to
/// one owner; `consumeNow` is for when the thread is not running.
public final class RingReader<Record>: @unchecked Sendable {
    /// Decoded records waiting for `take`; guarded by `lock`.
    @usableFromInline struct Pending {
        @usableFromInline var records: [Record] = []
        @usableFromInline var rejected: UInt64 = 0
        /// The batch `take` handed out last, kept to be refilled (see `take`).
        var previous: [Record] = []
        @usableFromInline init() {}
    }

    /// One consume holds the lock for at most `chunk` records, so `take`
    /// never waits behind a drain that a sustained burst keeps feeding, and
    /// the chunk then handed to `fold` is still in cache. By default 16,384
    /// (1.4 MB of flow records); `flowmeter-bench ring` measures another
    /// size beside it (variant f).
    public static var defaultChunk: Int { 1 << 14 }
    public let chunk: Int

    /// Bounds on the records waiting for `take`, so the daemon's memory does
    /// not grow with the record rate times the interval. Past `softLimit`
    /// `backlogged` turns true and the collector takes the records early;
    /// at `hardLimit` the thread stops draining until `take`. Records then
    /// wait in the kernel's ring, and once that is full the programs count
    /// each record they cannot reserve (`flowmeter_ringbuf_lost_records_total`):
    /// a collector that cannot keep up loses records visibly, never memory.
    public let softLimit: Int
    public let hardLimit: Int
    /// Records waiting for `take` (what the drain thread last left).
    private let waiting = Atomic<Int>(0)
    /// Times the drain stopped at `hardLimit` (each a wait for `take`).
    private let stalls = Atomic<UInt64>(0)
    /// Woken by `take` when the drain waits at `hardLimit`.
    private let room = DispatchSemaphore(value: 0)
    private let ring: OpaquePointer
    private let handler: RingSampleHandler
    private let pending: UnsafeMutablePointer<Pending>
    private let fold: ((UnsafeBufferPointer<Record>) -> Void)?
    private let lock = Mutex<Void>(())
    private let running = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    private let name: String

    /// `decode` runs on the draining thread, once per record; nil rejects the
    /// record (a size or version that is not ours: never expected), counted
    /// by `take`. Inlinable so that the per-record closure is specialised for
    /// `Record` where the reader is made: a generic append costs more than
    /// the whole of libbpf's per-record work.
    ///
    /// `fold`, if given, sees each drained chunk of records once, under the
    /// lock, right after `decode` made them and while they are in cache;
    /// what it keeps can be handed over by `take(_:)`.
    @inlinable
    public convenience init(
        ringFD: Int32, name: String, softLimit: Int = .max, hardLimit: Int = .max,
        chunk: Int = RingReader.defaultChunk,
        decode: @escaping (UnsafeRawBufferPointer) -> Record?,
        fold: ((UnsafeBufferPointer<Record>) -> Void)? = nil
    ) throws {
        let pending = UnsafeMutablePointer<Pending>.allocate(capacity: 1)
        pending.initialize(to: Pending())
        let handler = RingSampleHandler { bytes in
            if let r = decode(bytes) { pending.pointee.records.append(r) } else { pending.pointee.rejected += 1 }
        }
        try self.init(
            ringFD: ringFD, name: name, softLimit: softLimit, hardLimit: hardLimit, chunk: chunk, handler: handler,
            pending: pending, fold: fold)
    }

    @usableFromInline
    init(
        ringFD: Int32, name: String, softLimit: Int, hardLimit: Int, chunk: Int, handler: RingSampleHandler,
        pending: UnsafeMutablePointer<Pending>, fold: ((UnsafeBufferPointer<Record>) -> Void)?
    ) throws {
        precondition(softLimit > 0 && hardLimit >= softLimit, "ring limits: 0 < soft <= hard")
        precondition(chunk > 0, "ring chunk: at least one record")
        self.chunk = chunk
        self.name = name
        self.softLimit = softLimit
        self.hardLimit = hardLimit
        self.handler = handler
        self.pending = pending
        self.fold = fold
        guard let rb = ring_buffer__new(ringFD, ringSampleCallback, Unmanaged.passUnretained(handler).toOpaque(), nil) else {
            pending.deinitialize(count: 1); pending.deallocate()
            throw BPFError.from("open ring buffer \(name)", result: -1)
        }
        ring = rb
    }

    /// Starts the draining thread.
    public func start() {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let epollFD = ring_buffer__epoll_fd(ring)
        let t = Thread { [self] in
            while running.load(ordering: .acquiring) {
                if waiting.load(ordering: .acquiring) >= hardLimit {
                    // Full: the ring is readable, so poll would not wait. Wait for `take`.
                    _ = room.wait(timeout: .now() + .milliseconds(100))
                } else {
                    // Wait without the lock (libbpf's epoll set is readable when the ring has data).
                    var p = pollfd(fd: epollFD, events: Int16(POLLIN), revents: 0)
                    _ = poll(&p, 1, 100)
                }
                drain(capped: true)
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

    /// Consumes on the caller's thread (only while the draining thread is not
    /// running), everything: past `hardLimit` only the kernel ring's own
    /// size is left to take, and on the way out nothing may stay behind.
    public func consumeNow() {
        precondition(!running.load(ordering: .acquiring), "consumeNow while the ring thread runs")
        drain(capped: false)
    }

    /// Records waiting for `take` have passed `softLimit`.
    public var backlogged: Bool { waiting.load(ordering: .acquiring) >= softLimit }

    /// Times the drain stopped at `hardLimit` since the start.
    public var stallCount: UInt64 { stalls.load(ordering: .acquiring) }

    /// Empties the ring into the pending batch, a budget at a time, up to `hardLimit` if `capped`.
    private func drain(capped: Bool) {
        var more = true
        while more {
            lock.withLock { _ in
                let before = pending.pointee.records.count
                let space = capped ? hardLimit - before : Int.max
                guard space > 0 else {
                    more = false
                    return
                }
                handler.budget = min(chunk, space)
                more = ring_buffer__consume(ring) < 0 && handler.budget <= 0
                let after = pending.pointee.records.count
                if let fold, after > before {
                    pending.pointee.records.withUnsafeBufferPointer { fold(UnsafeBufferPointer(rebasing: $0[before...])) }
                }
                if capped && after >= hardLimit {
                    stalls.add(1, ordering: .relaxed)
                    more = false
                }
                waiting.store(after, ordering: .releasing)
            }
        }
    }

    /// Records received since the last call, and how many `decode` rejected.
    ///
    /// The reader keeps a reference to the batch it returns and refills that
    /// storage after the next `take`, if the caller has let go of it by then
    /// (otherwise copy-on-write gives the reader fresh storage; nothing is
    /// shared). A batch of a million records is 100 MB, and writing into
    /// fresh pages cost the drain more than decoding did. Storage more than
    /// four times what the last batch needed is let go, so a burst's memory
    /// is returned once the burst is over.
    public func take() -> (records: [Record], rejected: UInt64) {
        take {}.batch
    }

    /// The same, running `also` under the lock that `fold` runs under, so
    /// what `fold` keeps can be handed over with the batch.
    public func take<T>(_ also: () -> T) -> (batch: (records: [Record], rejected: UInt64), also: T) {
        lock.withLock { _ in
            let p = pending
            let out = p.pointee.records, rejected = p.pointee.rejected
            var reuse = p.pointee.previous
            p.pointee.previous = []
            if reuse.capacity > 4 * max(out.count, 1024) { reuse = [] } else { reuse.removeAll(keepingCapacity: true) }
            p.pointee.records = reuse
            p.pointee.rejected = 0
            p.pointee.previous = out
            let wasFull = waiting.exchange(0, ordering: .acquiringAndReleasing) >= hardLimit
            if wasFull { room.signal() }
            return ((out, rejected), also())
        }
    }

    deinit {
        stop()
        ring_buffer__free(ring)
        pending.deinitialize(count: 1)
        pending.deallocate()
    }
}

/// What the C callback reaches through its context pointer (not generic: a
/// C function pointer cannot depend on `Record`). A class with a `let`
/// closure, borrowed without retain/release, because the per-record path must
/// not touch reference counts.
@usableFromInline final class RingSampleHandler {
    @usableFromInline let sample: (UnsafeRawBufferPointer) -> Void
    /// Records left before the callback stops the current consume.
    var budget = 0
    @usableFromInline init(sample: @escaping (UnsafeRawBufferPointer) -> Void) { self.sample = sample }
}

private let ringSampleCallback: ring_buffer_sample_fn = { ctx, data, size in
    Unmanaged<RingSampleHandler>.fromOpaque(ctx!)._withUnsafeGuaranteedRef { h in
        h.sample(UnsafeRawBufferPointer(start: data, count: size))
        h.budget -= 1
        // Negative stops the consume after this record (which counts as consumed).
        return h.budget > 0 ? 0 : -1
    }
}

/// How many decoded records may wait between ticks, per ring
/// (docs/reliability.md, "Memory"). Past the soft limit the collector
/// processes the records at once rather than at the tick: a fifth of a
/// second of the churn measured here (18,500 connections/s are 74,000
/// socket records/s), a twentieth of
/// a flood of new flows past a full table (300,000 packets/s). The hard
/// limits are twice that: they are reached only when the collector cannot
/// keep up, and then a larger backlog would not lose fewer records (the
/// loss is the arrival rate less the processing rate), only hold more
/// memory; records past them stay in the kernel ring (1 MiB and 4 MiB by
/// default) until it is full.
public enum RingLimits {
    /// Socket records: 136 bytes each decoded, so 2.2 and 4.5 MiB.
    public static let eventsSoft = 16_384
    public static let eventsHard = 32_768
    /// Flow records: 88 bytes decoded, plus their sums per flow (64-byte
    /// slots at half load): about 3.5 and 7 MiB.
    public static let flowsSoft = 16_384
    public static let flowsHard = 32_768
}

/// The "flows" ring: packets the full flow table could not take, one record
/// each. While the table is full that is one record per packet, so the
/// records are also summed per flow as they are drained, a chunk at a time
/// while the chunk is in cache: summing them at the tick meant reading a
/// burst's records back from memory (`flowmeter-bench ring`).
public final class FlowsRing: @unchecked Sendable {
    /// The sums, written by the reader's `fold` and, like the records,
    /// guarded by the reader's lock. Captured by that closure, so they live
    /// as long as the reader, which drains one last time when it goes.
    final class Sums: @unchecked Sendable {
        let table = UnsafeMutablePointer<FlowTable>.allocate(capacity: 1)
        init() { table.initialize(to: FlowTable()) }
        deinit {
            table.deinitialize(count: 1)
            table.deallocate()
        }
    }

    let reader: RingReader<FlowRecord>
    private let sums = Sums()

    /// `chunk`: records per consume and `fold` (see `RingReader.chunk`).
    public init(ringFD: Int32, chunk: Int = RingReader<FlowRecord>.defaultChunk) throws {
        let sums = self.sums
        reader = try RingReader(
            ringFD: ringFD, name: "flows-ring", softLimit: RingLimits.flowsSoft,
            hardLimit: RingLimits.flowsHard, chunk: chunk, decode: ABI.decodeFlowEvent,
            fold: { sums.table.pointee.add($0) })
    }
    public func start() { reader.start() }
    public func stop() { reader.stop() }
    /// More records wait than the collector should leave until its tick.
    public var backlogged: Bool { reader.backlogged }
    public var stallCount: UInt64 { reader.stallCount }
    public func consumeNow() { reader.consumeNow() }

    /// Records received since the last call, and how many had a layout that is not ours.
    public func take() -> (records: [FlowRecord], rejected: UInt64) {
        var discard = FlowTable(minimumCapacity: 0)
        return take(summingInto: &discard)
    }

    /// The same, and `flows` becomes those records summed per flow, in order
    /// (`flows.entry(ofRecord: i)` is the flow of `records[i]`). Whatever
    /// `flows` held is dropped, and its storage goes on to take the next
    /// records' sums, so a caller that passes the same table every time keeps
    /// two tables between them and allocates none.
    public func take(summingInto flows: inout FlowTable) -> (records: [FlowRecord], rejected: UInt64) {
        flows.removeAll()
        return reader.take { swap(&flows, &sums.table.pointee) }.batch
    }
}
