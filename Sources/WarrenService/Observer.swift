public import Foundation
public import Logging
import Prometheus
import Synchronization
public import Warren

/// Follows a worker's job events and turns them into metrics (the library's `JobMetrics`, through
/// swift-metrics), log lines and the record of recent jobs behind `/jobs/{id}`.
public final class JobObserver: Sendable {
    private let metrics: JobMetrics
    private let logger: Logger
    private let state: Mutex<State>

    struct State {
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
        /// With a job-state store: the instance that holds (or held) it.
        public var instance: String?

        enum CodingKeys: String, CodingKey {
            case id, name, priority, status, attempt, error, progress, instance
            case startedAt = "started_at", finishedAt = "finished_at", deadLetterReason = "dead_letter_reason"
        }
    }

    let capacity: Int

    public init(queue: String, handlerNames: Set<String>, recentJobs: Int, logger: Logger) {
        metrics = JobMetrics(queue: queue, handlerNames: handlerNames)
        self.logger = logger
        capacity = recentJobs
        state = Mutex(State())
    }

    /// Consumes `events` until the stream ends.
    public func follow(_ events: AsyncStream<JobEvent>) async {
        for await event in events { observe(event) }
    }

    func observe(_ event: JobEvent) {
        // The metrics keep when each attempt started: its duration, for the log line.
        let duration = metrics.record(event)
        var meta: Logger.Metadata = ["job.id": "\(event.id)", "job.name": "\(event.name)", "job.priority": "\(event.priority.name)"]
        switch event.kind {
        case .enqueued, .progress:
            if case let .progress(percent) = event.kind { update(event) { $0.progress = percent } }
        case let .started(attempt):
            update(event) { summary in
                summary.status = "running"
                summary.attempt = attempt
                summary.startedAt = event.at
                summary.finishedAt = nil
            }
            meta["job.attempt"] = "\(attempt)"
            logger.trace("job started", metadata: meta)
        case .completed:
            update(event) { $0.status = "completed"; $0.finishedAt = event.at; $0.error = nil; $0.progress = 100 }
            if let duration { meta["job.duration_ms"] = "\(Int((duration * 1_000).rounded()))" }
            logger.debug("job completed", metadata: meta)
        case let .failed(attempt, error):
            update(event) { $0.status = "failed"; $0.attempt = attempt; $0.error = error; $0.finishedAt = event.at }
            meta["job.attempt"] = "\(attempt)"
            meta["error"] = "\(error)"
            logger.warning("job attempt failed", metadata: meta)
        case let .timedOut(attempt):
            update(event) { $0.status = "timed_out"; $0.attempt = attempt; $0.error = "timed out"; $0.finishedAt = event.at }
            meta["job.attempt"] = "\(attempt)"
            logger.warning("job attempt timed out", metadata: meta)
        case let .retrying(attempt, at, error):
            update(event) { $0.status = "retrying"; $0.error = error }
            meta["job.attempt"] = "\(attempt)"
            meta["retry_at"] = "\(at.formatted(.iso8601))"
            meta["error"] = "\(error)"
            logger.info("job will be retried", metadata: meta)
        case .cancelled:
            update(event) { $0.status = "cancelled"; $0.finishedAt = event.at }
            logger.info("job cancelled", metadata: meta)
        case let .deadLettered(reason):
            update(event) { $0.status = "dead_lettered"; $0.deadLetterReason = reason.code; $0.error = reason.description; $0.finishedAt = event.at }
            meta["reason"] = "\(reason.code)"
            meta["error"] = "\(reason.description)"
            logger.error("job dead-lettered", metadata: meta)
        }
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

    /// The Prometheus text exposition of every swift-metrics metric of this process, once
    /// `ServiceMetrics.bootstrap()` made Prometheus the backend (empty before).
    public func metricsText() -> String { ServiceMetrics.registry.emitToString() }
}
