import DequeModule

/// Which deliveries of one channel are finished, and the fewest acks that tell the broker so: one
/// `multiple = true` ack up to the highest contiguous finished tag, and single acks for tags that
/// stayed out of order for a whole round (so a long job at the head never holds the prefetch window).
struct AckTracker {
    private var outstanding = Deque<UInt64>()
    private var finished = Set<UInt64>()
    private var ackedAlone = Set<UInt64>()
    private var waitedOneRound = Set<UInt64>()

    var isEmpty: Bool { outstanding.isEmpty }
    var hasDeferred: Bool { !finished.isEmpty }

    mutating func delivered(_ tag: UInt64) { outstanding.append(tag) }

    /// Marks a delivery to be acked.
    mutating func finish(_ tag: UInt64) { finished.insert(tag) }

    /// Marks a delivery settled by other means (rejected, handed back): never ack it.
    mutating func settledElsewhere(_ tag: UInt64) { ackedAlone.insert(tag) }

    /// The acks to send now: `(tag, multiple)`.
    mutating func flush() -> [(tag: UInt64, multiple: Bool)] {
        var acks: [(tag: UInt64, multiple: Bool)] = []
        var upTo: UInt64?
        while let first = outstanding.first {
            if finished.remove(first) != nil {
                upTo = first
            } else if ackedAlone.remove(first) == nil {
                break
            }
            outstanding.removeFirst()
        }
        if let upTo { acks.append((upTo, true)) }
        for tag in finished where waitedOneRound.contains(tag) {
            acks.append((tag, false))
            ackedAlone.insert(tag)
        }
        finished.subtract(ackedAlone)
        waitedOneRound = finished
        return acks
    }

    mutating func reset() { self = AckTracker() }
}
