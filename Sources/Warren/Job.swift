#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// A unit of work: what to run (`name` selects the handler), its input and the rules it runs by.
///
/// `payload` holds the job's input as JSON bytes, exactly as they travel on the wire.
public struct Job: Sendable, Identifiable {
    public let id: JobID
    /// The job's type: selects the handler.
    public let name: String
    /// The input, as JSON.
    public var payload: Data
    public var priority: JobPriority
    public var createdAt: Date
    /// The job becomes ready no earlier than this (delayed and scheduled jobs).
    public var notBefore: Date?
    /// A job that has not started by this time is dead-lettered with reason `deadline`, never run.
    public var deadline: Date?
    /// The longest one attempt may run; the handler is cancelled past it.
    public var timeout: Duration?
    /// How many times a failed attempt is retried before the job is dead-lettered.
    public var maxRetries: Int
    /// 1 for the first attempt.
    public var attempt: Int
    /// Jobs that must complete before this one is ready.
    public var dependencies: [JobID]
    /// What a worker group must offer to run this job.
    public var requiredCapabilities: Set<String>
    /// Jobs with the same affinity key prefer the same worker group (affinity routing).
    public var affinity: String?
    public var metadata: [String: String]

    public package(set) var status: JobStatus
    /// 0 to 100.
    public internal(set) var progress: Double
    /// The successful result, as JSON.
    public internal(set) var result: Data?
    /// Every failed attempt, oldest first (carried in the message from attempt to attempt).
    public var errors: [AttemptError]
    public internal(set) var deadLetterReason: DeadLetterReason?
    public internal(set) var startedAt: Date?
    public internal(set) var finishedAt: Date?

    public init(
        id: JobID = .random(),
        name: String,
        payload: Data = Data("{}".utf8),
        priority: JobPriority = .normal,
        createdAt: Date = Date(),
        notBefore: Date? = nil,
        deadline: Date? = nil,
        timeout: Duration? = nil,
        maxRetries: Int = 3,
        attempt: Int = 1,
        dependencies: [JobID] = [],
        requiredCapabilities: Set<String> = [],
        affinity: String? = nil,
        metadata: [String: String] = [:]
    ) {
        self.id = id
        self.name = name
        self.payload = payload
        self.priority = priority
        self.createdAt = createdAt
        self.notBefore = notBefore
        self.deadline = deadline
        self.timeout = timeout
        self.maxRetries = maxRetries
        self.attempt = attempt
        self.dependencies = dependencies
        self.requiredCapabilities = requiredCapabilities
        self.affinity = affinity
        self.metadata = metadata
        self.status = .pending
        self.progress = 0
        self.result = nil
        self.errors = []
        self.deadLetterReason = nil
        self.startedAt = nil
        self.finishedAt = nil
    }

    /// Moves the job to `next`, or throws if the status machine forbids it.
    public mutating func transition(to next: JobStatus) throws(IllegalTransition) {
        guard status.canMove(to: next) else {
            throw IllegalTransition(job: id, from: status, to: next)
        }
        status = next
    }
}

/// One failed attempt.
public struct AttemptError: Sendable, Codable, Equatable, CustomStringConvertible {
    public var attempt: Int
    public var message: String
    public var at: Date
    public var timedOut: Bool

    public init(attempt: Int, message: String, at: Date, timedOut: Bool = false) {
        self.attempt = attempt
        self.message = message
        self.at = at
        self.timedOut = timedOut
    }

    public var description: String { "attempt \(attempt): \(message)" }
}

/// Why a job was dead-lettered. Each reason says what a person can do about it.
public enum DeadLetterReason: Error, Sendable, Equatable, CustomStringConvertible {
    /// Every allowed attempt failed.
    case retriesExhausted(attempts: Int, lastError: String)
    /// The deadline passed before the job started.
    case deadline(Date)
    /// A dependency ended without completing.
    case dependencyFailed(JobID, status: JobStatus)
    /// No handler is registered under the job's name.
    case unknownJobName(String)
    /// The payload does not decode as the handler's input.
    case undecodablePayload(String)
    /// The message could not be read as a job at all (malformed envelope, oversized, bad headers).
    case malformedMessage(String)
    /// No worker group offers the capabilities the job requires.
    case noCapableWorker(required: [String])
    /// The handler refused the job: it can never succeed as sent (see `JobRejected`).
    case rejected(String)

    /// A short, stable code (used in headers, metrics labels and the demo's table).
    public var code: String {
        switch self {
        case .retriesExhausted: "retries_exhausted"
        case .deadline: "deadline"
        case .dependencyFailed: "dependency_failed"
        case .unknownJobName: "unknown_job_name"
        case .undecodablePayload: "undecodable_payload"
        case .malformedMessage: "malformed_message"
        case .noCapableWorker: "no_capable_worker"
        case .rejected: "rejected"
        }
    }

    public var description: String {
        switch self {
        case let .retriesExhausted(attempts, lastError):
            "retries exhausted after \(attempts) attempt(s); last error: \(lastError)"
        case let .deadline(date):
            "deadline \(date.formatted(.iso8601)) passed before the job started"
        case let .dependencyFailed(id, status):
            "dependency \(id) ended \(status) without completing"
        case let .unknownJobName(name):
            "no handler is registered for job name '\(name)'; register one or fix the producer"
        case let .undecodablePayload(detail):
            "payload does not match the handler's input: \(detail)"
        case let .malformedMessage(detail):
            "message is not a valid Warren job: \(detail)"
        case let .noCapableWorker(required):
            "no worker group offers the required capabilities \(required.sorted())"
        case let .rejected(why):
            "the handler rejected the job: \(why)"
        }
    }
}

extension Job: CustomStringConvertible {
    public var description: String { "\(name) \(id) [\(priority), \(status), attempt \(attempt)]" }
}

/// Thrown by a handler for a job that can never succeed as sent (a request the service refuses as
/// invalid, say): the job is dead-lettered at once with `reason`, without retries.
public struct JobRejected: Error, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// What a worker assumes for jobs of one name when their producer did not say: retries, and the
/// capabilities a worker needs to run them (added to the job's own).
public struct JobDefaults: Sendable, Equatable {
    public var maxRetries: Int?
    public var requiredCapabilities: Set<String>

    public init(maxRetries: Int? = nil, requiredCapabilities: Set<String> = []) {
        self.maxRetries = maxRetries
        self.requiredCapabilities = requiredCapabilities
    }
}
