/// The embedded broker, Warren's default: the whole queue contract in this process, nothing to
/// install. Jobs do not survive the process.
public final class InMemoryBroker: Broker {
    private let local: LocalQueue

    public init(
        configuration: QueueConfiguration = QueueConfiguration(),
        clock: any WarrenClock = SystemClock(),
        random: any RandomNumberGenerator & Sendable = SystemRandomNumberGenerator()
    ) {
        local = LocalQueue(configuration: configuration, clock: clock, random: random)
    }

    public func enqueue(_ jobs: [Job]) async throws(EnqueueRefusal) { try local.enqueue(jobs) }
    public func next(_ filter: DeliveryFilter) async -> Delivery? { await local.next(filter) }
    public func tryNext(_ filter: DeliveryFilter) async -> Delivery? { local.tryNext(filter) }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome) async { local.settle(delivery, outcome) }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter) async -> Delivery? {
        local.settle(delivery, outcome, thenTryNext: filter)
    }
    public func cancel(_ id: JobID) async -> CancelResult { local.cancel(id) }
    public func reportProgress(_ id: JobID, _ percent: Double) async { local.reportProgress(id, percent) }
    public func reoffer() async { local.reoffer() }
    public func events() -> AsyncStream<JobEvent> { local.events() }
    public func snapshot(_ id: JobID) async -> Job? { local.snapshot(id) }
    public func outcome(of id: JobID) async -> JobOutcome? { await local.outcome(of: id) }
    public func statistics() async -> QueueStatistics { local.statistics() }
    public func close() async { local.close() }

    /// Consumers parked in `next` (for tests).
    var waitingConsumers: Int { local.waitingConsumers }
}
