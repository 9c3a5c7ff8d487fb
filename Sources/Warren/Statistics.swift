#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Histogram

/// A snapshot of a queue's counters.
public struct QueueStatistics: Sendable, Equatable {
    /// Jobs in each status now (terminal statuses: within the finished window).
    public var byStatus: [JobStatus: Int]
    /// Ready jobs waiting for a worker, by priority.
    public var depthByPriority: [JobPriority: Int]
    public var inFlight: Int
    /// Totals since start.
    public var enqueued: Int
    public var started: Int
    public var completed: Int
    public var failedAttempts: Int
    public var timedOutAttempts: Int
    public var retried: Int
    public var cancelled: Int
    public var deadLettered: Int
    /// How long attempts ran (completed ones), and how long jobs waited from ready to start.
    public var runDuration: DurationSummary
    public var waitDuration: DurationSummary

    public var depth: Int { depthByPriority.values.reduce(0, +) }
}

/// Percentiles of a set of durations, in seconds.
public struct DurationSummary: Sendable, Equatable {
    public var count: Int
    public var mean: Double
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var max: Double

    public static let empty = DurationSummary(count: 0, mean: 0, p50: 0, p90: 0, p99: 0, max: 0)
}

/// Records durations with microsecond resolution and three significant digits (HdrHistogram).
struct DurationRecorder {
    private var histogram = Histogram<UInt64>(highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)

    mutating func record(seconds: Double) {
        let micros = UInt64(Swift.max(0, Swift.min(seconds * 1e6, 3_600_000_000)))
        _ = histogram.record(micros)
    }

    var summary: DurationSummary {
        guard histogram.totalCount > 0 else { return .empty }
        func seconds(_ micros: UInt64) -> Double { Double(micros) / 1e6 }
        return DurationSummary(
            count: Int(histogram.totalCount),
            mean: histogram.mean / 1e6,
            p50: seconds(histogram.valueAtPercentile(50)),
            p90: seconds(histogram.valueAtPercentile(90)),
            p99: seconds(histogram.valueAtPercentile(99)),
            max: seconds(histogram.max))
    }
}
