import AsyncHTTPClient
import Foundation
import Hummingbird
import Instrumentation
public import Logging
import NIOCore
import ServiceLifecycle
import Tracing
import UnixSignals
public import Warren
public import WarrenAMQP
package import WarrenRedis

/// `warren serve`: a worker on RabbitMQ running the handlers of a handlers file (and any registered
/// in code), with the operations HTTP server, until SIGTERM or SIGINT; then it drains: consumers
/// cancelled, unstarted jobs handed back, running jobs given the grace period, connection closed.
public final class WorkerService: Sendable {
    public let configuration: ServiceConfiguration
    public let broker: AMQPBroker
    public let observer: JobObserver
    let pool: WorkerPool
    let logger: Logger
    let httpClient: HTTPClient
    let handlerNames: [String]
    /// The job-state store's connection, when `state.url` is set.
    let stateClient: RedisClient?
    /// When the shutdown's safety net ends the process (set by the graceful shutdown of `run`).
    let exitDeadline = Locked<ContinuousClock.Instant?>(nil)

    /// Builds the worker. `registry` may already hold handlers registered in Swift; the handlers
    /// file's entries are added to it (a name in both is an error).
    public init(
        configuration: ServiceConfiguration, handlers: HandlersFile?, registry: HandlerRegistry = HandlerRegistry(), logger: Logger
    ) throws {
        self.configuration = configuration
        self.logger = logger
        let client = HTTPHandler.makeClient()
        httpClient = client
        var registry = registry
        var defaults: [String: JobDefaults] = [:]
        var policies: [String: RetryPolicy] = [:]
        var limits: [String: Int] = [:]
        for entry in handlers?.entries ?? [] {
            // A handler's own limit applies within the worker's: one pool, one ceiling, one priority order.
            if let limit = entry.concurrency { limits[entry.name] = limit }
            defaults[entry.name] = JobDefaults(maxRetries: entry.retries, requiredCapabilities: entry.capabilities)
            if let backoff = entry.backoff { policies[entry.name] = backoff }
            switch entry.action {
            case let .http(action):
                // The request's own deadline: the attempt's timeout (a longer one from the message
                // still ends the attempt through cancellation).
                let timeout = entry.timeout ?? configuration.defaultTimeout ?? ServiceConfiguration.longestDuration
                let handler = HTTPHandler(action: action, timeout: timeout, client: client, redactor: configuration.redactor)
                try registry.registerRaw(entry.name, timeout: entry.timeout) { payload, context in try await handler.run(payload, context) }
            case let .exec(action):
                let handler = ExecHandler(action: action)
                try registry.registerRaw(entry.name, timeout: entry.timeout) { payload, context in try await handler.run(payload, context) }
            }
        }
        handlerNames = registry.names
        var brokerConfiguration = AMQPBroker.Configuration(
            url: configuration.brokerURL, queue: configuration.queue, queueType: configuration.queueType, prefetch: configuration.prefetch,
            retryPolicy: configuration.retryPolicy, defaultMaxRetries: configuration.maxRetries, maxQueueLength: configuration.maxQueueLength)
        brokerConfiguration.urls = configuration.brokerURLs
        brokerConfiguration.deliveryLimit = configuration.deliveryLimit
        brokerConfiguration.jobDefaults = defaults
        brokerConfiguration.retryPolicies = policies
        brokerConfiguration.publishesEvents = configuration.publishesEvents
        if let stateURL = configuration.stateURL {
            // Each way it fails said once until it is back, and when it is back.
            let said = Locked<(down: Bool, reasons: Set<String>)>((false, []))
            let store = Self.stateStore(configuration, url: stateURL) { [logger] status in
                switch status {
                case let .down(reason):
                    let first = said.withLock { state -> Bool in
                        state.down = true
                        return state.reasons.insert(reason).inserted
                    }
                    guard first else { return }
                    logger.warning(
                        "the job-state store cannot be used; jobs run on what this process knows until it can",
                        metadata: ["state": "\(stateURL)", "reason": "\(reason)"])
                case .connected:
                    let wasDown = said.withLock { state in
                        defer { state = (false, []) }
                        return state.down
                    }
                    guard wasDown else { return }
                    logger.info("the job-state store answers again", metadata: ["state": "\(stateURL)"])
                case .connecting, .closed: break
                }
            }
            stateClient = store.client
            brokerConfiguration.stateStore = store.store
            brokerConfiguration.leaseRenewal = configuration.stateLease / 3
        } else {
            stateClient = nil
        }
        broker = AMQPBroker(brokerConfiguration)
        observer = JobObserver(
            queue: configuration.queue, handlerNames: Set(registry.names), recentJobs: configuration.recentJobs, logger: logger)
        var poolConfiguration = WorkerPoolConfiguration(
            concurrency: configuration.concurrency, reservedForCritical: configuration.reservedForCritical,
            capabilities: configuration.capabilities, defaultTimeout: configuration.defaultTimeout,
            shutdownGrace: configuration.shutdownGrace - Self.settlingReserve(configuration.shutdownGrace), limits: limits,
            logger: logger)
        // A span per attempt, continuing the producer's W3C trace and passed on to http and exec
        // handlers; through an exporting tracer when the process bootstrapped one.
        poolConfiguration.tracer = InstrumentationSystem.tracer is NoOpTracer ? TraceContextTracer() : nil
        pool = WorkerPool(broker: broker, registry: registry, configuration: poolConfiguration)
    }

    /// The job-state store of `configuration` at `url`, for this process: its instance name is
    /// the host's and the process id.
    package static func stateStore(
        _ configuration: ServiceConfiguration, url: RedisURL, onStatus: @escaping @Sendable (RedisClient.Status) -> Void = { _ in }
    ) -> (client: RedisClient, store: RedisJobStore) {
        let instance = "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
        let client = RedisClient(url: url, name: "warren-\(instance)", onStatus: onStatus)
        var storeConfiguration = RedisJobStore.Configuration(queue: configuration.queue, instance: instance)
        storeConfiguration.lease = configuration.stateLease
        storeConfiguration.retention = configuration.stateRetention
        storeConfiguration.resultLimit = configuration.stateResultLimit
        return (client, RedisJobStore(client: client, configuration: storeConfiguration))
    }

    /// Runs until SIGTERM or SIGINT, then drains and returns.
    public func run() async throws {
        var services: [any Service] = []
        if let address = configuration.httpAddress {
            services.append(OperationsServer.application(for: self, host: address.host, port: address.port))
        }
        services.append(WorkerLoop(service: self))
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// The worker alone, without signals or the HTTP server (tests, embedding): runs until the
    /// calling task is cancelled, then drains.
    public func runWorker() async {
        logger.info("warren is starting", metadata: [
            "queue": "\(configuration.queue)", "broker": "\(configuration.brokerURLs.map(\.description).joined(separator: ","))", "handlers": "\(handlerNames.joined(separator: ","))",
            "concurrency": "\(configuration.concurrency)",
        ])
        if handlerNames.isEmpty {
            logger.warning("no handlers are configured: every job will be dead-lettered as unknown_job_name (set handlers.file)")
        }
        if let stateClient, let instance = broker.configuration.stateStore?.instance {
            // Its first connection made or failed (at most 5 s): jobs that arrive meanwhile wait for it.
            // (Why it cannot be used, if it cannot, is logged as its status changes.)
            if (try? await stateClient.waitUntilConnected(within: .seconds(5), untilFirstFailure: true)) != nil {
                logger.info("using the job-state store", metadata: ["state": "\(stateClient.url)", "instance": "\(instance)"])
            }
        }
        let events = broker.events()
        let observing = Task { await observer.follow(events) }
        let updates = broker.connectionUpdates
        // The connection may have come up before we started listening.
        if broker.isReady { logConnected() }
        let connection = Task { [self] in
            // Each reason once until the connection is back: a broker down for long (tried every
            // 2 s per address) or a configuration that does not match its queues is said once.
            var said: Set<String> = []
            for await state in updates {
                switch state {
                case .connected:
                    said = []
                    logConnected()
                case let .disconnected(reason):
                    guard said.insert(reason).inserted else { continue }
                    if reason.contains("exists with other arguments") {
                        logger.error("RabbitMQ's queues do not match this configuration; retrying until they do", metadata: ["reason": "\(reason)"])
                    } else {
                        logger.warning("lost the RabbitMQ connection; reconnecting", metadata: ["reason": "\(reason)"])
                    }
                case .connecting, .closed: break
                }
            }
        }
        let changes = broker.consumerChanges
        let consumers = Task { [logger, topology = broker.topology] in
            for await change in changes {
                switch change {
                case let .cancelled(priority):
                    logger.warning(
                        "RabbitMQ cancelled the consumer of \(topology.brokerQueue(priority)) (its node is down or the queue was deleted); consuming it again once it is back",
                        metadata: ["queue": "\(topology.brokerQueue(priority))"])
                case let .restarted(priority):
                    logger.info("consuming \(topology.brokerQueue(priority)) again", metadata: ["queue": "\(topology.brokerQueue(priority))"])
                }
            }
        }
        await broker.run(pool)
        // Commands of jobs stopped by the shutdown get up to a second more to end after SIGTERM
        // (swift-subprocess sends SIGKILL a second after it), within half of what is left of the
        // grace; then Warren sends SIGKILL itself: none outlives the process.
        let left = exitDeadline.withLock { $0 }.map { $0 - .now } ?? Self.settlingReserve(configuration.shutdownGrace)
        await HandlerProcesses.end(patience: min(.seconds(1), left / 2), logger: logger)
        logger.info("warren drained and stopped")
        connection.cancel()
        consumers.cancel()
        await observing.value
        try? await httpClient.shutdown()
        await stateClient?.close()
    }

    private func logConnected() {
        logger.info("connected to RabbitMQ; consuming", metadata: ["queue": "\(configuration.queue)", "rabbitmq": "\(broker.brokerVersion)"])
        for note in broker.topologyNotes { logger.warning("\(note)") }
    }

    /// The end of the grace period kept for settling the last jobs and closing the connection:
    /// a fifth of it, at most 5 s. Running jobs get the rest.
    static func settlingReserve(_ grace: Duration) -> Duration { min(.seconds(5), grace / 5) }

    /// Ready: connected to RabbitMQ and consuming all five priority queues.
    public var isReady: Bool { broker.isConsuming }

    /// Why not ready, for `/readyz`.
    var notReadyReason: String {
        let unconsumed = broker.unconsumedQueues
        guard unconsumed.isEmpty else {
            return "not consuming \(unconsumed.joined(separator: ", ")): RabbitMQ cancelled the consumer (the queue's node is down or the queue was deleted); consuming again once it is back"
        }
        if broker.isDraining { return "draining: shutting down, finishing running jobs" }
        if broker.isReady { return "not consuming yet" }
        return "not connected to RabbitMQ" + (broker.disconnectReason.map { " (\($0))" } ?? "")
    }

    /// The job-state store, for `/readyz`: nil when there is none or it answers; otherwise why it is
    /// degraded (jobs keep flowing on what this process knows).
    var stateStoreDegraded: String? {
        guard let health = broker.stateStoreHealth, !health.available else { return nil }
        return "state store degraded (\(health.lastError ?? "not answering")): jobs run at least once, dedup and cancel per process, until it answers"
    }
}

/// The worker as a lifecycle service: a graceful shutdown cancels its run, which drains.
struct WorkerLoop: Service {
    let service: WorkerService

    func run() async throws {
        let service = self.service
        await cancelWhenGracefulShutdown {
            await withTaskCancellationHandler {
                await service.runWorker()
            } onCancel: {
                let grace = service.configuration.shutdownGrace
                service.exitDeadline.withLock { $0 = .now + grace }
                service.logger.info("shutting down: finishing running jobs, handing back the rest", metadata: ["grace": "\(grace)"])
                // Shutdown always wins: whatever the broker does (unreachable, blocking publishers
                // under a resource alarm, a half-open connection), the process ends within its
                // grace period. What it did not settle is still unacked: RabbitMQ hands it to
                // another consumer. On a thread of the dispatch pool, which nothing here can hold up.
                DispatchQueue.global().asyncAfter(deadline: .now() + grace.timeInterval) {
                    // What it was still waiting for: jobs that ignored being stopped, or RabbitMQ
                    // (confirms of settlements, then the close).
                    service.logger.error(
                        "the drain did not end within worker.shutdown_grace (\(grace)): exiting; unsettled jobs return to RabbitMQ",
                        metadata: ["running": "\(service.pool.running)", "settling": "\(service.broker.settlementsInProgress)"])
                    HandlerProcesses.kill(logger: service.logger)
                    exit(1)
                }
            }
        }
    }
}
