#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// How to run one job: everything but its name and input.
public struct JobOptions: Sendable {
    /// The job's id (the dedup key); a random one when nil.
    public var id: JobID?
    public var priority: JobPriority
    /// Run no earlier than this long from now.
    public var delay: Duration?
    /// Run no earlier than this time (wins over `delay`).
    public var notBefore: Date?
    public var deadline: Date?
    public var timeout: Duration?
    public var maxRetries: Int
    public var dependencies: [JobID]
    public var requiredCapabilities: Set<String>
    public var affinity: String?
    public var metadata: [String: String]

    public init(
        id: JobID? = nil, priority: JobPriority = .normal, delay: Duration? = nil, notBefore: Date? = nil,
        deadline: Date? = nil, timeout: Duration? = nil, maxRetries: Int = 3, dependencies: [JobID] = [],
        requiredCapabilities: Set<String> = [], affinity: String? = nil, metadata: [String: String] = [:]
    ) {
        self.id = id
        self.priority = priority
        self.delay = delay
        self.notBefore = notBefore
        self.deadline = deadline
        self.timeout = timeout
        self.maxRetries = maxRetries
        self.dependencies = dependencies
        self.requiredCapabilities = requiredCapabilities
        self.affinity = affinity
        self.metadata = metadata
    }
}

/// The producer's side of Warren: submit jobs, follow them, cancel them.
public struct JobQueue: Sendable {
    public let broker: any Broker
    private let clock: any WarrenClock

    public init(broker: any Broker = InMemoryBroker(), clock: any WarrenClock = SystemClock()) {
        self.broker = broker
        self.clock = clock
    }

    /// Makes the job for `kind` with `input` and `options` (without submitting it).
    public func makeJob<Input, Output>(_ kind: JobKind<Input, Output>, _ input: Input, _ options: JobOptions = JobOptions()) throws -> Job {
        let now = clock.now()
        return Job(
            id: options.id ?? .random(), name: kind.name, payload: try JSONEncoder().encode(input),
            priority: options.priority, createdAt: now,
            notBefore: options.notBefore ?? options.delay.map { now.addingTimeInterval($0.timeInterval) },
            deadline: options.deadline, timeout: options.timeout, maxRetries: options.maxRetries,
            dependencies: options.dependencies, requiredCapabilities: options.requiredCapabilities,
            affinity: options.affinity, metadata: options.metadata)
    }

    /// Submits a typed job. Throws `EnqueueRefusal` when the queue refuses it (duplicate id, full,
    /// unknown dependency …) and `EncodingError` when the input does not encode.
    public func submit<Input, Output>(_ kind: JobKind<Input, Output>, _ input: Input, _ options: JobOptions = JobOptions()) async throws -> JobHandle<Output> {
        let job = try makeJob(kind, input, options)
        try await broker.enqueue([job])
        return JobHandle(id: job.id, broker: broker)
    }

    /// Submits a job as it is.
    @discardableResult
    public func submit(_ job: Job) async throws(EnqueueRefusal) -> JobHandle<Data> {
        try await broker.enqueue([job])
        return JobHandle(id: job.id, broker: broker, decode: { $0 })
    }

    /// Submits jobs atomically; they may depend on each other (a cycle is refused).
    @discardableResult
    public func submit(batch jobs: [Job]) async throws(EnqueueRefusal) -> [JobHandle<Data>] {
        try await broker.enqueue(jobs)
        return jobs.map { JobHandle(id: $0.id, broker: broker, decode: { $0 }) }
    }

    public func cancel(_ id: JobID) async -> CancelResult { await broker.cancel(id) }
    public func status(_ id: JobID) async -> Job? { await broker.snapshot(id) }
    public func events() -> AsyncStream<JobEvent> { broker.events() }
    public func statistics() async -> QueueStatistics { await broker.statistics() }
}

/// A submitted job: wait for its result, look at it, cancel it.
public struct JobHandle<Output: Sendable>: Sendable {
    public let id: JobID
    private let broker: any JobSubmitter & JobObserving
    private let decode: @Sendable (Data) throws -> Output

    init(id: JobID, broker: any JobSubmitter & JobObserving, decode: @escaping @Sendable (Data) throws -> Output) {
        self.id = id
        self.broker = broker
        self.decode = decode
    }

    /// Waits for the job to end: its output, or `JobFailure` saying why there is none.
    public func result() async throws(JobFailure) -> Output {
        switch await broker.outcome(of: id) {
        case let .completed(data)?:
            do { return try decode(data) } catch { throw .undecodableResult(id, describe(error, decoding: Output.self)) }
        case .cancelled?:
            throw .cancelled(id)
        case let .deadLettered(reason, errors)?:
            throw .deadLettered(id, reason, errors: errors)
        case nil:
            throw .unknownJob(id)
        }
    }

    public func cancel() async -> CancelResult { await broker.cancel(id) }
    public func status() async -> Job? { await broker.snapshot(id) }
}

extension JobHandle where Output: Decodable {
    init(id: JobID, broker: any JobSubmitter & JobObserving) {
        self.init(id: id, broker: broker, decode: { try JSONDecoder().decode(Output.self, from: $0) })
    }
}
