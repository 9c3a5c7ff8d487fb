public import ServiceLifecycle
import Logging

/// A broker and the worker pool that runs its jobs, as one swift-service-lifecycle `Service`: put
/// it in a `ServiceGroup` and SIGTERM (or any graceful shutdown) drains it.
///
/// A drain, in order: the pool stops taking jobs; the broker stops taking work and hands what has
/// not started back (`Broker.stopTakingWork`: RabbitMQ gets those messages back at once, for other
/// workers); running jobs finish within the pool's `shutdownGrace` (past it they are stopped and
/// retried); then the broker closes, once their settlements are done.
public struct WarrenWorker: Service {
    public let broker: any Broker
    public let pool: WorkerPool
    /// Records the broker's job events as swift-metrics while running, when set.
    public let metrics: JobMetrics?

    public init(broker: any Broker, pool: WorkerPool, metrics: JobMetrics? = nil) {
        self.broker = broker
        self.pool = pool
        self.metrics = metrics
    }

    /// - Parameter metricsQueue: when set, the worker emits swift-metrics (`JobMetrics`) with this
    ///   queue name in their `queue` dimension.
    public init(
        broker: any Broker, registry: HandlerRegistry, configuration: WorkerPoolConfiguration = WorkerPoolConfiguration(),
        metricsQueue: String? = nil, clock: any WarrenClock = SystemClock()
    ) {
        self.init(
            broker: broker, pool: WorkerPool(broker: broker, registry: registry, configuration: configuration, clock: clock),
            metrics: metricsQueue.map { JobMetrics(queue: $0, handlerNames: Set(registry.names)) })
    }

    /// Runs until a graceful shutdown of the service group (or until the calling task is
    /// cancelled, or the pool is shut down), then drains.
    public func run() async {
        await cancelWhenGracefulShutdown { await runUntilCancelled() }
    }

    /// Runs until the calling task is cancelled (or the pool is shut down), then drains: for
    /// embedders that manage their own tasks.
    public func runUntilCancelled() async {
        // Subscribed before the first job can start; the stream ends when the broker closes.
        let recording = metrics.map { metrics in
            let events = broker.events()
            return Task { await metrics.follow(events) }
        }
        let (stopped, stop) = AsyncStream.makeStream(of: Never.self)
        let pool = self.pool
        let runner = Task {
            await pool.run()
            stop.finish()
        }
        await withTaskCancellationHandler {
            for await _ in stopped {}
        } onCancel: {
            stop.finish()
        }
        pool.configuration.logger.info(
            "stopping: taking no new jobs, handing unstarted ones back, letting running ones finish",
            metadata: ["running": "\(pool.running)", "grace": "\(pool.configuration.shutdownGrace)"])
        pool.shutdown()
        await broker.stopTakingWork()
        await runner.value
        await broker.close()
        await recording?.value
    }
}
