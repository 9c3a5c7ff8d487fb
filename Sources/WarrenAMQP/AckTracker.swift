import DequeModule

/// Which deliveries of one channel are finished, and the fewest acks that tell the broker so: one
/// `multiple = true` ack up to the highest contiguous finished tag, and single acks for tags that
/// stayed out of order for `roundsBeforeAckingAlone` flushes (so a long job at the head never holds
/// the prefetch window).
///
/// Several workers finish jobs a little out of order all the time (a thread preempted mid-job holds
/// its tag for a scheduler time slice); acking alone after one round turned those short gaps into
/// 5-14 single acks per 100 messages, each a frame the broker must handle. A few rounds (a few
/// milliseconds while messages stream, a round being a batch of acks or 2 ms) let the gap close.
struct AckTracker {
    static let roundsBeforeAckingAlone = 4

    private var outstanding = Deque<UInt64>()
    /// Finished tags not acked yet, and how many flushes each has waited behind an unfinished one.
    private var finished: [UInt64: Int] = [:]
    private var ackedAlone = Set<UInt64>()

    var isEmpty: Bool { outstanding.isEmpty }
    var hasDeferred: Bool { !finished.isEmpty }

    mutating func delivered(_ tag: UInt64) { outstanding.append(tag) }

    /// Marks a delivery to be acked.
    mutating func finish(_ tag: UInt64) { finished[tag] = 0 }

    /// Marks a delivery settled by other means (rejected, handed back): never ack it.
    mutating func settledElsewhere(_ tag: UInt64) { ackedAlone.insert(tag) }

    /// The acks to send now: `(tag, multiple)`.
    mutating func flush() -> [(tag: UInt64, multiple: Bool)] {
        var acks: [(tag: UInt64, multiple: Bool)] = []
        var upTo: UInt64?
        while let first = outstanding.first {
            if finished.removeValue(forKey: first) != nil {
                upTo = first
            } else if ackedAlone.remove(first) == nil {
                break
            }
            outstanding.removeFirst()
        }
        if let upTo { acks.append((upTo, true)) }
        for (tag, rounds) in finished where rounds == Self.roundsBeforeAckingAlone {
            acks.append((tag, false))
            ackedAlone.insert(tag)
        }
        for (tag, multiple) in acks where !multiple { finished[tag] = nil }
        for index in finished.indices { finished.values[index] += 1 }
        return acks
    }

    mutating func reset() { self = AckTracker() }
}
