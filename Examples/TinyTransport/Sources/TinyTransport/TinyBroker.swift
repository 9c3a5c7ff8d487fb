@_spi(Transport) import Warren
import Synchronization

/// What a real transport's wire does, in memory: a message log where each published job waits
/// under a delivery tag until it is acknowledged or dead-lettered. It stands in for RabbitMQ,
/// Redis or a database table; the broker below is the part a transport author writes.
public final class MessageLog: Sendable {
    private struct State {
        var nextTag: UInt64 = 0
        var unacked: [UInt64: Job] = [:]
        var acked = 0
        var dead: [Job] = []
        var returned: [Job] = []
    }
    private let state = Mutex(State())

    public init() {}

    /// Messages delivered and not settled yet.
    public var unackedCount: Int { state.withLock { $0.unacked.count } }
    public var ackedCount: Int { state.withLock { $0.acked } }
    public var deadLetters: [Job] { state.withLock { $0.dead } }
    /// Messages given back unsettled, for another consumer (a nack with requeue).
    public var returned: [Job] { state.withLock { $0.returned } }

    /// Publishes the jobs and delivers them at once: their delivery tags.
    func publishAndDeliver(_ jobs: [Job]) -> [UInt64] {
        state.withLock { state in
            jobs.map { job in
                state.nextTag += 1
                state.unacked[state.nextTag] = job
                return state.nextTag
            }
        }
    }

    func ack(_ tag: UInt64) {
        state.withLock { state in
            if state.unacked.removeValue(forKey: tag) != nil { state.acked += 1 }
        }
    }

    func deadLetter(_ tag: UInt64, as job: Job) {
        state.withLock { state in
            if state.unacked.removeValue(forKey: tag) != nil { state.dead.append(job) }
        }
    }

    /// Puts delivered messages back for another consumer.
    func giveBack(_ tags: [UInt64]) {
        state.withLock { state in
            for tag in tags { if let job = state.unacked.removeValue(forKey: tag) { state.returned.append(job) } }
        }
    }

    /// Takes back messages the engine refused (the publish fails as a whole).
    func withdraw(_ tags: [UInt64]) {
        state.withLock { state in for tag in tags { state.unacked[tag] = nil } }
    }
}

/// A Warren broker over `MessageLog`: jobs arrive as messages, the local engine (`LocalQueue`)
/// keeps the queue contract (priorities, delays, retries, dependencies, dedup, cancellation,
/// events), and each job's message is settled when the job leaves the engine.
public final class TinyBroker: Broker {
    public let log: MessageLog
    private let engine: LocalQueue
    /// The delivery tag of each job held in the engine.
    private let tags: Tags

    public init(configuration: QueueConfiguration = QueueConfiguration(), log: MessageLog = MessageLog()) {
        let tags = Tags()
        self.log = log
        self.tags = tags
        engine = LocalQueue(configuration: configuration, clock: SystemClock(), random: SystemRandomNumberGenerator()) { departures in
            for departure in departures {
                guard let tag = tags.take(departure.id) else { continue }
                switch departure {
                case .completed, .cancelled: log.ack(tag)
                case let .deadLettered(job): log.deadLetter(tag, as: job)
                // The engine retries locally (`QueueConfiguration.retries` is `.local`): a retry
                // stays here under the same message.
                case let .retry(job): tags.put(job.id, tag)
                }
            }
        }
    }

    // MARK: JobSubmitter

    public func enqueue(_ jobs: [Job]) async throws(EnqueueRefusal) {
        let delivered = log.publishAndDeliver(jobs)
        for (job, tag) in zip(jobs, delivered) { tags.put(job.id, tag) }
        do {
            try engine.enqueue(jobs)
        } catch {
            for job in jobs { _ = tags.take(job.id) }
            log.withdraw(delivered)
            throw error
        }
    }

    public func cancel(_ id: JobID) async -> CancelResult { engine.cancel(id) }

    // MARK: WorkSource

    public func next(_ filter: DeliveryFilter) async -> Delivery? { await engine.next(filter) }
    public func tryNext(_ filter: DeliveryFilter) async -> Delivery? { engine.tryNext(filter) }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome) async { engine.settle(delivery, outcome) }
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter) async -> Delivery? {
        engine.settle(delivery, outcome, thenTryNext: filter)
    }
    public func reportProgress(_ id: JobID, _ percent: Double) async { engine.reportProgress(id, percent) }
    public func reoffer() async { engine.reoffer() }

    /// A worker is stopping: no job that has not started will start here, so their messages go
    /// back to the wire at once, for other consumers; running jobs still settle. (`WorkSource`
    /// gives this a default that does nothing, right only for a broker with nothing to give back.)
    public func stopTakingWork() async {
        log.giveBack(engine.withdrawUnstarted().compactMap { tags.take($0.id) })
    }

    // MARK: JobObserving

    public func events() -> AsyncStream<JobEvent> { engine.events() }
    public func snapshot(_ id: JobID) async -> Job? { engine.snapshot(id) }
    public func outcome(of id: JobID) async -> JobOutcome? { await engine.outcome(of: id) }
    public func statistics() async -> QueueStatistics { engine.statistics() }

    public func close() async { engine.close() }
}

/// Delivery tags by job id.
private final class Tags: Sendable {
    private let byJob = Mutex<[JobID: UInt64]>([:])
    func put(_ id: JobID, _ tag: UInt64) { byJob.withLock { $0[id] = tag } }
    func take(_ id: JobID) -> UInt64? { byJob.withLock { $0.removeValue(forKey: id) } }
}
