/// Job ids remembered compactly, the oldest forgotten first once `capacity` are held: each id is
/// kept as its 64-bit hash with one byte of its own (a finished job's status), about 25 bytes an
/// id instead of the whole job. Two ids share a hash with a chance of about 2^-64 per pair: with
/// 100,000 ids held, a new id is taken for a known one about once in 10^14 lookups.
package struct RecentIDs {
    private struct Entry {
        var value: UInt8
        /// Places in `ring` holding this hash (more than one after a remove and a new insert; never
        /// more than the ring has).
        var places: UInt32
        var present: Bool
    }
    private var entries: [UInt64: Entry] = [:]
    private var ring: [UInt64] = []
    private var head = 0
    package let capacity: Int

    package init(capacity: Int) {
        self.capacity = max(0, capacity)
    }

    private static func key(_ id: JobID) -> UInt64 { UInt64(bitPattern: Int64(id.hashValue)) }

    package var isEmpty: Bool { entries.isEmpty }
    package var count: Int { entries.values.count { $0.present } }

    package func contains(_ id: JobID) -> Bool { value(id) != nil }

    /// The byte kept with the id, if it is remembered.
    package func value(_ id: JobID) -> UInt8? {
        guard !entries.isEmpty, let entry = entries[Self.key(id)], entry.present else { return nil }
        return entry.value
    }

    /// Remembers the id (or updates its byte if it is remembered already). One hash lookup, and one
    /// more when the oldest id leaves: every finished job passes here.
    package mutating func insert(_ id: JobID, value: UInt8 = 0) {
        guard capacity > 0 else { return }
        let key = Self.key(id)
        guard Self.note(&entries[key, default: Entry(value: value, places: 0, present: false)], value) else { return }
        if ring.count < capacity {
            ring.append(key)
        } else {
            evict(ring[head])
            ring[head] = key
            head = (head + 1) % capacity
        }
    }

    /// Sets the entry's byte; returns whether it takes a new place in the ring.
    private static func note(_ entry: inout Entry, _ value: UInt8) -> Bool {
        entry.value = value
        guard !entry.present else { return false }
        entry.present = true
        entry.places += 1
        return true
    }

    /// Forgets the id at once. Returns whether it was remembered.
    @discardableResult
    package mutating func remove(_ id: JobID) -> Bool {
        let key = Self.key(id)
        guard var entry = entries[key], entry.present else { return false }
        entry.present = false
        entries[key] = entry
        return true
    }

    private mutating func evict(_ key: UInt64) {
        guard let index = entries.index(forKey: key) else { return }
        if entries.values[index].places > 1 {
            entries.values[index].places -= 1
        } else {
            entries.remove(at: index)
        }
    }
}
