#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HeapModule

/// Per-job timeouts for the whole pool: one heap, one alarm. Entries of jobs that ended first are
/// skipped when due and compacted away when they pile up, so the heap stays proportional to the
/// jobs in flight whatever the timeouts are.
final class Timeouts: Sendable {
    private struct Entry: Comparable {
        let at: Date
        let sequence: UInt64
        let stop: StopSignal
        static func < (lhs: Entry, rhs: Entry) -> Bool { (lhs.at, lhs.sequence) < (rhs.at, rhs.sequence) }
        static func == (lhs: Entry, rhs: Entry) -> Bool { lhs.sequence == rhs.sequence }
    }
    private struct State {
        var heap = Heap<Entry>()
        var sequence: UInt64 = 0
    }
    private let state = Locked(State())
    private let alarm: Alarm

    init(clock: any WarrenClock) {
        let state = self.state
        alarm = Alarm(clock: clock) { now in
            let (due, next) = state.withLock { state -> ([StopSignal], Date?) in
                var due: [StopSignal] = []
                while let entry = state.heap.min, entry.at <= now {
                    _ = state.heap.removeMin()
                    if !entry.stop.isSettled { due.append(entry.stop) }
                }
                return (due, state.heap.min?.at)
            }
            for stop in due { stop.fire(.timedOut) }
            return next
        }
    }

    /// Fires `stop` with `.timedOut` at `date` unless the attempt is settled by then.
    func schedule(_ stop: StopSignal, at date: Date, inFlight: Int) {
        state.withLock { state in
            if state.heap.count > 2 * inFlight + 1024 {
                state.heap = Heap(state.heap.unordered.filter { !$0.stop.isSettled })
            }
            state.sequence &+= 1
            state.heap.insert(Entry(at: date, sequence: state.sequence, stop: stop))
        }
        alarm.arm(at: date)
    }

    func stop() { alarm.stop() }
}
