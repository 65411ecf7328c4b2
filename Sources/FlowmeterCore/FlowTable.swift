// One tick's flow records summed per flow key, before the per-flow work of
// the accounting (interface names, service pairs), which hashes strings.
//
// Why not a Dictionary<FlowKey, ...>: the "flows" ring brings one record per
// packet while the kernel's flow table is full, i.e. when traffic is
// heaviest, and a Dictionary keyed by a 44-byte struct (SipHash over every
// field, a copy-on-write check on every update) ran at 0.2-0.3x of a C table
// doing the same job. This one is open addressing with linear probing: the
// key lives in its slot, a slot is one 64-byte-aligned cache line (a slot
// straddling two lines took two cache misses per lookup), the hash is a
// multiply-xor over the key's six words, and uniqueness is checked once per
// call, not per record (`flowmeter-bench ring`).
//
// The hash is seeded per table from the system RNG: keys come off the
// network, and a fixed hash would let a sender pick addresses and ports that
// all land in one probe run. (It is not a keyed PRF; tables are emptied every
// tick, which bounds what a collision run can cost.)

/// Flows summed per key, in the order each was first added.
public struct FlowTable: Sendable {
    /// Totals of one flow. `records` is how many records were added to it.
    public struct Entry: Sendable, Equatable {
        public var key: FlowKey
        public var packets: UInt64
        public var bytes: UInt64
        public var records: UInt64
        public init(key: FlowKey, packets: UInt64, bytes: UInt64, records: UInt64) {
            self.key = key; self.packets = packets; self.bytes = bytes; self.records = records
        }
    }

    /// 64 bytes: the 44-byte key, its entry (negative: the slot is empty), the sums.
    struct Slot {
        var key: FlowKey
        var entry: Int32
        var packets: UInt64
        var bytes: UInt64
    }

    /// Per entry, dense in first-seen order: where it lives and how many records it took.
    struct EntryInfo {
        var slot: Int32
        var records: UInt64
    }

    /// The slots (cache-line aligned, which Array storage is not) and the
    /// entries. Shared between copies of a table until one of them changes.
    final class Storage: @unchecked Sendable {
        let slots: UnsafeMutableBufferPointer<Slot>
        /// Half as long as `slots` (the most entries before growing); the first `count` are used.
        let info: UnsafeMutableBufferPointer<EntryInfo>
        var count = 0

        init(slotCount n: Int) {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: n * MemoryLayout<Slot>.stride, alignment: 64)
            slots = UnsafeMutableBufferPointer(
                start: raw.initializeMemory(as: Slot.self, repeating: FlowTable.emptySlot, count: n),
                count: n)
            info = .allocate(capacity: n / 2)
        }

        func copy() -> Storage {
            let c = Storage(slotCount: slots.count)
            _ = c.slots.update(fromContentsOf: slots)
            _ = c.info.initialize(fromContentsOf: info[..<count])
            c.count = count
            return c
        }

        deinit {
            slots.deallocate()
            info.deallocate()
        }
    }

    private var storage: Storage
    /// The entry of each record added since the last `removeAll`, in order.
    private var recordEntries: [Int32] = []
    private let seed: UInt64
    private let minimumSlots: Int
    /// Records added since the last `removeAll`, by source.
    public private(set) var recordsFromMap: UInt64 = 0
    public private(set) var recordsFromRing: UInt64 = 0

    static let emptySlot = Slot(
        key: FlowKey(
            source: .zero, destination: .zero, ifindex: 0, sourcePort: 0, destinationPort: 0,
            direction: .receive, family: .other, ipProtocol: 0, flags: []),
        entry: -1, packets: 0, bytes: 0)

    /// Room for `minimumCapacity` flows before the first growth. The load
    /// factor stays at or below one half, so probe runs stay short.
    public init(minimumCapacity: Int = 1024, seed: UInt64 = UInt64.random(in: .min ... .max)) {
        minimumSlots = Self.slotCount(for: minimumCapacity)
        storage = Storage(slotCount: minimumSlots)
        self.seed = seed
    }

    /// Slots for `flows` flows at a load factor of at most one half.
    static func slotCount(for flows: Int) -> Int {
        var n = 16
        while n < 2 * flows { n <<= 1 }
        return n
    }

    /// Distinct flows.
    public var count: Int { storage.count }
    public var isEmpty: Bool { count == 0 }
    /// Flows the table holds before it grows.
    public var capacity: Int { storage.info.count }
    /// Records added since the last `removeAll`.
    public var records: Int { recordEntries.count }

    /// The entry first added `index`-th (what `add` returned for it).
    public subscript(index: Int) -> Entry {
        precondition(index >= 0 && index < count, "FlowTable entry \(index) out of range")
        let e = storage.info[index]
        let s = storage.slots[Int(e.slot)]
        return Entry(key: s.key, packets: s.packets, bytes: s.bytes, records: e.records)
    }

    /// All entries in first-seen order.
    public var entries: [Entry] { (0..<count).map { self[$0] } }

    /// The entry the `index`-th record added since the last `removeAll` went to.
    public func entry(ofRecord index: Int) -> Int { Int(recordEntries[index]) }

    /// The entry of `key`, if it was added.
    public func index(of key: FlowKey) -> Int? {
        let s = storage.slots, mask = s.count - 1
        var i = Int(truncatingIfNeeded: Self.hash(key, seed)) & mask
        while s[i].entry >= 0 {
            if Self.same(s[i].key, key) { return Int(s[i].entry) }
            i = (i + 1) & mask
        }
        return nil
    }

    /// Storage this value alone holds, with room for `more` new flows.
    private mutating func prepare(room more: Int) {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        if count + more > capacity { grow(toHold: count + more) }
    }

    /// Adds one record's counters to its flow; returns the flow's entry index.
    @discardableResult
    public mutating func add(_ key: FlowKey, packets: UInt64, bytes: UInt64, source: FlowSource = .flowMap) -> Int {
        prepare(room: 1)
        if source == .flowMap { recordsFromMap += 1 } else { recordsFromRing += 1 }
        let e = Self.insert(key, packets, bytes, records: 1, seed: seed, into: storage)
        recordEntries.append(e)
        return Int(e)
    }

    /// Adds every record (`entry(ofRecord:)` tells where each went).
    public mutating func add(_ records: [FlowRecord]) {
        records.withUnsafeBufferPointer { add($0) }
    }

    /// Adds every record (`entry(ofRecord:)` tells where each went).
    public mutating func add(_ records: UnsafeBufferPointer<FlowRecord>) {
        prepare(room: 0)
        let first = recordEntries.count
        recordEntries.append(contentsOf: repeatElement(0, count: records.count))
        var entries: [Int32] = []
        swap(&entries, &recordEntries)  // written below while `self` may grow
        var fromMap: UInt64 = 0, i = 0
        entries.withUnsafeMutableBufferPointer { all in
            while i < records.count {
                // Records go in until one is a new flow and the table is full:
                // then it grows, and nothing moves while records go in. Growing
                // as soon as the table was full, before knowing whether another
                // flow came, doubled a table that a burst had just filled (16 MB
                // instead of 8 for 65,536 flows: twice the cache misses, and
                // fresh pages to fault in; `flowmeter-bench ring`).
                var full = false
                let table = storage, seed = self.seed, mask = table.slots.count - 1
                withUnsafeTemporaryAllocation(of: Int.self, capacity: Self.block) { home in
                    blocks: while i < records.count {
                        let blockEnd = min(records.count, i + Self.block)
                        // Read each record's first slot before inserting any: the
                        // cache misses of a block (65536 flows are 8 MB of slots)
                        // then overlap instead of following one another.
                        var seen: Int32 = 0
                        for j in i..<blockEnd {
                            let h = Int(truncatingIfNeeded: Self.hash(records[j].key, seed)) & mask
                            home[j - i] = h
                            seen |= table.slots[h].entry
                        }
                        // Entries are -1 or an index, so the OR of any is too.
                        precondition(seen >= -1, "FlowTable: corrupt slot")
                        for j in i..<blockEnd {
                            let r = records[j]
                            let e = Self.insert(r.key, r.stats.packets, r.stats.bytes, records: 1, at: home[j - i], into: table)
                            if e < 0 {
                                // A new flow and no room: grow, then go on from this record.
                                i = j
                                full = true
                                break blocks
                            }
                            all[first + j] = e
                            if r.source == .flowMap { fromMap += 1 }
                        }
                        i = blockEnd
                    }
                }
                if full { grow(toHold: 2 * capacity) }
            }
        }
        swap(&entries, &recordEntries)
        recordsFromMap += fromMap
        recordsFromRing += UInt64(records.count) - fromMap
    }

    /// Empties the table. It keeps its capacity (and seed) unless that is
    /// more than eight times what was used: a burst's memory goes with it.
    public mutating func removeAll() {
        if count == 0 && records == 0 { return }
        recordsFromMap = 0
        recordsFromRing = 0
        if recordEntries.capacity > 4 * max(recordEntries.count, 1024) {
            recordEntries = []
        } else {
            recordEntries.removeAll(keepingCapacity: true)
        }
        let n = count
        if !isKnownUniquelyReferenced(&storage) || storage.slots.count > max(minimumSlots, 8 * n) {
            storage = Storage(slotCount: max(minimumSlots, Self.slotCount(for: n)))
            return
        }
        let s = storage.slots
        if n >= s.count / 8 {
            for i in s.indices { s[i].entry = -1 }
        } else {
            for e in storage.info[..<n] { s[Int(e.slot)].entry = -1 }
        }
        storage.count = 0
    }

    /// Records a batch insert reads ahead (see `add(_:)`).
    static let block = 32

    /// Finds or claims the key's slot; the caller made room.
    @inline(__always)
    private static func insert(
        _ key: FlowKey, _ packets: UInt64, _ bytes: UInt64, records: UInt64,
        seed: UInt64, into t: Storage
    ) -> Int32 {
        insert(key, packets, bytes, records: records, at: Int(truncatingIfNeeded: hash(key, seed)) & (t.slots.count - 1), into: t)
    }

    /// The same, from slot `home` (the key's hash, masked); -1 if the key is
    /// new and the table has no room for another flow (nothing changed then).
    @inline(__always)
    private static func insert(
        _ key: FlowKey, _ packets: UInt64, _ bytes: UInt64, records: UInt64, at home: Int,
        into t: Storage
    ) -> Int32 {
        let s = t.slots, mask = s.count - 1
        var i = home
        while true {
            let e = s[i].entry
            if e < 0 {
                if t.count == t.info.count { return -1 }
                let new = Int32(truncatingIfNeeded: t.count)
                s[i] = Slot(key: key, entry: new, packets: packets, bytes: bytes)
                t.info[t.count] = EntryInfo(slot: Int32(truncatingIfNeeded: i), records: records)
                t.count += 1
                return new
            }
            if same(s[i].key, key) {
                s[i].packets &+= packets
                s[i].bytes &+= bytes
                t.info[Int(e)].records &+= records
                return e
            }
            i = (i + 1) & mask
        }
    }

    /// Larger slots for at least `flows` flows; entries keep their indices and order.
    private mutating func grow(toHold flows: Int) {
        let old = storage
        storage = Storage(slotCount: Self.slotCount(for: flows))
        for e in old.info[..<old.count] {
            let s = old.slots[Int(e.slot)]
            _ = Self.insert(s.key, s.packets, s.bytes, records: e.records, seed: seed, into: storage)
        }
    }

    /// The six 8-byte words of a key (addresses, then ifindex and ports, then the bytes).
    @inline(__always)
    static func hash(_ k: FlowKey, _ seed: UInt64) -> UInt64 {
        let m: UInt64 = 0x9E37_79B9_7F4A_7C15
        var h = seed
        h = (h ^ k.source.hi) &* m
        h = (h ^ k.source.lo) &* m
        h = (h ^ k.destination.hi) &* m
        h = (h ^ k.destination.lo) &* m
        h = (h ^ ports(k)) &* m
        h = (h ^ smalls(k)) &* m
        // Multiplying carries only upwards: fold the high bits into the low
        // ones the index uses (the murmur3 finaliser).
        h ^= h >> 33
        h &*= 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        return h
    }

    @inline(__always) static func ports(_ k: FlowKey) -> UInt64 {
        UInt64(k.ifindex) | UInt64(k.sourcePort) << 32 | UInt64(k.destinationPort) << 48
    }

    @inline(__always) static func smalls(_ k: FlowKey) -> UInt64 {
        UInt64(k.direction.rawValue) | UInt64(k.family.rawValue) << 8 | UInt64(k.ipProtocol) << 16
            | UInt64(k.flags.rawValue) << 24
    }

    @inline(__always) static func same(_ a: FlowKey, _ b: FlowKey) -> Bool {
        ((a.source.hi ^ b.source.hi) | (a.source.lo ^ b.source.lo) | (a.destination.hi ^ b.destination.hi)
            | (a.destination.lo ^ b.destination.lo) | (ports(a) ^ ports(b)) | (smalls(a) ^ smalls(b))) == 0
    }
}
