import CoreMetrics
import Foundation
@_spi(Transport) public import Warren

/// RabbitMQ as a Warren broker.
///
/// Consumes the five priority queues of one Warren queue with per-consumer prefetch into a local
/// `LocalQueue` (highest priority first, deadlines, dependencies, cancellation), and settles every
/// job that leaves it: completed → ack (after publishing the result to `reply_to`, confirmed);
/// retry → publish the next attempt to the delay cascade, confirmed, then ack; dead letter →
/// publish to `warren.dead` with the reason, confirmed, then ack. No path acks a message before
/// its successor is confirmed. Messages that are not valid jobs are dead-lettered the same way.
public final class AMQPBroker: Broker {
    public struct Configuration: Sendable {
        /// The broker's addresses (the nodes of a cluster), tried in order: on a loss the next
        /// one at once, backing off only after all of them failed in a row.
        public var urls: [AMQPURL]
        /// The first address.
        public var url: AMQPURL {
            get { urls[0] }
            set { urls[0] = newValue }
        }
        /// The Warren queue: broker queues `<queue>.<priority>` and `<queue>.dead`.
        public var queue: String
        public var queueType: QueueType
        /// Unacked messages each priority queue's consumer may hold.
        public var prefetch: UInt16
        public var retryPolicy: RetryPolicy
        /// For messages that carry no `x-warren-max-retries`.
        public var defaultMaxRetries: Int
        /// Per job name: retries when the message does not say, and capabilities a worker needs.
        public var jobDefaults: [String: JobDefaults] = [:]
        /// Per job name: the backoff between attempts, instead of `retryPolicy`.
        public var retryPolicies: [String: RetryPolicy] = [:]
        public var limits: WireFormat.Limits
        /// Job ids remembered (published here, or finished here) to refuse or drop duplicates.
        public var dedupWindow: Int
        /// How long a received job waits here for a dependency that has not arrived before it is
        /// dead-lettered (its message is held unacked meanwhile).
        public var dependencyWait: Duration = .seconds(600)
        /// Most ready messages in each priority queue; past it RabbitMQ refuses publishes and
        /// `enqueue` throws `queueFull` (back-pressure). nil: unbounded. Changing it on an existing
        /// queue is a conflicting declaration.
        public var maxQueueLength: Int?
        /// How long a publish keeps trying through connection loss before `enqueue` gives up.
        public var publishDeadline: Duration
        /// Publish how each job ends (completed, retrying, dead-lettered, cancelled) to the topic
        /// exchange `warren.events`, at most once, for other services to follow. Off by default: it
        /// is one more publish per job (about a third of the throughput of no-op jobs).
        public var publishesEvents: Bool = false
        /// While deliveries stream in, how long the connection's thread lets more gather after a
        /// small burst before reading again. Larger bursts cost less CPU per job; a job waits at
        /// most this much longer to start. Zero reads again at once.
        public var deliveryLinger: Duration = .microseconds(100)
        /// Quorum queues: returns of a message to its priority queue (its consumer died or lost
        /// its connection) before RabbitMQ dead-letters it into `<queue>.dead` with reason
        /// `delivery_limit`. Graceful stops do not count: see `stopConsuming`.
        public var deliveryLimit: Int = Topology.defaultDeliveryLimit

        public static let defaultPrefetch: UInt16 = 200
        /// Retries of a job whose message does not say.
        public static let defaultMaxRetries = 3

        public init(
            url: AMQPURL, queue: String = "default", queueType: QueueType = .classic, prefetch: UInt16 = Self.defaultPrefetch,
            retryPolicy: RetryPolicy = .default, defaultMaxRetries: Int = Self.defaultMaxRetries, limits: WireFormat.Limits = WireFormat.Limits(),
            dedupWindow: Int = 100_000, maxQueueLength: Int? = nil, publishDeadline: Duration = .seconds(30)
        ) {
            self.urls = [url]
            self.queue = queue
            self.queueType = queueType
            self.prefetch = prefetch
            self.retryPolicy = retryPolicy
            self.defaultMaxRetries = defaultMaxRetries
            self.limits = limits
            self.dedupWindow = dedupWindow
            self.maxQueueLength = maxQueueLength
            self.publishDeadline = publishDeadline
        }
    }

    public let configuration: Configuration
    public let topology: Topology
    private let local: LocalQueue
    private let connection: AMQPConnection
    private let messages: Messages

    public init(_ configuration: Configuration, clock: any WarrenClock = SystemClock()) {
        self.configuration = configuration
        let topology = Topology(
            queue: configuration.queue, queueType: configuration.queueType, maxLength: configuration.maxQueueLength,
            deliveryLimit: configuration.deliveryLimit)
        self.topology = topology
        let messages = Messages(configuration: configuration, topology: topology)
        self.messages = messages
        // Everything prefetched from the five queues fits, with room for jobs waiting on dependencies.
        let capacity = Int(configuration.prefetch) * JobPriority.allCases.count * 2 + 1_000
        var queueConfiguration = QueueConfiguration(
            capacity: capacity, finishedWindow: min(10_000, configuration.dedupWindow), dedupWindow: configuration.dedupWindow,
            retryPolicy: configuration.retryPolicy, retries: .handOff)
        queueConfiguration.retryPolicies = configuration.retryPolicies
        let local = LocalQueue(
            configuration: queueConfiguration,
            clock: clock, random: SystemRandomNumberGenerator(),
            departures: { departures in messages.settle(departures) })
        self.local = local
        let consuming = messages.consuming, consumers = messages.consumers
        let prefetch = configuration.prefetch
        // swift-metrics, to whatever backend the process bootstrapped (see `JobMetrics`).
        let reconnectCounter = Counter(label: "warren_broker_reconnects_total", dimensions: [("queue", configuration.queue)])
        connection = AMQPConnection(
            .init(
                urls: configuration.urls, name: configuration.queue, ackBatch: max(1, min(256, Int(configuration.prefetch) / 4)),
                linger: configuration.deliveryLinger),
            setup: { session throws(AMQPError) in
                let notes = try topology.declare(session.raw)
                messages.connected(to: session.raw.serverVersion, notes: notes)
                if consuming.withLock({ $0 }) { try consumers.start(session, topology: topology, prefetch: prefetch) }
            },
            onMessage: { burst, generation in messages.receive(burst, generation: generation, into: local) },
            onCancel: { tag in consumers.cancelled(tag) },
            reconnected: { reconnectCounter.increment() })
        messages.connection.withLock { $0 = connection }
    }

    /// Starts consuming, once: a broker consumes only when asked for work, so a process that only
    /// publishes never takes jobs by accident.
    private func startConsuming() {
        guard messages.consuming.withLock({ consuming in
            defer { consuming = true }
            return !consuming
        }) else { return }
        let topology = self.topology, prefetch = configuration.prefetch, connection = self.connection, consumers = messages.consumers
        Task {
            // If the connection is down, its setup starts the consumers when it comes back; if it
            // came up since `consuming` was set, its setup may have started them already.
            try? await connection.perform { session throws(AMQPError) in
                try consumers.start(session, topology: topology, prefetch: prefetch)
            }
        }
        let cancellations = consumers.cancellations()
        Task { [weak self] in
            for await _ in cancellations {
                guard let self else { return }
                await self.restartCancelledConsumers()
            }
        }
    }

    /// A consumer the broker cancelled (its queue's node went down, or the queue was deleted) is
    /// started again once its queue answers, asked every `recheck` while any is cancelled.
    private func restartCancelledConsumers(recheck: Duration = .milliseconds(250)) async {
        let topology = self.topology, consumers = messages.consumers
        while messages.consuming.withLock({ $0 }), !consumers.cancelledPriorities.isEmpty {
            if isReady {
                _ = try? await connection.perform { session throws(AMQPError) in try consumers.restart(session, topology: topology) }
                if consumers.cancelledPriorities.isEmpty { return }
            }
            try? await Task.sleep(for: recheck)
        }
    }

    /// Whether the connection is up.
    public var isReady: Bool {
        if case .connected = connection.status { return true }
        return false
    }

    /// Whether the connection is up and this broker is consuming all five priority queues (not
    /// stopped, and no consumer cancelled by the broker and not yet restarted).
    public var isConsuming: Bool {
        isReady && messages.consuming.withLock { $0 } && !messages.handingBack.withLock { $0 }
            && messages.consumers.cancelledPriorities.isEmpty
    }

    /// Consumers RabbitMQ cancelled (their queue's node went down, or the queue was deleted) and
    /// consumers started again once their queue answered, from now on. Any number of followers.
    public var consumerChanges: AsyncStream<ConsumerChange> { messages.consumers.changes() }

    /// Whether a graceful stop has begun (`stopConsuming`).
    public var isDraining: Bool { messages.handingBack.withLock { $0 } }

    /// Why the connection is down, if it is.
    public var disconnectReason: String? {
        if case let .disconnected(reason) = connection.status { return reason }
        return nil
    }

    /// The priority queues whose consumer the broker cancelled and that are not consumed again yet.
    public var unconsumedQueues: [String] { messages.consumers.cancelledPriorities.map(topology.brokerQueue) }

    /// The version of the RabbitMQ node last connected to (0.0.0 before the first connection).
    public var brokerVersion: BrokerVersion { messages.serverVersion.withLock { $0 } }

    /// What the last topology declaration found and accepted (an older Warren's quorum queues
    /// without a dead-letter exchange): worth a warning in the log.
    public var topologyNotes: [String] { messages.topologyNotes.withLock { $0 } }

    /// Times the connection (or its channel) was lost and set up again.
    public var reconnects: Int { max(0, connection.connectCount - 1) }

    /// Waits until the connection is up (or `timeout` passes); throws the last connection error.
    public func waitUntilReady(timeout: Duration = .seconds(30)) async throws(AMQPError) {
        let deadline = ContinuousClock.now + timeout
        while !isReady {
            if case .closed = connection.status { throw .closed }
            guard ContinuousClock.now < deadline else {
                if case let .disconnected(reason) = connection.status {
                    throw .unreachable(host: configuration.url.host, port: configuration.url.port, reason: reason)
                }
                throw .unreachable(host: configuration.url.host, port: configuration.url.port, reason: "not connected after \(timeout)")
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Connection changes: connected (with its generation), disconnected with the reason, closed.
    /// Any number of followers; each stream ends when the broker closes.
    public var connectionUpdates: AsyncStream<ConnectionState> { connection.statusUpdates }

    // MARK: Broker

    public func enqueue(_ jobs: [Job]) async throws(EnqueueRefusal) {
        // Known here: published by this process (within the dedup window) or held here.
        let messages = self.messages, local = self.local
        let ordered = try BatchRules.admit(
            jobs, isNew: { !messages.isKnown($0.id) && local.snapshot($0.id) == nil },
            isKnown: { messages.isKnown($0) || local.snapshot($0) != nil })
        messages.remember(ordered)
        var failure: EnqueueRefusal?
        await withTaskGroup(of: (JobID, AMQPError?).self) { group in
            for job in ordered {
                group.addTask { [messages] in
                    do throws(AMQPError) { try await messages.publish(job) } catch {
                        return (job.id, error)
                    }
                    return (job.id, nil)
                }
            }
            for await (id, error) in group {
                guard let error else { continue }
                messages.forget(id)
                if failure == nil {
                    if case .publishRefused = error, let limit = configuration.maxQueueLength {
                        failure = .queueFull(capacity: limit)
                    } else {
                        failure = .unavailable(error.description)
                    }
                }
            }
        }
        if let failure { throw failure }
    }

    public func next(_ filter: DeliveryFilter) async -> Delivery? {
        startConsuming()
        return await local.next(filter)
    }

    public func tryNext(_ filter: DeliveryFilter) async -> Delivery? {
        startConsuming()
        return local.tryNext(filter)
    }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome) async { local.settle(delivery, outcome) }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter) async -> Delivery? {
        local.settle(delivery, outcome, thenTryNext: filter)
    }

    public func cancel(_ id: JobID) async -> CancelResult {
        let result = local.cancel(id)
        guard result == .unknown, messages.isKnown(id) else { return result }
        // Published, not received yet: it is cancelled when it arrives here.
        messages.tombstone(id)
        return .cancelled
    }

    public func reportProgress(_ id: JobID, _ percent: Double) async { local.reportProgress(id, percent) }
    public func reoffer() async { local.reoffer() }
    public func events() -> AsyncStream<JobEvent> { local.events() }
    /// The job as this process knows it: held here, or published here and not received yet
    /// (`queued`, or `pending` while delayed or waiting on dependencies).
    public func snapshot(_ id: JobID) async -> Job? { local.snapshot(id) ?? messages.published(id) }
    /// The job as this process holds it since its message arrived here (nil before that, when
    /// `snapshot` answers from what was published).
    public func received(_ id: JobID) -> Job? { local.snapshot(id) }

    public func outcome(of id: JobID) async -> JobOutcome? {
        await local.outcome(of: id, waitIfUnknown: messages.isKnown(id))
    }

    public func statistics() async -> QueueStatistics { local.statistics() }

    /// Messages that were not valid jobs, dead-lettered on arrival.
    public var malformedCount: Int { messages.malformedCount }

    /// The first half of a graceful shutdown: cancels the consumers (`basic.cancel`) and hands every
    /// job that has not started back to RabbitMQ, so other consumers take them at once: with
    /// `basic.nack` (requeue), or, on a quorum queue whose broker counts that toward the delivery
    /// limit (before RabbitMQ 4.3), as a copy at the end of its queue, confirmed before the
    /// original is acked, so restarts never wear down a job's delivery count. Running jobs keep
    /// their messages and settle as usual; publishing still works. Call
    /// after the worker pool has stopped taking jobs, then let it finish, then `close()`.
    public func stopConsuming() async {
        messages.handingBack.withLock { $0 = true }
        let wasConsuming = messages.consuming.withLock { consuming in
            defer { consuming = false }
            return consuming
        }
        // Not connected: no channel has consumers to cancel, and a command would wait for a
        // connection that may never come (a broker unreachable since start-up kept SIGTERM waiting).
        if wasConsuming, isReady {
            // Deliveries the broker sent before the cancel-ok are read after it and handed back.
            // Bounded: a connection lost meanwhile, or a broker that stopped answering, must not
            // hold up the shutdown (the deliveries then go back when the channel closes).
            let connection = self.connection, consumers = messages.consumers
            _ = await Deadline.first(of: .seconds(5)) {
                _ = try? await connection.perform { session throws(AMQPError) in try consumers.stop(session) }
            }
        }
        messages.consumers.endCancellations()
        messages.handBack(local.withdrawUnstarted())
    }

    /// `Broker.stopTakingWork`: `stopConsuming`.
    public func stopTakingWork() async { await stopConsuming() }

    /// Runs `pool` on this broker until the calling task is cancelled (or the pool is shut down),
    /// then drains: `WarrenWorker(broker: self, pool: pool).runUntilCancelled()`.
    public func run(_ pool: WorkerPool) async {
        await WarrenWorker(broker: self, pool: pool).runUntilCancelled()
    }

    /// Stops serving and closes the connection. Unacked messages (prefetched, not finished) go back
    /// to their queues: the broker requeues them when the channel closes.
    public func close() async {
        local.close()
        await messages.settling.wait()
        await connection.close()
    }

    /// Runs `body` on the connection's I/O thread (inspection and tooling).
    func perform<T: Sendable>(_ body: @escaping @Sendable (ConnectionSession) throws(AMQPError) -> T) async throws(AMQPError) -> T {
        try await connection.perform(body)
    }
}

/// Where each job held here came from, and how its message is settled.
private final class Messages: Sendable {
    /// One delivery: a class, so the hot path moves one reference instead of a dozen fields.
    final class Origin: Sendable {
        let tag: UInt64
        let generation: UInt64
        let exchange: String
        let routingKey: String
        let properties: MessageProperties

        init(_ message: IncomingMessage, generation: UInt64) {
            tag = message.deliveryTag
            self.generation = generation
            exchange = message.exchange
            routingKey = message.routingKey
            properties = message.properties
        }
    }

    /// A job's delivery, and copies of it that arrived while it was held here (redeliveries after
    /// a reconnection); they are all settled together.
    struct Origins: Sendable {
        let first: Origin
        var duplicates: [Origin] = []

        /// Notes another arrival; the one that created the entry is not a duplicate of itself.
        mutating func add(_ origin: Origin) {
            if origin !== first { duplicates.append(origin) }
        }

        func forEach(_ body: (Origin) -> Void) {
            body(first)
            for duplicate in duplicates { body(duplicate) }
        }
    }

    struct State {
        /// The delivery of each job held in the local queue, and copies that arrived meanwhile.
        var origins: [JobID: Origins] = [:]
        var known = RecentIDs(capacity: 100_000)
        /// Jobs published here, without their payloads, for status until they arrive.
        var published: [JobID: Job] = [:]
        /// Jobs that arrived before one of their dependencies (the five queues deliver in any
        /// order), by the dependency they wait for. Their messages stay unacked meanwhile.
        var waitingForDependency: [JobID: [(job: Job, message: IncomingMessage, cancelled: Bool)]] = [:]
        var tombstones = RecentIDs(capacity: 10_000)
        var malformed = 0
    }

    let configuration: AMQPBroker.Configuration
    let topology: Topology
    let state: Locked<State>
    let connection = Locked<AMQPConnection?>(nil)
    let consuming = Locked(false)
    let consumers = Consumers()
    /// The version of the node connected to (or last connected to), and what its topology
    /// declaration noted.
    let serverVersion = Locked(BrokerVersion(major: 0, minor: 0, patch: 0))
    let topologyNotes = Locked<[String]>([])
    /// Set by a graceful stop: what arrives now goes back to the broker.
    let handingBack = Locked(false)
    /// Settlements in progress (publishes awaiting confirms).
    let settling = Latch()

    init(configuration: AMQPBroker.Configuration, topology: Topology) {
        self.configuration = configuration
        self.topology = topology
        var state = State()
        state.known = RecentIDs(capacity: max(1, configuration.dedupWindow))
        self.state = Locked(state)
    }

    private var link: AMQPConnection {
        guard let connection = connection.withLock({ $0 }) else { preconditionFailure("the broker's connection is not set") }
        return connection
    }

    func connected(to version: BrokerVersion, notes: [String]) {
        serverVersion.withLock { $0 = version }
        topologyNotes.withLock { $0 = notes }
    }

    var malformedCount: Int { state.withLock { $0.malformed } }
    func isKnown(_ id: JobID) -> Bool { state.withLock { $0.known.contains(id) } }
    func remember(_ jobs: [Job]) {
        let now = Date()
        state.withLock { state in
            for var job in jobs {
                state.known.insert(job.id)
                job.payload = Data()
                if (job.notBefore ?? now) > now || !job.dependencies.isEmpty { job.status = .pending } else { job.status = .queued }
                state.published[job.id] = job
            }
            // Bounded like the dedup window: the oldest entries go when it overflows.
            if state.published.count > state.known.capacity {
                state.published = state.published.filter { state.known.contains($0.key) }
            }
        }
    }

    func forget(_ id: JobID) {
        state.withLock { state in
            _ = state.known.remove(id)
            state.published[id] = nil
        }
    }

    func published(_ id: JobID) -> Job? { state.withLock { $0.published[id] } }
    func tombstone(_ id: JobID) { state.withLock { $0.tombstones.insert(id) } }

    // MARK: Receiving (on the I/O thread)

    /// Takes a burst of deliveries: dead-letters the unreadable ones, sets copies of jobs held here
    /// aside, and enqueues the rest together.
    func receive(_ burst: [IncomingMessage], generation: UInt64, into local: LocalQueue) {
        if handingBack.withLock({ $0 }) {
            // Arrived after consumption stopped (sent before the broker took the cancel): give them back.
            for message in burst {
                giveBack(Origins(first: Origin(message, generation: generation)), priority: Consumers.priority(ofTag: message.consumerTag),
                         body: message.body)
            }
            return
        }
        // Decoded jobs, with where each came from and the index of its message in the burst.
        var jobs: [Job] = [], origins: [Origin] = [], indices: [Int] = []
        jobs.reserveCapacity(burst.count)
        origins.reserveCapacity(burst.count)
        indices.reserveCapacity(burst.count)
        var consumer: (tag: String, priority: JobPriority)?
        for (index, message) in burst.enumerated() {
            // Bursts come mostly from one consumer: its tag is parsed once.
            let priority: JobPriority
            if let consumer, consumer.tag == message.consumerTag {
                priority = consumer.priority
            } else {
                priority = Consumers.priority(ofTag: message.consumerTag)
                consumer = (message.consumerTag, priority)
            }
            switch WireFormat.decode(
                message, queue: configuration.queue, priority: priority, defaultMaxRetries: configuration.defaultMaxRetries,
                limits: configuration.limits, defaults: configuration.jobDefaults)
            {
            case let .success(job):
                if let notBefore = job.notBefore {
                    // `x-warren-delay`: through the delay cascade, not held here.
                    delay(message, generation: generation, until: notBefore, priority: priority)
                    continue
                }
                // A replay of a job that died here: its id is in the dedup window, but it must run.
                if job.metadata[WireFormat.replayedKey] != nil { local.forgetFinished(job.id) }
                jobs.append(job)
                origins.append(Origin(message, generation: generation))
                indices.append(index)
            case let .failure(reason):
                state.withLock { $0.malformed += 1 }
                deadLetter(properties: message.properties, body: message.body, reason: reason, errors: [], attempts: 0,
                           origins: Origins(first: Origin(message, generation: generation)))
                // Known here as dead-lettered (under its id when it has one), in outcomes, events and statistics.
                let id = message.properties.messageID.flatMap { $0.isEmpty ? nil : JobID($0) } ?? .random()
                let name = message.properties.type.flatMap { $0.isEmpty ? nil : $0 } ?? configuration.queue
                let rejected = Job(id: id, name: name, payload: Data(), priority: priority)
                local.recordRejected(rejected, reason)
                announce(.deadLettered, rejected, reason: reason)
            }
        }
        guard !jobs.isEmpty else { return }
        // Register where each job came from; a copy of a job held here (a redelivery after a
        // reconnection) is settled with the original. Jobs whose dependencies have not all arrived
        // wait (rare); the rest go in together. One dictionary lookup per job.
        var setAside: [Int] = [], waiting: [Int] = []
        let (cancelled, anyWaiting) = state.withLock { state -> (Set<JobID>, Bool) in
            var cancelled = Set<JobID>()
            // By position, not `for job in jobs`: that would copy every job under the lock.
            for position in jobs.indices {
                let id = jobs[position].id
                if !state.published.isEmpty { state.published[id] = nil }
                let before = state.origins.count
                let origin = origins[position]
                state.origins[id, default: Origins(first: origin)].add(origin)
                guard state.origins.count > before else {
                    setAside.append(position)
                    continue
                }
                if !state.tombstones.isEmpty, state.tombstones.remove(id) { cancelled.insert(id) }
                if !jobs[position].dependencies.isEmpty {
                    // Not in the local queue until its dependencies are: the window remembers it meanwhile.
                    state.known.insert(id)
                    setAside.append(position)
                    waiting.append(position)
                }
            }
            return (cancelled, !state.waitingForDependency.isEmpty)
        }
        for position in waiting {
            admit(jobs[position], burst[indices[position]], into: local, cancelled: cancelled.contains(jobs[position].id))
        }
        // Usually every job goes in: the array is passed on as it is.
        var ready = jobs
        if !setAside.isEmpty {
            let aside = Set(setAside)
            var kept: [Int] = []
            ready = []
            for (position, job) in jobs.enumerated() where !aside.contains(position) {
                ready.append(job)
                kept.append(indices[position])
            }
            indices = kept
        }
        guard !ready.isEmpty else { return }
        // Asked after this burst's own dependents have started waiting.
        let releases = anyWaiting || (!waiting.isEmpty && state.withLock { !$0.waitingForDependency.isEmpty })
        let refusals = local.enqueueEach(ready, cancelling: cancelled)
        for (position, refusal) in refusals.enumerated() {
            if let refusal {
                refuse(ready[position], burst[indices[position]], refusal)
            } else if releases {
                release(waitingFor: ready[position].id, into: local)
            }
        }
    }

    /// Enqueues a received job once every dependency is here; then the jobs that waited for it.
    private func admit(_ job: Job, _ message: IncomingMessage, into local: LocalQueue, cancelled: Bool) {
        if let missing = job.dependencies.first(where: { local.snapshot($0) == nil }) {
            state.withLock { $0.waitingForDependency[missing, default: []].append((job, message, cancelled)) }
            // It may have arrived between the look and the wait: look again.
            if local.snapshot(missing) != nil { release(waitingFor: missing, into: local) }
            let wait = configuration.dependencyWait
            Task { [weak self] in
                try? await Task.sleep(for: wait)
                self?.giveUp(on: job.id, waitingFor: missing, after: wait)
            }
            return
        }
        do {
            try local.enqueue([job], cancelling: cancelled ? [job.id] : [])
        } catch {
            refuse(job, message, error)
            return
        }
        release(waitingFor: job.id, into: local)
    }

    /// A dependency that never came: the job is dead-lettered saying which.
    private func giveUp(on id: JobID, waitingFor dependency: JobID, after wait: Duration) {
        let entry = state.withLock { state -> (job: Job, message: IncomingMessage, cancelled: Bool)? in
            guard let index = state.waitingForDependency[dependency]?.firstIndex(where: { $0.job.id == id }) else { return nil }
            let entry = state.waitingForDependency[dependency]!.remove(at: index)
            if state.waitingForDependency[dependency]!.isEmpty { state.waitingForDependency[dependency] = nil }
            return entry
        }
        guard let entry, let origins = takeOrigins(id) else { return }
        deadLetter(properties: entry.message.properties, body: entry.message.body,
                   reason: .malformedMessage("its dependency \(dependency) did not arrive at this worker within \(wait)"),
                   errors: entry.job.errors, attempts: entry.job.attempt - 1, origins: origins)
    }

    private func release(waitingFor id: JobID, into local: LocalQueue) {
        let waiting = state.withLock { $0.waitingForDependency.removeValue(forKey: id) } ?? []
        for (job, message, cancelled) in waiting { admit(job, message, into: local, cancelled: cancelled) }
    }

    private func refuse(_ job: Job, _ message: IncomingMessage, _ error: EnqueueRefusal) {
        guard let origins = takeOrigins(job.id) else { return }
        switch error {
        case .duplicate:
            // Finished here already (inside the dedup window): drop the copy.
            ack(origins, on: link)
        case .queueFull, .closed, .unavailable:
            // Back to the broker, for this or another consumer.
            giveBack(origins, priority: job.priority, body: Array(job.payload))
        case let .unknownDependency(_, dependency):
            deadLetter(properties: message.properties, body: message.body,
                       reason: .malformedMessage("it depends on job \(dependency), which this worker has not seen"), errors: job.errors,
                       attempts: job.attempt - 1, origins: origins)
        case let .invalid(_, why):
            deadLetter(properties: message.properties, body: message.body, reason: .malformedMessage(why), errors: job.errors,
                       attempts: job.attempt - 1, origins: origins)
        case let .dependencyCycle(cycle):
            deadLetter(properties: message.properties, body: message.body,
                       reason: .malformedMessage("dependency cycle \(cycle.map(\.rawValue))"), errors: job.errors,
                       attempts: job.attempt - 1, origins: origins)
        }
    }

    private func takeOrigins(_ id: JobID) -> Origins? {
        state.withLock { $0.origins.removeValue(forKey: id) }
    }

    // MARK: Settling what leaves the local queue

    func settle(_ departures: [Departure]) {
        let connection = link
        for departure in departures {
            guard let origins = takeOrigins(departure.id) else { continue }
            if configuration.publishesEvents {
                switch departure {
                case let .completed(job): announce(.completed, job)
                case let .cancelled(job): announce(.cancelled, job)
                case let .retry(job): announce(.retrying, job)
                case let .deadLettered(job): announce(.deadLettered, job)
                }
            }
            switch departure {
            case let .completed(job):
                if let replyTo = job.metadata[WireFormat.replyToKey] {
                    let reply = OutgoingMessage(
                        exchange: "", routingKey: replyTo,
                        properties: MessageProperties(
                            contentType: "application/json", headers: ["x-warren-status": .string("completed")],
                            correlationID: job.metadata[WireFormat.correlationIDKey], messageID: job.id.rawValue, type: job.name),
                        body: Array(job.result ?? Data()))
                    // The job is done either way; a reply that cannot be delivered is not a reason to run it again.
                    settleAfter({ try? await $0.publish(reply, deadline: self.configuration.publishDeadline) }, origins: origins)
                } else {
                    ack(origins, on: connection)
                }
            case .cancelled:
                ack(origins, on: connection)
            case let .retry(job):
                settleAfter({ connection throws(AMQPError) in try await self.publish(job, on: connection) }, origins: origins)
            case let .deadLettered(job):
                // The attempt that ended counts when it ran (failed, rejected, no handler); a job
                // dead-lettered before it started (deadline, dependency) made only the earlier ones.
                deadLetter(properties: origins.first.properties, body: Array(job.payload), reason: job.deadLetterReason ?? .malformedMessage("unknown"),
                           errors: job.errors, attempts: job.startedAt == nil ? job.attempt - 1 : job.attempt, origins: origins)
            }
        }
    }

    /// Publishes a lifecycle event, when configured (at most once: nobody waits for its confirm).
    private func announce(_ event: WireFormat.Event, _ job: Job, reason: DeadLetterReason? = nil) {
        guard configuration.publishesEvents else { return }
        link.notify(WireFormat.event(event, job: job, queue: configuration.queue, reason: reason ?? job.deadLetterReason))
    }

    // MARK: Handing back

    /// Returns unstarted jobs' messages (and their redelivered copies) to the broker, and every
    /// message still waiting here for a dependency.
    func handBack(_ jobs: [Job]) {
        let waiting = state.withLock { state in
            defer { state.waitingForDependency.removeAll() }
            return state.waitingForDependency.values.flatMap { $0 }
        }
        for job in jobs + waiting.map(\.job) {
            guard let origins = takeOrigins(job.id) else { continue }
            giveBack(origins, priority: job.priority, body: Array(job.payload))
        }
    }

    /// Whether returning a message to its queue counts toward the queue's delivery limit: on
    /// quorum queues before RabbitMQ 4.3 every return does, a nack with requeue included.
    private var returnsCount: Bool {
        topology.queueType == .quorum && serverVersion.withLock { $0.quorumCountsNack }
    }

    /// Puts a message that did not run back in its queue. A nack with requeue returns it to the
    /// head of its queue. Where that counts as a failed delivery, every graceful restart would
    /// wear the count down until jobs that never failed were dead-lettered (32 to 38 of 50 jobs
    /// vanished in 25 restarts before the queues had a dead-letter exchange): there a copy goes
    /// to the end of its priority queue (confirmed), then the original is acked. Deliveries of a
    /// channel that is gone are back in their queue already.
    private func giveBack(_ origins: Origins, priority: JobPriority, body: [UInt8]) {
        let connection = link
        guard returnsCount else {
            origins.forEach { connection.giveBack($0.tag, generation: $0.generation) }
            return
        }
        guard case let .connected(generation) = connection.status else { return }
        var live: [Origin] = []
        origins.forEach { if $0.generation == generation { live.append($0) } }
        guard let first = live.first else { return }
        var properties = first.properties
        properties.headers = properties.headers.filter { !WireFormat.brokerDeathHeaders.contains($0.key) }
        let copy = topology.message(to: priority, notBefore: nil, properties: properties, body: body)
        settleAfter({ connection throws(AMQPError) in try await connection.publish(copy, deadline: .seconds(5)) },
                    origins: Origins(first: first, duplicates: Array(live.dropFirst())))
    }

    private func ack(_ origins: Origins, on connection: AMQPConnection) {
        origins.forEach { connection.ack($0.tag, generation: $0.generation) }
    }

    /// Publishes the dead letter (confirmed), answers the message's `reply_to` if it has one, then
    /// acks the origins.
    private func deadLetter(
        properties: MessageProperties, body: [UInt8], reason: DeadLetterReason, errors: [AttemptError], attempts: Int, origins: Origins
    ) {
        let (deadProperties, deadBody) = WireFormat.deadLetter(
            properties: properties, body: body, reason: reason, errors: errors, attempts: attempts,
            exchange: origins.first.exchange, routingKey: origins.first.routingKey)
        let replyTo = properties.replyTo.flatMap { $0.isEmpty ? nil : $0 }, correlationID = properties.correlationID
        let message = OutgoingMessage(
            exchange: Topology.deadExchange, routingKey: topology.deadRoutingKey, properties: deadProperties, body: deadBody, mandatory: true)
        settleAfter({ connection throws(AMQPError) in
            try await connection.publish(message, deadline: self.configuration.publishDeadline)
            if let replyTo {
                // The producer waits for an answer: tell it the job failed.
                let failure = OutgoingMessage(
                    exchange: "", routingKey: replyTo,
                    properties: MessageProperties(
                        contentType: "application/json",
                        headers: ["x-warren-status": .string("dead_lettered"), WireFormat.Header.deadReason: .string(reason.code)],
                        correlationID: correlationID, messageID: properties.messageID),
                    body: Array((try? JSONEncoder().encode(["error": reason.description])) ?? Data()))
                try? await connection.publish(failure, deadline: .seconds(5))
            }
        }, origins: origins)
    }

    /// Sends a message that asked for `x-warren-delay` through the delay cascade to the priority
    /// queue it arrived in, without that header (confirmed), then acks it.
    private func delay(_ message: IncomingMessage, generation: UInt64, until notBefore: Date, priority: JobPriority) {
        var properties = message.properties
        properties.headers[WireFormat.Header.delay] = nil
        let copy = topology.message(to: priority, notBefore: notBefore, properties: properties, body: message.body)
        settleAfter({ connection throws(AMQPError) in try await connection.publish(copy, deadline: self.configuration.publishDeadline) },
                    origins: Origins(first: Origin(message, generation: generation)))
    }

    /// Runs `publish` (confirmed), then acks the origins; if it fails they go back to their queue.
    private func settleAfter(_ publish: @escaping @Sendable (AMQPConnection) async throws(AMQPError) -> Void, origins: Origins) {
        let connection = link
        settling.add()
        Task {
            do throws(AMQPError) {
                try await publish(connection)
                origins.forEach { connection.ack($0.tag, generation: $0.generation) }
            } catch {
                // Not acked: the message returns (now, or when its channel is gone) and is settled again.
                origins.forEach { connection.giveBack($0.tag, generation: $0.generation) }
            }
            settling.countDown()
        }
    }

    // MARK: Publishing

    func publish(_ job: Job) async throws(AMQPError) {
        try await publish(job, on: link)
    }

    /// Publishes a job to its priority queue, through the delay cascade when it is not due yet.
    func publish(_ job: Job, on connection: AMQPConnection) async throws(AMQPError) {
        let (properties, body) = WireFormat.encode(job)
        let message = topology.message(to: job.priority, notBefore: job.notBefore, properties: properties, body: body)
        try await connection.publish(message, deadline: configuration.publishDeadline)
    }
}
