#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif
import Synchronization

/// One timer for many deadlines: whoever owns a heap of due dates arms the alarm with the earliest,
/// and the alarm calls `fire` at that time (one sleeping task, re-armed only when an earlier date
/// arrives). `fire` returns the next date to wake at, or nil. No polling loop.
package final class Alarm: Sendable {
    private struct State {
        var scheduled: Date?
        var sleeper: Task<Void, Never>?
        var generation: UInt64 = 0
        var stopped = false
    }
    private let state = Mutex(State())
    private let clock: any WarrenClock
    private let fire: @Sendable (Date) -> Date?

    package init(clock: any WarrenClock, fire: @escaping @Sendable (Date) -> Date?) {
        self.clock = clock
        self.fire = fire
    }

    /// Makes sure the alarm goes off no later than `date`.
    package func arm(at date: Date) {
        let clock = self.clock
        state.withLock { state in
            guard !state.stopped else { return }
            if let scheduled = state.scheduled, scheduled <= date { return }
            state.sleeper?.cancel()
            state.generation &+= 1
            let generation = state.generation
            state.scheduled = date
            state.sleeper = Task { [weak self] in
                do { try await clock.sleep(until: date) } catch { return }
                self?.wake(generation: generation)
            }
        }
    }

    package func stop() {
        state.withLock { state in
            state.stopped = true
            state.sleeper?.cancel()
            state.sleeper = nil
            state.scheduled = nil
        }
    }

    private func wake(generation: UInt64) {
        let current = state.withLock { state -> Bool in
            guard state.generation == generation, !state.stopped else { return false }
            state.scheduled = nil
            state.sleeper = nil
            return true
        }
        guard current else { return }
        if let next = fire(clock.now()) { arm(at: next) }
    }
}
