public import Foundation
import Synchronization

/// The wall clock Warren reads and sleeps on. Injected so tests can move time by hand.
public protocol WarrenClock: Sendable {
    func now() -> Date
    /// Sleeps until `date`; throws `CancellationError` when the task is cancelled.
    func sleep(until date: Date) async throws
}

/// The real clock.
public struct SystemClock: WarrenClock {
    public init() {}
    public func now() -> Date { Date() }
    public func sleep(until date: Date) async throws {
        // A day at a time: `Duration.seconds` traps on an interval past Int64 seconds (a date
        // far in the future, or infinite), and such a date is simply never reached. NaN is now.
        while true {
            let seconds = date.timeIntervalSinceNow
            guard seconds > 0 else { return try Task.checkCancellation() }
            try await Task.sleep(for: .seconds(min(seconds, 86_400)))
        }
    }
}

/// A clock that moves only when told to. Sleepers wake when `advance(by:)` passes their time.
public final class ManualClock: WarrenClock {
    private struct Sleeper {
        let id: UInt64
        let until: Date
        let continuation: CheckedContinuation<Void, any Error>
    }
    private struct State {
        var now: Date
        var sleepers: [Sleeper] = []
        var nextID: UInt64 = 0
    }
    private let state: Mutex<State>

    public init(start: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        state = Mutex(State(now: start))
    }

    public func now() -> Date { state.withLock { $0.now } }

    /// How many tasks are sleeping on this clock (lets a test wait until a timer is armed).
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    public func advance(by interval: Duration) {
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        let due: [Sleeper] = state.withLock { state in
            state.now = state.now.addingTimeInterval(seconds)
            let now = state.now
            let due = state.sleepers.filter { $0.until <= now }
            state.sleepers.removeAll { $0.until <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    public func sleep(until date: Date) async throws {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: (any Error)?? = state.withLock { state in
                    if Task.isCancelled { return .some(CancellationError()) }
                    if date <= state.now { return .some(nil) }
                    state.sleepers.append(Sleeper(id: id, until: date, continuation: continuation))
                    return .none
                }
                switch resumeNow {
                case .none: break
                case .some(nil): continuation.resume()
                case let .some(.some(error)): continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            let sleeper = state.withLock { state -> Sleeper? in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.sleepers.remove(at: index)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }
}

extension Duration {
    /// The duration in seconds, as a `TimeInterval`.
    public var timeInterval: TimeInterval {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
