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
    /// Waits until the job ends, or `timeout` passes: its record then (nil when it has none).
    func waitUntilEnded(_ id: JobID, within timeout: Duration) async throws -> StoredJob?
    /// The statuses of jobs, in order (nil: the store has no record of it).
    func statuses(_ ids: [JobID]) async throws -> [JobStatus?]
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
    /// `reason`: what it says; `code`: `DeadLetterReason.code`.
    case deadLettered(reason: String, code: String? = nil)
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
    /// How a dead-lettered job ended: `DeadLetterReason.code`.
    public var deadLetterCode: String?
    public var cancelRequested: Bool
    public var createdAt: Date?
    public var startedAt: Date?
    public var finishedAt: Date?

    public init(
        id: JobID, name: String? = nil, priority: JobPriority? = nil, status: JobStatus? = nil, attempt: Int = 0, progress: Double = 0, instance: String? = nil,
        result: [UInt8]? = nil, resultTruncated: Bool = false, error: String? = nil, deadLetterCode: String? = nil, cancelRequested: Bool = false,
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
        self.deadLetterCode = deadLetterCode
        self.cancelRequested = cancelRequested
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
    }
}

extension StoredJob {
    /// How the job ended, as a producer's `JobHandle.result()` reports it; nil while it has not.
    /// A dead letter's reason is rebuilt from its code and text (the attempts' errors stay with
    /// the dead letter itself, in `<queue>.dead`).
    public var outcome: JobOutcome? {
        switch status {
        case .completed?: return .completed(Data(result ?? []))
        case .cancelled?: return .cancelled
        case .deadLettered?:
            let text = error ?? "dead-lettered"
            let reason: DeadLetterReason = switch deadLetterCode {
            case "retries_exhausted": .retriesExhausted(attempts: attempt, lastError: text)
            case "deadline": .deadline(finishedAt ?? Date())
            case "unknown_job_name": .unknownJobName(name ?? "")
            case "undecodable_payload": .undecodablePayload(text)
            case "rejected": .rejected(text)
            default: .malformedMessage(text)
            }
            return .deadLettered(reason, errors: [])
        default: return nil
        }
    }
}
