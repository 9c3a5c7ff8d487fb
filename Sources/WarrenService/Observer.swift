public import Foundation
public import Logging
import Prometheus
import Synchronization
public import Warren

/// Follows a worker's job events and turns them into Prometheus metrics, log lines and the record
/// of recent jobs behind `/jobs/{id}`.
public final class JobObserver: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let queue: String
    private let knownNames: Set<String>
    private let logger: Logger
    private let state: Mutex<State>
    private let inFlight: Gauge
    private let reconnectCounter: Gauge

    struct State {
        var started: [JobID: Date] = [:]
        var recent: [JobID: JobSummary] = [:]
        var order: [JobID] = []
        var head = 0
    }

    /// What `/jobs/{id}` says about a job this worker has seen.
    public struct JobSummary: Sendable, Codable, Equatable {
        public var id: String
        public var name: String
        public var priority: String
        public var status: String
        public var attempt: Int
        public var startedAt: Date?
        public var finishedAt: Date?
        public var error: String?
        public var deadLetterReason: String?
        public var progress: Double?

        enum CodingKeys: String, CodingKey {
            case id, name, priority, status, attempt, error, progress
            case startedAt = "started_at", finishedAt = "finished_at", deadLetterReason = "dead_letter_reason"
        }
    }

    let capacity: Int
    private let reconnects: @Sendable () -> Int

    /// `reconnects` is read when metrics are scraped.
    public init(
        queue: String, handlerNames: Set<String>, recentJobs: Int, logger: Logger, reconnects: @escaping @Sendable () -> Int = { 0 }
    ) {
        self.reconnects = reconnects
        self.queue = queue
        knownNames = handlerNames
        self.logger = logger
        capacity = recentJobs
        state = Mutex(State())
        inFlight = registry.makeGauge(
            descriptor: .init(namespace: "warren", metricName: "jobs", unitName: "in_flight", helpText: "Jobs running now."),
            labels: [("queue", queue)])
        reconnectCounter = registry.makeGauge(
            descriptor: .init(namespace: "warren", metricName: "broker_reconnects", unitName: "total", helpText: "Times the broker connection was lost and set up again."),
            labels: [("queue", queue)])
    }

    /// Consumes `events` until the stream ends.
    public func follow(_ events: AsyncStream<JobEvent>) async {
        for await event in events { observe(event) }
    }

    /// Metric label for a job name: registered names only, so producers cannot explode the series.
    private func nameLabel(_ name: String) -> String { knownNames.contains(name) ? name : "other" }

    private func count(_ outcome: String, _ event: JobEvent) {
        registry.makeCounter(
            descriptor: .init(namespace: "warren", metricName: "jobs", unitName: "total", helpText: "Job attempts by how they ended."),
            labels: [("queue", queue), ("priority", event.priority.name), ("name", nameLabel(event.name)), ("outcome", outcome)]
        ).increment()
    }

    func observe(_ event: JobEvent) {
        var meta: Logger.Metadata = ["job.id": "\(event.id)", "job.name": "\(event.name)", "job.priority": "\(event.priority.name)"]
        switch event.kind {
        case .enqueued, .progress:
            if case let .progress(percent) = event.kind { update(event) { $0.progress = percent } }
        case let .started(attempt):
            inFlight.increment()
            state.withLock { $0.started[event.id] = event.at }
            update(event) { summary in
                summary.status = "running"
                summary.attempt = attempt
                summary.startedAt = event.at
                summary.finishedAt = nil
            }
            meta["job.attempt"] = "\(attempt)"
            logger.trace("job started", metadata: meta)
        case .completed:
            let duration = finish(event)
            count("completed", event)
            update(event) { $0.status = "completed"; $0.finishedAt = event.at; $0.error = nil; $0.progress = 100 }
            if let duration { meta["job.duration_ms"] = "\(Int((duration * 1_000).rounded()))" }
            logger.debug("job completed", metadata: meta)
        case let .failed(attempt, error):
            _ = finish(event)
            count("failed", event)
            update(event) { $0.status = "failed"; $0.attempt = attempt; $0.error = error; $0.finishedAt = event.at }
            meta["job.attempt"] = "\(attempt)"
            meta["error"] = "\(error)"
            logger.warning("job attempt failed", metadata: meta)
        case let .timedOut(attempt):
            _ = finish(event)
            count("timed_out", event)
            update(event) { $0.status = "timed_out"; $0.attempt = attempt; $0.error = "timed out"; $0.finishedAt = event.at }
            meta["job.attempt"] = "\(attempt)"
            logger.warning("job attempt timed out", metadata: meta)
        case let .retrying(attempt, at, error):
            registry.makeCounter(
                descriptor: .init(namespace: "warren", metricName: "retries", unitName: "total", helpText: "Retries scheduled."),
                labels: [("queue", queue), ("name", nameLabel(event.name))]
            ).increment()
            update(event) { $0.status = "retrying"; $0.error = error }
            meta["job.attempt"] = "\(attempt)"
            meta["retry_at"] = "\(at.formatted(.iso8601))"
            meta["error"] = "\(error)"
            logger.info("job will be retried", metadata: meta)
        case .cancelled:
            _ = finish(event)
            count("cancelled", event)
            update(event) { $0.status = "cancelled"; $0.finishedAt = event.at }
            logger.info("job cancelled", metadata: meta)
        case let .deadLettered(reason):
            _ = finish(event)
            count("dead_lettered", event)
            registry.makeCounter(
                descriptor: .init(namespace: "warren", metricName: "dead_letters", unitName: "total", helpText: "Jobs dead-lettered, by reason."),
                labels: [("queue", queue), ("reason", reason.code)]
            ).increment()
            update(event) { $0.status = "dead_lettered"; $0.deadLetterReason = reason.code; $0.error = reason.description; $0.finishedAt = event.at }
            meta["reason"] = "\(reason.code)"
            meta["error"] = "\(reason.description)"
            logger.error("job dead-lettered", metadata: meta)
        }
    }

    /// Ends a running attempt: in-flight gauge and duration histogram. Returns the duration.
    private func finish(_ event: JobEvent) -> Double? {
        guard let started = state.withLock({ $0.started.removeValue(forKey: event.id) }) else { return nil }
        inFlight.decrement()
        let seconds = event.at.timeIntervalSince(started)
        registry.makeDurationHistogram(
            descriptor: .init(namespace: "warren", metricName: "job_duration", unitName: "seconds", helpText: "How long handlers ran."),
            labels: [("queue", queue), ("name", nameLabel(event.name))],
            buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .milliseconds(500),
                      .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300)]
        ).record(.milliseconds(Int64((seconds * 1_000).rounded())))
        return seconds
    }

    private func update(_ event: JobEvent, _ change: (inout JobSummary) -> Void) {
        guard capacity > 0 else { return }
        state.withLock { state in
            if state.recent[event.id] == nil {
                // Bounded: the oldest job is forgotten when a new one arrives at capacity.
                if state.order.count < capacity {
                    state.order.append(event.id)
                } else {
                    state.recent[state.order[state.head]] = nil
                    state.order[state.head] = event.id
                    state.head = (state.head + 1) % capacity
                }
                state.recent[event.id] = JobSummary(
                    id: event.id.rawValue, name: event.name, priority: event.priority.name, status: "queued", attempt: 1)
            }
            change(&state.recent[event.id]!)
        }
    }

    /// A job this worker has seen recently.
    public func summary(_ id: JobID) -> JobSummary? { state.withLock { $0.recent[id] } }

    /// The Prometheus text exposition.
    public func metricsText() -> String {
        reconnectCounter.set(Double(reconnects()))
        return registry.emitToString()
    }
}
