#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

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

extension Duration {
    /// The duration in seconds, as a `TimeInterval`.
    package var timeInterval: TimeInterval {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    /// Whole milliseconds (the rest dropped), saturating at `Int64`'s range.
    package var wholeMilliseconds: Int64 {
        let (millis, overflow) = components.seconds.multipliedReportingOverflow(by: 1_000)
        if overflow { return components.seconds < 0 ? .min : .max }
        let (sum, sumOverflow) = millis.addingReportingOverflow(components.attoseconds / 1_000_000_000_000_000)
        return sumOverflow ? (millis < 0 ? .min : .max) : sum
    }
}
