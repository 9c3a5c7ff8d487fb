/// Job ids remembered compactly, the oldest forgotten first once `capacity` are held: each id is
/// kept as its 64-bit hash with one byte of its own (a finished job's status), about 40 bytes an
/// id at most instead of the whole job. Two ids share a hash with a chance of about 2^-64 per pair:
/// with 100,000 ids held, a new id is taken for a known one about once in 10^14 lookups.
///
/// Every finished job passes here (and every published one, in a transport's window), so the table
/// is its own: open addressing over the hashes, which are already well mixed, instead of a
/// `Dictionary` hashing each of them again. It grows by doubling up to twice the capacity, so an
/// idle worker does not hold a table sized for its whole window.
package struct RecentIDs {
    private struct Slot {
        /// The id's hash; 0 marks an empty slot (a hash of 0 is kept as 1).
        var key: UInt64 = 0
        /// Places in `ring` holding this hash (more than one after a remove and a new insert; never
        /// more than the ring has).
        var places: UInt32 = 0
        var value: UInt8 = 0
        var present = false
    }

    private var slots: [Slot] = []
    /// `slots.count - 1` (a power of two minus one), and the shift that takes a hash's top bits.
    private var mask = 0
    private var shift: UInt64 = 64
    private var occupied = 0
    private var presentCount = 0
    private var ring: [UInt64] = []
    private var head = 0
    package let capacity: Int

    package init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    private static func key(_ id: JobID) -> UInt64 { max(1, UInt64(bitPattern: Int64(id.hashValue))) }

    package var isEmpty: Bool { occupied == 0 }
    package var count: Int { presentCount }

    package func contains(_ id: JobID) -> Bool { value(id) != nil }

    /// The byte kept with the id, if it is remembered.
    package func value(_ id: JobID) -> UInt8? {
        guard occupied > 0, let index = find(Self.key(id)), slots[index].present else { return nil }
        return slots[index].value
    }

    /// Remembers the id (or updates its byte if it is remembered already). One probe, and one more
    /// when the oldest id leaves.
    package mutating func insert(_ id: JobID, value: UInt8 = 0) {
        guard capacity > 0 else { return }
        let key = Self.key(id)
        let index = slot(for: key)
        slots[index].value = value
        guard !slots[index].present else { return }
        slots[index].present = true
        slots[index].places += 1
        presentCount += 1
        if ring.count < capacity {
            ring.append(key)
        } else {
            evict(ring[head])
            ring[head] = key
            head = (head + 1) % capacity
        }
    }

    /// Forgets the id at once. Returns whether it was remembered.
    @discardableResult
    package mutating func remove(_ id: JobID) -> Bool {
        guard occupied > 0, let index = find(Self.key(id)), slots[index].present else { return false }
        slots[index].present = false
        presentCount -= 1
        return true
    }

    // MARK: The table

    private func home(_ key: UInt64) -> Int { Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift) }

    private func find(_ key: UInt64) -> Int? {
        var index = home(key)
        while slots[index].key != 0 {
            if slots[index].key == key { return index }
            index = (index + 1) & mask
        }
        return nil
    }

    /// The slot holding `key`, taken (empty: not present, no places) if it had none.
    private mutating func slot(for key: UInt64) -> Int {
        if (occupied + 1) * 2 > slots.count { grow() }
        var index = home(key)
        while slots[index].key != 0 {
            if slots[index].key == key { return index }
            index = (index + 1) & mask
        }
        slots[index].key = key
        occupied += 1
        return index
    }

    private mutating func grow() {
        let old = slots
        let size = max(16, slots.count * 2)
        slots = Array(repeating: Slot(), count: size)
        mask = size - 1
        shift = UInt64(64 - size.trailingZeroBitCount)
        for slot in old where slot.key != 0 {
            var index = home(slot.key)
            while slots[index].key != 0 { index = (index + 1) & mask }
            slots[index] = slot
        }
    }

    /// One place of `key` left the ring: the hash goes with its last place.
    private mutating func evict(_ key: UInt64) {
        guard let index = find(key) else { return }
        if slots[index].places > 1 {
            slots[index].places -= 1
            return
        }
        if slots[index].present { presentCount -= 1 }
        delete(at: index)
    }

    /// Empties a slot and moves later slots of the same probe run back (no tombstones, so lookups
    /// stay short however long the worker runs).
    private mutating func delete(at index: Int) {
        var hole = index
        var next = index
        while true {
            next = (next + 1) & mask
            guard slots[next].key != 0 else { break }
            // The slot may fill the hole unless its home lies after the hole (cyclically).
            if (next - home(slots[next].key)) & mask >= (next - hole) & mask {
                slots[hole] = slots[next]
                hole = next
            }
        }
        slots[hole] = Slot()
        occupied -= 1
    }
}
