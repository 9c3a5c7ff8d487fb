public import CoreMetrics
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization

/// Job metrics through swift-metrics, from a broker's job events: whatever backend the process
/// bootstrapped (`warren serve` bootstraps Prometheus) receives them; with none, they cost little
/// and go nowhere.
///
/// - `warren_jobs_total{queue,priority,name,outcome}`: attempts by how they ended (`completed`,
///   `failed`, `timed_out`, `cancelled`, `dead_lettered`)
/// - `warren_retries_total{queue,name}`: retries scheduled
/// - `warren_dead_letters_total{queue,reason}`: jobs dead-lettered, by reason code
/// - `warren_jobs_in_flight{queue}`: jobs running now (a meter)
/// - `warren_job_duration_seconds{queue,name}`: how long handlers ran (a timer)
///
/// (`warren_broker_reconnects_total{queue}` comes from the AMQP broker.) The `name` dimension is
/// a handler name of this worker or `other`, so producers cannot multiply the series.
public final class JobMetrics: Sendable {
    public let queue: String
    private let handlerNames: Set<String>
    private let factory: any MetricsFactory
    private let inFlight: Meter
    /// When each running attempt started, for its duration and the in-flight count.
    private let started = Mutex<[JobID: Date]>([:])

    public init(queue: String, handlerNames: Set<String>, factory: any MetricsFactory = MetricsSystem.factory) {
        self.queue = queue
        self.handlerNames = handlerNames
        self.factory = factory
        inFlight = Meter(label: "warren_jobs_in_flight", dimensions: [("queue", queue)], factory: factory)
        inFlight.set(0)
    }

    /// Records events until the stream ends.
    public func follow(_ events: AsyncStream<JobEvent>) async {
        for await event in events { record(event) }
    }

    /// Records one event. Returns how long the attempt it ends ran, in seconds (nil if it ends
    /// none, or none was seen starting).
    @discardableResult
    public func record(_ event: JobEvent) -> Double? {
        switch event.kind {
        case .enqueued, .progress:
            return nil
        case .started:
            let running = started.withLock { started in
                started[event.id] = event.at
                return started.count
            }
            inFlight.set(running)
            return nil
        case .completed:
            return finish(event, "completed")
        case .failed:
            return finish(event, "failed")
        case .timedOut:
            return finish(event, "timed_out")
        case .cancelled:
            return finish(event, "cancelled")
        case .retrying:
            Counter(label: "warren_retries_total", dimensions: [("queue", queue), ("name", nameLabel(event.name))], factory: factory)
                .increment()
            return nil
        case let .deadLettered(reason):
            Counter(label: "warren_dead_letters_total", dimensions: [("queue", queue), ("reason", reason.code)], factory: factory)
                .increment()
            return finish(event, "dead_lettered")
        }
    }

    private func nameLabel(_ name: String) -> String { handlerNames.contains(name) ? name : "other" }

    /// Counts the outcome; ends the running attempt, if one was running: its duration (returned)
    /// and the in-flight count.
    private func finish(_ event: JobEvent, _ outcome: String) -> Double? {
        Counter(
            label: "warren_jobs_total",
            dimensions: [("queue", queue), ("priority", event.priority.name), ("name", nameLabel(event.name)), ("outcome", outcome)],
            factory: factory
        ).increment()
        let (began, running) = started.withLock { started in (started.removeValue(forKey: event.id), started.count) }
        guard let began else { return nil }
        inFlight.set(running)
        let seconds = event.at.timeIntervalSince(began)
        let nanoseconds = max(0, (seconds * 1e9).rounded())
        Timer(label: "warren_job_duration_seconds", dimensions: [("queue", queue), ("name", nameLabel(event.name))], factory: factory)
            .recordNanoseconds(nanoseconds < 9.2e18 ? Int64(nanoseconds) : .max)
        return seconds
    }
}
