#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// What every instance consuming one queue shares about its jobs (the Redis store in `WarrenRedis`
/// is one): who runs a job, whether it ended, its record, and cancels asked from anywhere. A broker
/// given one claims each arriving job before running it (so a job that ended, or runs on another
/// live instance, is not run again), records the job as it moves, and hears cancels.
///
/// Every call may fail (the store is down): a broker then goes on with what one process knows,
/// and counts it (`AMQPBroker.stateStoreHealth`). Nothing waits on the store for longer than one call.
public protocol JobStateStore: Sendable {
    /// This process's name among the instances.
    var instance: String { get }
    /// Renews (or takes) this instance's lease: while it lives, its jobs are its own.
    func renewLease() async throws
    /// Gives the lease up (a clean stop): jobs it still held may run elsewhere at once.
    func releaseLease() async throws
    /// Claims arriving jobs for this instance, all together; an answer per job, in order.
    func claim(_ jobs: [StoreClaimRequest]) async throws -> [StoreClaim]
    /// Gives claimed jobs up without ending them (handed back to the broker, unstarted).
    func release(_ ids: [JobID]) async throws
    /// Records changes, in order. A change that says a job runs never overwrites its ending.
    func record(_ changes: [(id: JobID, change: JobChange)]) async throws
    /// Asks for a job to be cancelled, wherever it is or will be.
    func requestCancel(_ id: JobID) async throws -> StoreCancelOutcome
    /// The job as the store knows it; nil when it has no record (never seen, or past retention).
    func job(_ id: JobID) async throws -> StoredJob?
    /// The statuses of jobs, in order (nil: the store has no record of it).
    func statuses(_ ids: [JobID]) async throws -> [JobStatus?]
    /// Whether a cancel was asked for each job, in order.
    func cancelRequested(_ ids: [JobID]) async throws -> [Bool]
    /// Calls `handler` with each job that ends from now on, anywhere, and how. At most once each,
    /// and none while the store is unreachable: a caller that must not miss one reads `statuses` too.
    func watchEndings(_ handler: @escaping @Sendable (JobID, JobStatus) -> Void)
    /// Calls `handler` with the id of every job whose cancel is asked from now on, anywhere (at
    /// most once each; a cancel asked while the store is unreachable is seen when the job arrives).
    func watchCancels(_ handler: @escaping @Sendable (JobID) -> Void)
    /// Stops what the store runs for this process (watches); the store is not used after.
    func close() async
}

/// A job to claim: its id, name, priority and the attempt that is about to run.
public struct StoreClaimRequest: Sendable, Equatable {
    public var id: JobID
    public var name: String
    public var priority: JobPriority
    public var attempt: Int
    /// Claimed even when the store says it ended: a dead letter replayed on purpose.
    public var replayed: Bool

    public init(id: JobID, name: String, priority: JobPriority = .normal, attempt: Int, replayed: Bool = false) {
        (self.id, self.name, self.priority, self.attempt, self.replayed) = (id, name, priority, attempt, replayed)
    }
}

/// What a claim found.
public enum StoreClaim: Sendable, Equatable {
    /// Taken by this instance: run it.
    case claimed
    /// It ended already (completed, dead-lettered or cancelled): a duplicate.
    case finished(JobStatus)
    /// Queued or running on another instance whose lease is alive: a duplicate for now.
    case heldElsewhere(instance: String)
    /// A cancel was asked before it ran: it is recorded cancelled; settle it so, never run it.
    case cancelled
}

/// What a cancel found.
public enum StoreCancelOutcome: Sendable, Equatable {
    /// Marked: the instance holding it (if any) was told, and one that takes it later will not run it.
    case requested(status: JobStatus?, instance: String?)
    /// It had ended already.
    case finished(JobStatus)
}

/// A change to a job's record.
public enum JobChange: Sendable, Equatable {
    case started(attempt: Int)
    case progress(Double)
    case retrying(attempt: Int, error: String)
    case completed(result: [UInt8])
    case deadLettered(DeadLetterReason)
    case cancelled

    /// The status a job has once it ended this way; nil for changes of a job still going.
    public var ending: JobStatus? {
        switch self {
        case .completed: .completed
        case .deadLettered: .deadLettered
        case .cancelled: .cancelled
        case .started, .progress, .retrying: nil
        }
    }
}

/// A job as the store knows it.
public struct StoredJob: Sendable, Equatable {
    public var id: JobID
    public var name: String?
    public var priority: JobPriority?
    public var status: JobStatus?
    public var attempt: Int
    public var progress: Double
    /// The instance that holds (or last held) it.
    public var instance: String?
    public var result: [UInt8]?
    /// The result was longer than the store keeps: `result` is its beginning.
    public var resultTruncated: Bool
    public var error: String?
    /// Why a dead-lettered job was (`error` says it in words).
    public var deadLetterReason: DeadLetterReason?
    public var cancelRequested: Bool
    public var createdAt: Date?
    public var startedAt: Date?
    public var finishedAt: Date?

    public init(
        id: JobID, name: String? = nil, priority: JobPriority? = nil, status: JobStatus? = nil, attempt: Int = 0, progress: Double = 0, instance: String? = nil,
        result: [UInt8]? = nil, resultTruncated: Bool = false, error: String? = nil, deadLetterReason: DeadLetterReason? = nil, cancelRequested: Bool = false,
        createdAt: Date? = nil, startedAt: Date? = nil, finishedAt: Date? = nil
    ) {
        self.id = id
        self.name = name
        self.priority = priority
        self.status = status
        self.attempt = attempt
        self.progress = progress
        self.instance = instance
        self.result = result
        self.resultTruncated = resultTruncated
        self.error = error
        self.deadLetterReason = deadLetterReason
        self.cancelRequested = cancelRequested
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
    }
}

extension StoredJob {
    /// How the job ended, as a producer's `JobHandle.result()` reports it; nil while it has not.
    /// The attempts' errors stay with the dead letter itself, in `<queue>.dead`.
    public var outcome: JobOutcome? {
        switch status {
        case .completed?: .completed(Data(result ?? []))
        case .cancelled?: .cancelled
        case .deadLettered?: .deadLettered(deadLetterReason ?? .malformedMessage(error ?? "dead-lettered elsewhere"), errors: [])
        default: nil
        }
    }
}

extension DeadLetterReason {
    /// What the reason holds besides its code, as one string (a store keeps the two).
    public var detail: String {
        switch self {
        case let .retriesExhausted(attempts, lastError): "\(attempts) \(lastError)"
        case let .deadline(date): "\(Int64((date.timeIntervalSince1970 * 1_000).rounded()))"
        case let .dependencyFailed(id, status): "\(status.rawValue) \(id.rawValue)"
        case let .unknownJobName(name): name
        case let .undecodablePayload(text), let .malformedMessage(text), let .rejected(text): text
        case let .noCapableWorker(required): required.joined(separator: ",")
        }
    }

    /// The reason of `code` with `detail` (as `detail` wrote it); nil when they do not fit.
    public init?(code: String, detail: String) {
        func split() -> (String, String)? {
            guard let space = detail.firstIndex(of: " ") else { return nil }
            return (String(detail[..<space]), String(detail[detail.index(after: space)...]))
        }
        switch code {
        case "retries_exhausted":
            guard let (count, last) = split(), let attempts = Int(count), attempts >= 0 else { return nil }
            self = .retriesExhausted(attempts: attempts, lastError: last)
        case "deadline":
            // 1970 to the end of 9999, as every date of the wire format.
            guard let millis = Int64(detail), (0...253_402_300_799_999).contains(millis) else { return nil }
            self = .deadline(Date(timeIntervalSince1970: Double(millis) / 1_000))
        case "dependency_failed":
            guard let (statusText, id) = split(), let status = JobStatus(rawValue: statusText) else { return nil }
            self = .dependencyFailed(JobID(id), status: status)
        case "unknown_job_name": self = .unknownJobName(detail)
        case "undecodable_payload": self = .undecodablePayload(detail)
        case "malformed_message": self = .malformedMessage(detail)
        case "rejected": self = .rejected(detail)
        case "no_capable_worker": self = .noCapableWorker(required: detail.split(separator: ",").map(String.init))
        default: return nil
        }
    }
}
