import CoreMetrics
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
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
        /// Where the instances on this queue share what they know of jobs (`JobStateStore`): with
        /// one, a job is not run again once it ended or while another live instance holds it,
        /// cancels reach whichever instance holds a job, and status and results are readable from
        /// anywhere. nil: what this process knows (dedup, status, cancel) is all there is.
        public var stateStore: (any JobStateStore)?
        /// How often the instance's lease in the state store is renewed (a third of the store's lease, at most).
        public var leaseRenewal: Duration = .seconds(3)

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
    /// The link's status and consumption, under one lock.
    private let link = Locked(LinkState())
    private let consumers = Consumers()
    /// Jobs published here: the dedup window, status until they arrive, early cancellations.
    private let published: PublishedJobs
    /// What arrives: decoding, dead letters on arrival, delays, dependency holds.
    private let ingest: Ingest
    /// What leaves: acks, retries, replies, dead letters, events, hand-backs.
    private let settlement: Settlement
    /// The job-state store, when configured.
    private let store: StoreLink?
    /// Told when a retry is handed off (jobs here may wait for it to end elsewhere); nil once closed.
    private let retryWatch = Locked<Ingest?>(nil)

    public init(_ configuration: Configuration, clock: any WarrenClock = SystemClock()) {
        self.configuration = configuration
        let topology = Topology(
            queue: configuration.queue, queueType: configuration.queueType, maxLength: configuration.maxQueueLength,
            deliveryLimit: configuration.deliveryLimit)
        self.topology = topology
        // The connection first, started once the parts that serve it exist.
        let connection = AMQPConnection(
            .init(
                urls: configuration.urls, name: configuration.queue, ackBatch: max(1, min(256, Int(configuration.prefetch) / 4)),
                linger: configuration.deliveryLinger))
        self.connection = connection
        let link = self.link, consumers = self.consumers
        let deliveries = Deliveries()
        let store = configuration.stateStore.map { StoreLink(store: $0, queue: configuration.queue) }
        self.store = store
        let settlement = Settlement(
            configuration: configuration, topology: topology, connection: connection, deliveries: deliveries, link: link, store: store)
        self.settlement = settlement
        // Everything prefetched from the five queues fits, with room for jobs waiting on dependencies.
        let capacity = Int(configuration.prefetch) * JobPriority.allCases.count * 2 + 1_000
        var queueConfiguration = QueueConfiguration(
            capacity: capacity, finishedWindow: min(10_000, configuration.dedupWindow), dedupWindow: configuration.dedupWindow,
            retryPolicy: configuration.retryPolicy, retries: .handOff)
        queueConfiguration.retryPolicies = configuration.retryPolicies
        // Made after the engine it feeds; the engine's departures reach it through this (cleared
        // at close, which ends the cycle engine → departures → ingest → engine).
        let laterIngest = self.retryWatch
        let local = LocalQueue(
            configuration: queueConfiguration, clock: clock, random: SystemRandomNumberGenerator(),
            departures: { departures in
                settlement.settle(departures)
                if departures.contains(where: { if case .retry = $0 { true } else { false } }) { laterIngest.withLock { $0 }?.handedOffForRetry() }
            })
        self.local = local
        published = PublishedJobs(window: configuration.dedupWindow)
        let ingest = Ingest(
            configuration: configuration, local: local, settlement: settlement, deliveries: deliveries, published: published, link: link,
            store: store, clock: clock)
        laterIngest.withLock { $0 = ingest }
        self.ingest = ingest
        if let store {
            store.keepLease(every: configuration.leaseRenewal)
            // A cancel asked anywhere: the job stops here if it runs, waits or is held here.
            store.store.watchCancels { id in
                if local.cancel(id) == .unknown { _ = ingest.cancelHeld(id) }
            }
        }
        let prefetch = configuration.prefetch
        // swift-metrics, to whatever backend the process bootstrapped (see `JobMetrics`).
        let reconnectCounter = Counter(label: "warren_broker_reconnects_total", dimensions: [("queue", configuration.queue)])
        connection.start(
            setup: { session throws(AMQPError) in
                let notes = try topology.declare(session.raw)
                let consuming = link.withLock { link in
                    link.serverVersion = session.raw.serverVersion
                    link.topologyNotes = notes
                    return link.consuming
                }
                if consuming { try consumers.start(session, topology: topology, prefetch: prefetch) }
            },
            onMessage: { burst, generation in ingest.receive(burst, generation: generation) },
            onCancel: { tag in consumers.cancelled(tag) },
            reconnected: { reconnectCounter.increment() })
    }

    /// Starts consuming, once: a broker consumes only when asked for work, so a process that only
    /// publishes never takes jobs by accident.
    private func startConsuming() {
        guard link.withLock({ link in
            defer { link.consuming = true }
            return !link.consuming
        }) else { return }
        let topology = self.topology, prefetch = configuration.prefetch, connection = self.connection, consumers = self.consumers
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
        let topology = self.topology, consumers = self.consumers
        while link.withLock({ $0.consuming }), !consumers.cancelledPriorities.isEmpty {
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
        isReady && link.withLock { $0.consuming && !$0.handingBack } && consumers.cancelledPriorities.isEmpty
    }

    /// Consumers RabbitMQ cancelled (their queue's node went down, or the queue was deleted) and
    /// consumers started again once their queue answered, from now on. Any number of followers.
    public var consumerChanges: AsyncStream<ConsumerChange> { consumers.changes() }

    /// Whether a graceful stop has begun (`stopConsuming`).
    public var isDraining: Bool { link.withLock { $0.handingBack } }

    /// Why the connection is down, if it is.
    public var disconnectReason: String? {
        // Also while the next attempt runs: a configuration RabbitMQ refuses is retried every few
        // seconds, and `/readyz` must say why in between (it said only "not connected").
        isReady ? nil : connection.failure
    }

    /// The priority queues whose consumer the broker cancelled and that are not consumed again yet.
    public var unconsumedQueues: [String] { consumers.cancelledPriorities.map(topology.brokerQueue) }

    /// The version of the RabbitMQ node last connected to (0.0.0 before the first connection).
    public var brokerVersion: BrokerVersion { link.withLock { $0.serverVersion } }

    /// What the last topology declaration found and accepted (an older Warren's quorum queues
    /// without a dead-letter exchange): worth a warning in the log.
    public var topologyNotes: [String] { link.withLock { $0.topologyNotes } }

    /// Times the connection (or its channel) was lost and set up again.
    public var reconnects: Int { max(0, connection.connectCount - 1) }

    /// Waits until the connection is up (or `timeout` passes); throws the last connection error.
    public func waitUntilReady(timeout: Duration = .seconds(30)) async throws(AMQPError) {
        // Followed before looking, so a change between the look and the wait is not missed.
        let updates = connection.statusUpdates
        if !isReady, connection.status != .closed {
            _ = await Deadline.first(of: timeout) {
                for await status in updates {
                    switch status {
                    case .connected, .closed: return
                    case .connecting, .disconnected: continue
                    }
                }
            }
        }
        switch connection.status {
        case .connected: return
        case .closed: throw .closed
        case let .disconnected(reason):
            throw .unreachable(host: configuration.url.host, port: configuration.url.port, reason: reason)
        case .connecting:
            throw .unreachable(host: configuration.url.host, port: configuration.url.port, reason: "not connected after \(timeout)")
        }
    }

    /// Connection changes: connected (with its generation), disconnected with the reason, closed.
    /// Any number of followers; each stream ends when the broker closes.
    public var connectionUpdates: AsyncStream<ConnectionState> { connection.statusUpdates }

    // MARK: Broker

    public func enqueue(_ jobs: [Job]) async throws(EnqueueRefusal) {
        // Known here: published by this process (within the dedup window) or held here.
        let published = self.published, local = self.local, settlement = self.settlement
        let ordered = try BatchRules.admit(
            jobs, isNew: { !published.isKnown($0.id) && local.snapshot($0.id) == nil },
            isKnown: { published.isKnown($0) || local.snapshot($0) != nil })
        published.remember(ordered)
        var failure: EnqueueRefusal?
        await withTaskGroup(of: (JobID, AMQPError?).self) { group in
            for job in ordered {
                group.addTask {
                    do throws(AMQPError) { try await settlement.publish(job) } catch {
                        return (job.id, error)
                    }
                    return (job.id, nil)
                }
            }
            for await (id, error) in group {
                guard let error else { continue }
                published.forget(id)
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
        return started(await local.next(filter))
    }

    public func tryNext(_ filter: DeliveryFilter) async -> Delivery? {
        startConsuming()
        return started(local.tryNext(filter))
    }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome) async { local.settle(delivery, outcome) }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter) async -> Delivery? {
        started(local.settle(delivery, outcome, thenTryNext: filter))
    }

    /// Notes in the state store that the delivered job runs here.
    private func started(_ delivery: Delivery?) -> Delivery? {
        if let store, let delivery { store.note(delivery.job.id, .started(attempt: delivery.job.attempt)) }
        return delivery
    }

    /// Cancels the job here and, with a state store, wherever it is or will be.
    public func cancel(_ id: JobID) async -> CancelResult {
        var result = local.cancel(id)
        if result == .unknown, ingest.cancelHeld(id) { result = .cancelled }
        if result == .unknown, published.isKnown(id) {
            // Published, not received yet: it is cancelled when it arrives here.
            published.tombstone(id)
            result = .cancelled
        }
        guard let store else { return result }
        do {
            switch try await store.store.requestCancel(id) {
            case let .finished(status):
                return result == .unknown ? .alreadyFinished(status) : result
            case let .requested(status, _):
                // No status: no instance has taken it yet (the mark stays: it is cancelled if it arrives).
                guard result == .unknown, let status else { return result }
                return status == .running ? .cancelling : .cancelled
            }
        } catch {
            return result
        }
    }

    public func reportProgress(_ id: JobID, _ percent: Double) async {
        local.reportProgress(id, percent)
        store?.note(id, .progress(percent))
    }
    public func reoffer() async { local.reoffer() }
    public func events() -> AsyncStream<JobEvent> { local.events() }
    /// The job as this process knows it: held here, or published here and not received yet
    /// (`queued`, or `pending` while delayed or waiting on dependencies).
    public func snapshot(_ id: JobID) async -> Job? { local.snapshot(id) ?? published.published(id) }
    /// The job as this process holds it since its message arrived here (nil before that, when
    /// `snapshot` answers from what was published).
    public func received(_ id: JobID) -> Job? { local.snapshot(id) }

    /// Waits until the job ends. With a state store, a job this process does not hold is
    /// followed there, whichever instance runs it; nil when no one knows it (or the broker closes).
    public func outcome(of id: JobID) async -> JobOutcome? {
        let publishedHere = published.isKnown(id)
        guard let store, local.snapshot(id) == nil else { return await local.outcome(of: id, waitIfUnknown: publishedHere) }
        if let finishedHere = await local.outcome(of: id, waitIfUnknown: false) { return finishedHere }
        guard publishedHere else { return await outcome(of: id, in: store) }
        // Published here: it may arrive here or anywhere else; whichever says first.
        return await withTaskGroup(of: JobOutcome?.self) { group in
            group.addTask { await self.local.outcome(of: id, waitIfUnknown: true) }
            group.addTask { await self.outcome(of: id, in: store) }
            defer { group.cancelAll() }
            for await outcome in group where outcome != nil { return outcome }
            return nil
        }
    }

    /// Follows the job in the store until it ends there; nil when the store has no record of a
    /// job not published here, or the broker closes.
    private func outcome(of id: JobID, in store: StoreLink) async -> JobOutcome? {
        let published = self.published
        while !Task.isCancelled, !local.isClosed {
            let found = Locked<(outcome: JobOutcome?, unknown: Bool)>((nil, false))
            // Woken when it ends anywhere; read again every few seconds all the same (pub/sub says
            // nothing while the store is unreachable; then the read fails and the wait runs out).
            await store.waitForEnding(of: id, atMost: .seconds(5)) {
                let stored: StoredJob?
                do { stored = try await store.store.job(id) } catch { return false }
                guard let record = stored else {
                    // Not taken by any instance yet: worth waiting for only if it was published here.
                    let unknown = !published.isKnown(id)
                    found.withLock { $0.unknown = unknown }
                    return unknown
                }
                found.withLock { $0.outcome = record.outcome }
                return record.outcome != nil
            }
            let (outcome, unknown) = found.withLock { $0 }
            if let outcome { return outcome }
            if unknown { return nil }
        }
        return nil
    }

    /// The job as the state store knows it (whichever instance holds or held it); nil without a
    /// store, when it does not answer, or when it has no record.
    public func storedJob(_ id: JobID) async -> StoredJob? {
        guard let store else { return nil }
        return try? await store.store.job(id)
    }

    public func statistics() async -> QueueStatistics { local.statistics() }

    /// Messages that were not valid jobs, dead-lettered on arrival.
    public var malformedCount: Int { ingest.malformedCount }

    /// The first half of a graceful shutdown: cancels the consumers (`basic.cancel`) and hands every
    /// job that has not started back to RabbitMQ, so other consumers take them at once: with
    /// `basic.nack` (requeue), or, on a quorum queue whose broker counts that toward the delivery
    /// limit (before RabbitMQ 4.3), as a copy at the end of its queue, confirmed before the
    /// original is acked, so restarts never wear down a job's delivery count. Running jobs keep
    /// their messages and settle as usual; publishing still works. Call
    /// after the worker pool has stopped taking jobs, then let it finish, then `close()`.
    public func stopConsuming() async {
        let wasConsuming = link.withLock { link in
            defer {
                link.handingBack = true
                link.consuming = false
            }
            return link.consuming
        }
        // Not connected: no channel has consumers to cancel, and a command would wait for a
        // connection that may never come (a broker unreachable since start-up kept SIGTERM waiting).
        if wasConsuming, isReady {
            // Deliveries the broker sent before the cancel-ok are read after it and handed back.
            // Bounded: a connection lost meanwhile, or a broker that stopped answering, must not
            // hold up the shutdown (the deliveries then go back when the channel closes).
            let connection = self.connection, consumers = self.consumers
            _ = await Deadline.first(of: .seconds(5)) {
                _ = try? await connection.perform { session throws(AMQPError) in try consumers.stop(session) }
            }
        }
        consumers.endCancellations()
        let unstarted = local.withdrawUnstarted()
        // Given up in the store first, so that the other instances take them at once.
        await store?.release(unstarted.map(\.id))
        ingest.handBack(unstarted)
    }

    /// Settlements under way: publishes awaiting RabbitMQ's confirm, records awaiting the job-state
    /// store. What a shutdown that ran out of time was still waiting for.
    public var settlementsInProgress: Int { settlement.settling.count }

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
        ingest.stop()
        retryWatch.withLock { $0 = nil }
        await settlement.settling.wait()
        await store?.stop()
        await connection.close()
    }

    /// Whether the job-state store answers, and how often the broker went on without it; nil
    /// without a store.
    public var stateStoreHealth: StateStoreHealth? { store?.health }

    /// Runs `body` on the connection's I/O thread (inspection and tooling).
    func perform<T: Sendable>(_ body: @escaping @Sendable (ConnectionSession) throws(AMQPError) -> T) async throws(AMQPError) -> T {
        try await connection.perform(body)
    }
}
