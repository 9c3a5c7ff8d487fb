#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Why a job was refused at submit. Nothing of a refused batch is enqueued.
public enum EnqueueRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// A job with this id is queued, running or finished recently (inside the dedup window).
    case duplicate(JobID)
    /// The queue holds `capacity` unfinished jobs: back-pressure. Try again later.
    case queueFull(capacity: Int)
    /// `job` depends on an id the queue does not know.
    case unknownDependency(job: JobID, dependency: JobID)
    /// The jobs' dependencies form a cycle (listed in order).
    case dependencyCycle([JobID])
    /// The job itself is not valid (empty name, negative retries, progress out of range …).
    case invalid(JobID, String)
    /// The broker is closed.
    case closed
    /// The broker could not take the job (unreachable, or it refused the message).
    case unavailable(String)

    public var description: String {
        switch self {
        case let .duplicate(id): "job \(id) is already known (queued, running or finished recently); not enqueued again"
        case let .queueFull(capacity): "queue is full (\(capacity) unfinished jobs); retry later"
        case let .unknownDependency(job, dependency): "job \(job) depends on unknown job \(dependency)"
        case let .dependencyCycle(cycle): "dependency cycle: \(cycle.map(\.rawValue).joined(separator: " → "))"
        case let .invalid(id, why): "job \(id) is invalid: \(why)"
        case .closed: "the broker is closed"
        case let .unavailable(why): "the broker could not take the job: \(why)"
        }
    }
}

/// How a job ended, for whoever waits on it.
public enum JobOutcome: Sendable, Equatable {
    case completed(Data)
    case cancelled
    case deadLettered(DeadLetterReason, errors: [AttemptError])
}

/// The error `JobHandle.result()` throws when the job did not complete.
public enum JobFailure: Error, Sendable, Equatable, CustomStringConvertible {
    case cancelled(JobID)
    case deadLettered(JobID, DeadLetterReason, errors: [AttemptError])
    /// The result came back but does not decode as the expected output type.
    case undecodableResult(JobID, String)
    /// The job is not known (never submitted, or it left the finished window).
    case unknownJob(JobID)

    public var description: String {
        switch self {
        case let .cancelled(id): "job \(id) was cancelled"
        case let .deadLettered(id, reason, _): "job \(id) was dead-lettered: \(reason)"
        case let .undecodableResult(id, why): "job \(id) result does not decode: \(why)"
        case let .unknownJob(id): "job \(id) is not known"
        }
    }
}

/// What a worker reports at the end of an attempt.
public enum AttemptOutcome: Sendable, Equatable {
    case completed(Data)
    case failed(String)
    case timedOut
    /// The handler stopped because the job was cancelled.
    case cancelled
    /// The job can never succeed as it is (unknown name, payload does not decode): dead-letter now.
    case rejected(DeadLetterReason)
    /// The worker stopped the handler before it ended (it shut down past its grace period): not
    /// the job's fault, so the attempt does not count. The job runs again at once, same attempt.
    case interrupted
}

/// What `cancel` did.
public enum CancelResult: Sendable, Equatable {
    /// The job had not started; it will never run.
    case cancelled
    /// The job is running; its handler has been asked to stop and the job will end `cancelled`.
    case cancelling
    /// Too late: the job already ended.
    case alreadyFinished(JobStatus)
    case unknown
}

/// A job lifecycle event.
public struct JobEvent: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case enqueued
        case started(attempt: Int)
        case progress(Double)
        case retrying(attempt: Int, at: Date, error: String)
        case completed
        case failed(attempt: Int, error: String)
        case timedOut(attempt: Int)
        case cancelled
        case deadLettered(DeadLetterReason)
    }

    public let kind: Kind
    public let id: JobID
    public let name: String
    public let priority: JobPriority
    public let at: Date

    public init(_ kind: Kind, id: JobID, name: String, priority: JobPriority, at: Date) {
        self.kind = kind
        self.id = id
        self.name = name
        self.priority = priority
        self.at = at
    }

    /// The event's kind as a short word: enqueued, started, progress, retrying, completed, failed,
    /// timed_out, cancelled, dead_lettered.
    public var label: String {
        switch kind {
        case .enqueued: "enqueued"
        case .started: "started"
        case .progress: "progress"
        case .retrying: "retrying"
        case .completed: "completed"
        case .failed: "failed"
        case .timedOut: "timed_out"
        case .cancelled: "cancelled"
        case .deadLettered: "dead_lettered"
        }
    }

    /// True for the events after which the job never changes again.
    public var isTerminal: Bool {
        switch kind {
        case .completed, .cancelled, .deadLettered: true
        default: false
        }
    }

    public var description: String { "\(label) \(name) \(id) [\(priority)]" }
}
