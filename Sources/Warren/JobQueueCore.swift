#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif
import DequeModule
import HeapModule

/// Which ready jobs a consumer can take now: the "rooms" it has free.
public struct DeliveryFilter: Sendable, Equatable {
    /// Space for one more job: of at most this priority, needing no more than these capabilities.
    public struct Room: Sendable, Equatable {
        /// The lowest priority the room accepts (`.critical` for a reserved slot).
        public var lowest: JobPriority
        /// What the room offers; `nil` accepts any requirement.
        public var capabilities: Set<String>?
        public init(lowest: JobPriority = .background, capabilities: Set<String>? = nil) {
            self.lowest = lowest
            self.capabilities = capabilities
        }
    }

    /// A job is taken when one room admits it.
    public var rooms: [Room]
    /// The capability sets of every worker group this consumer has: a ready job none of them covers
    /// can never run here and is dead-lettered (`noCapableWorker`). `nil` checks nothing.
    public var servable: [Set<String>]?
    /// Per-name limits of the consumer's pool: a job whose name is at its limit is passed over,
    /// and a job taken counts against its name. `nil` limits nothing.
    public var limits: NameLimits?

    public init(rooms: [Room], servable: [Set<String>]? = nil, limits: NameLimits? = nil) {
        self.rooms = rooms
        self.servable = servable
        self.limits = limits
    }

    public static func == (lhs: DeliveryFilter, rhs: DeliveryFilter) -> Bool {
        lhs.rooms == rhs.rooms && lhs.servable == rhs.servable && lhs.limits === rhs.limits
    }

    /// Any job at all.
    public static let any = DeliveryFilter(rooms: [Room()])
    /// Critical jobs only (a reserved slot).
    public static let criticalOnly = DeliveryFilter(rooms: [Room(lowest: .critical)])

    var lowestPriority: JobPriority {
        var lowest = JobPriority.critical
        for room in rooms where room.lowest > lowest { lowest = room.lowest }
        return lowest
    }

    /// Whether some room takes a job of this priority and these requirements. (This and
    /// `canEverServe` take the fields they look at, not the job: passing a job held in a record
    /// would copy it.)
    func admits(priority: JobPriority, requiring required: Set<String>) -> Bool {
        rooms.contains { room in
            guard priority <= room.lowest else { return false }
            guard let capabilities = room.capabilities, !required.isEmpty else { return true }
            return required.isSubset(of: capabilities)
        }
    }

    /// Whether any worker group could ever run a job with these requirements.
    func canEverServe(requiring required: Set<String>) -> Bool {
        guard let servable, !required.isEmpty else { return true }
        return servable.contains { required.isSubset(of: $0) }
    }
}

/// Limits and policy of one queue.
public struct QueueConfiguration: Sendable {
    /// Most unfinished jobs held at once; past it `enqueue` refuses with `queueFull`.
    public var capacity: Int
    /// How many finished jobs are kept whole, for their status and results.
    public var finishedWindow: Int
    /// How many finished jobs' ids (and how each ended) are remembered, for dedup and dependencies:
    /// at least `finishedWindow`. Past the whole jobs, an id costs about 25 bytes (`RecentIDs`).
    public var dedupWindow: Int
    public var retryPolicy: RetryPolicy
    /// Backoff for particular job names, instead of `retryPolicy`.
    public var retryPolicies: [String: RetryPolicy] = [:]
    /// Where a retry waits out its backoff: in this queue's own timers, or handed to the transport
    /// (a broker's delay queues), which brings the job back as a new attempt.
    public var retries: RetryScheduling

    public init(
        capacity: Int = 100_000, finishedWindow: Int = 10_000, dedupWindow: Int = 100_000, retryPolicy: RetryPolicy = .default,
        retries: RetryScheduling = .local
    ) {
        self.capacity = capacity
        self.finishedWindow = finishedWindow
        self.dedupWindow = max(finishedWindow, dedupWindow)
        self.retryPolicy = retryPolicy
        self.retries = retries
    }
}

public enum RetryScheduling: Sendable, Equatable {
    case local
    case handOff
}

/// A job leaving the queue, for a transport to settle its message: ack, publish a retry, or
/// publish a dead letter.
@_spi(Transport) public enum Departure: Sendable {
    case completed(Job)
    /// The next attempt (its `attempt` already counted up), due at `notBefore`.
    case retry(Job)
    case deadLettered(Job)
    case cancelled(Job)

    public var job: Job {
        switch self {
        case let .completed(job), let .retry(job), let .deadLettered(job), let .cancelled(job): job
        }
    }

    /// The job's id, without copying the whole job as `job` does.
    public var id: JobID {
        switch self {
        case let .completed(job), let .retry(job), let .deadLettered(job), let .cancelled(job): job.id
        }
    }
}

/// The queue contract as a synchronous state machine: dedup, priority order, delays, deadlines,
/// dependencies, in-flight tracking, retries with backoff, dead letters, cancellation, progress,
/// events and statistics. No locks, no I/O, no clock: the owner serialises calls and passes `now`.
package struct JobQueueCore {
    public let configuration: QueueConfiguration
    /// Every job known: unfinished ones, and finished ones within the window (oldest first in
    /// `finishedOrder`). One dictionary of references: one lookup serves dedup, status and results.
    private var records: [JobID: JobRecord] = [:]
    private var finishedOrder = Deque<JobRecord>()
    /// How finished jobs ended, by id, past the whole ones in `records` (see `dedupWindow`).
    private var finishedIDs: RecentIDs
    private var liveCount = 0
    private var ready = PriorityLanes<JobRecord>()
    private var timers = Heap<TimerEntry>()
    private var timerSequence: UInt64 = 0
    private var staleTimers = 0
    private var random: AnyRandomNumberGenerator

    private var statusCounts = [Int](repeating: 0, count: JobStatus.allCases.count)
    private var queuedByPriority = [Int](repeating: 0, count: JobPriority.allCases.count)
    private var totals = Totals()
    private var runDurations = DurationRecorder()
    private var waitDurations = DurationRecorder()

    /// Set to collect lifecycle events for `takeEvents()`; off, the queue allocates none.
    public var recordsEvents = false
    private var events: [JobEvent] = []
    /// Set to collect departures for `takeDepartures()`.
    public var recordsDepartures = false
    private var departures: [Departure] = []

    public init(configuration: QueueConfiguration = QueueConfiguration(), random: any RandomNumberGenerator = SystemRandomNumberGenerator()) {
        self.configuration = configuration
        self.random = AnyRandomNumberGenerator(random)
        finishedIDs = RecentIDs(capacity: configuration.dedupWindow)
    }

    // MARK: Enqueue

    /// Enqueues one job (see `enqueue(_:now:)` for batches).
    public mutating func enqueue(_ job: Job, now: Date) throws(EnqueueRefusal) {
        try BatchRules.validate(job)
        let known = records[job.id]
        guard isNew(job, known: known) else { throw .duplicate(job.id) }
        guard liveCount < configuration.capacity else { throw .queueFull(capacity: configuration.capacity) }
        if job.dependencies.contains(job.id) { throw .dependencyCycle([job.id, job.id]) }
        for dependency in job.dependencies where !isKnown(dependency) {
            throw .unknownDependency(job: job.id, dependency: dependency)
        }
        insert(job, returning: known, now: now)
    }

    /// Enqueues a batch atomically: all of it, or (with the reason) none of it. Jobs in the batch may
    /// depend on each other; a cycle among them is refused.
    public mutating func enqueue(_ jobs: [Job], now: Date) throws(EnqueueRefusal) {
        if jobs.count == 1 { return try enqueue(jobs[0], now: now) }
        let ordered = try BatchRules.admit(jobs, isNew: { isNew($0, known: records[$0.id]) }, isKnown: isKnown)
        guard liveCount + jobs.count <= configuration.capacity else {
            throw .queueFull(capacity: configuration.capacity)
        }
        for job in ordered { insert(job, returning: records[job.id], now: now) }
    }

    /// A job is new when its id is unknown, or when it is the next attempt of a job this queue
    /// handed off for a retry.
    private func isNew(_ job: Job, known: JobRecord?) -> Bool {
        guard let known else { return finishedIDs.isEmpty || !finishedIDs.contains(job.id) }
        return known.handedOff && job.attempt > known.job.attempt
    }

    /// Held here, or finished within the dedup window.
    private func isKnown(_ id: JobID) -> Bool {
        records[id] != nil || finishedIDs.contains(id)
    }

    /// How a job that finished past the whole-job window ended.
    private func finishedStatus(_ id: JobID) -> JobStatus? {
        finishedIDs.value(id).flatMap { JobStatus(index: Int($0)) }
    }


    /// `returning`: the record already under the job's id (a job handed off for a retry), looked up by the caller.
    private mutating func insert(_ job: Job, returning: JobRecord?, now: Date) {
        let record = JobRecord(job)
        if let returning {
            // The next attempt of a job handed off for a retry keeps the earlier attempts' errors,
            // and the jobs waiting for it: they would otherwise wait on the old record forever.
            if record.job.errors.isEmpty { record.job.errors = returning.job.errors }
            record.dependents = returning.dependents
            returning.dependents = []
        }
        records[job.id] = record
        liveCount += 1
        statusCounts[JobStatus.pending.index] += 1
        if returning == nil {
            totals.enqueued += 1
            emit(.enqueued, record, now)
        }
        if let deadline = job.deadline { schedule(record, at: deadline, .deadline) }
        var failedDependency: (JobID, JobStatus)?
        for dependency in job.dependencies {
            guard let parent = records[dependency] else {
                if let status = finishedStatus(dependency), status != .completed { failedDependency = (dependency, status) }
                continue
            }
            if !parent.job.status.isTerminal {
                parent.dependents.append(record)
                record.waitingOn += 1
            } else if parent.job.status != .completed {
                failedDependency = (dependency, parent.job.status)
            }
        }
        if let (dependency, status) = failedDependency {
            deadLetter(record, .dependencyFailed(dependency, status: status), now: now)
        } else if record.waitingOn == 0 {
            readyWhenDue(record, now: now)
        }
    }

    /// Records a job that was dead-lettered on arrival (unreadable): known from now on, never run.
    /// A job already held here under the same id is left alone.
    package mutating func recordRejected(_ job: Job, _ reason: DeadLetterReason, now: Date) {
        guard records[job.id] == nil else { return }
        let record = JobRecord(job)
        record.handedOff = true  // the transport settles its message itself: no departure
        records[job.id] = record
        liveCount += 1
        statusCounts[JobStatus.pending.index] += 1
        totals.enqueued += 1
        emit(.enqueued, record, now)
        deadLetter(record, reason, now: now)
    }

    // MARK: Serve

    /// Takes the best ready job the filter admits (highest priority, then arrival) and marks it
    /// running. Jobs whose deadline passed are dead-lettered on the way, never returned.
    public mutating func dequeue(_ filter: DeliveryFilter = .any, now: Date) -> Job? {
        dequeueRecord(filter, now: now)?.job
    }

    /// `dequeue`, as a delivery whose stop signal the record keeps while the attempt runs (for
    /// `stopSignal(of:)`).
    package mutating func deliver(_ filter: DeliveryFilter, now: Date) -> Delivery? {
        guard let record = dequeueRecord(filter, now: now) else { return nil }
        let delivery = Delivery(job: record.job)
        record.stop = delivery.stop
        return delivery
    }

    /// The stop signal of a job's running attempt, when it was taken with `deliver`.
    package func stopSignal(of id: JobID) -> StopSignal? {
        records[id]?.stop
    }

    private mutating func dequeueRecord(_ filter: DeliveryFilter, now: Date) -> JobRecord? {
        guard !filter.rooms.isEmpty else { return nil }
        while let record = ready.removeFirst(lowest: filter.lowestPriority, where: { record in
            guard record.job.status == .queued else { return .drop }
            let required = record.job.requiredCapabilities
            if !filter.canEverServe(requiring: required) { return .take }
            guard filter.admits(priority: record.job.priority, requiring: required) else { return .skip }
            if let limits = filter.limits, !limits.hasRoom(for: record.job.name) { return .skip }
            return .take
        }) {
            if let deadline = record.job.deadline, deadline <= now {
                deadLetter(record, .deadline(deadline), now: now)
                continue
            }
            if !filter.canEverServe(requiring: record.job.requiredCapabilities) {
                deadLetter(record, .noCapableWorker(required: record.job.requiredCapabilities.sorted()), now: now)
                continue
            }
            filter.limits?.take(record.job.name)
            move(record, to: .running)
            record.job.startedAt = now
            totals.started += 1
            waitDurations.record(seconds: now.timeIntervalSince(record.queuedAt))
            emit(.started(attempt: record.job.attempt), record, now)
            return record
        }
        return nil
    }

    // MARK: Settle

    /// Ends the running attempt of `id`. Returns false when the job is not running (a stale report).
    @discardableResult
    public mutating func settle(_ id: JobID, attempt: Int? = nil, _ outcome: AttemptOutcome, now: Date) -> Bool {
        guard let record = records[id], record.job.status == .running else { return false }
        if let attempt, attempt != record.job.attempt { return false }
        record.stop = nil
        // A job asked to stop ends cancelled, whatever its handler returned (a rejection still says why).
        if record.cancelling {
            if case .rejected = outcome {} else {
                finishCancelled(record, now: now)
                return true
            }
        }
        switch outcome {
        case let .completed(result):
            record.job.result = result
            record.job.progress = 100
            move(record, to: .completed)
            record.job.finishedAt = now
            totals.completed += 1
            runDurations.record(seconds: now.timeIntervalSince(record.job.startedAt ?? now))
            emit(.completed, record, now)
            retire(record)
            for dependent in record.dependents where dependent.job.status == .pending && !dependent.handedOff {
                dependent.waitingOn -= 1
                if dependent.waitingOn == 0 { readyWhenDue(dependent, now: now) }
            }
            record.dependents = []
        case let .failed(message):
            failAttempt(record, message: message, timedOut: false, now: now)
        case .timedOut:
            let message = "timed out after \(record.job.timeout.map { "\($0)" } ?? "the timeout its handler sets")"
            failAttempt(record, message: message, timedOut: true, now: now)
        case .cancelled:
            finishCancelled(record, now: now)
        case let .rejected(reason):
            deadLetter(record, reason, now: now)
        case .interrupted:
            interrupt(record, now: now)
        }
        return true
    }

    /// The worker stopped the handler before it ended (a shutdown): the job runs again at once and
    /// the attempt does not count (no error recorded, the same attempt number), so rolling
    /// restarts never use up a job's retries.
    private mutating func interrupt(_ record: JobRecord, now: Date) {
        move(record, to: .retrying)
        emit(.retrying(attempt: record.job.attempt, at: now, error: Self.interruption), record, now)
        record.job.progress = 0
        if configuration.retries == .handOff {
            handOff(record, retryAt: nil, nextAttempt: false)
        } else {
            enqueueReady(record, now: now)
        }
    }

    static let interruption = "interrupted: the worker shut down before the job finished; the attempt does not count"

    private mutating func failAttempt(_ record: JobRecord, message: String, timedOut: Bool, now: Date) {
        let attempt = record.job.attempt
        record.job.errors.append(AttemptError(attempt: attempt, message: message, at: now, timedOut: timedOut))
        if timedOut {
            move(record, to: .timedOut)
            totals.timedOut += 1
            emit(.timedOut(attempt: attempt), record, now)
        } else {
            move(record, to: .failed)
            totals.failed += 1
            emit(.failed(attempt: attempt, error: message), record, now)
        }
        guard attempt <= record.job.maxRetries else {
            deadLetter(record, .retriesExhausted(attempts: attempt, lastError: message), now: now)
            return
        }
        let policy = configuration.retryPolicies.isEmpty ? configuration.retryPolicy : configuration.retryPolicies[record.job.name] ?? configuration.retryPolicy
        let delay = policy.delay(afterAttempt: attempt, using: &random)
        let at = now.addingTimeInterval(delay.timeInterval)
        move(record, to: .retrying)
        totals.retried += 1
        emit(.retrying(attempt: attempt + 1, at: at, error: message), record, now)
        if configuration.retries == .handOff {
            handOff(record, retryAt: at)
        } else if at <= now {
            requeueForRetry(record, now: now)
        } else {
            schedule(record, at: at, .ready)
        }
    }

    /// The transport takes the next attempt; this queue forgets the job but for its id (dedup and
    /// status), until the attempt comes back.
    private mutating func handOff(_ record: JobRecord, retryAt: Date?, nextAttempt: Bool = true) {
        statusCounts[JobStatus.retrying.index] -= 1
        record.handedOff = true
        var next = record.job
        if nextAttempt { next.attempt += 1 }
        next.progress = 0
        next.notBefore = retryAt
        next.status = .pending
        next.startedAt = nil
        if recordsDepartures { departures.append(.retry(next)) }
        retire(record)
    }

    private mutating func requeueForRetry(_ record: JobRecord, now: Date) {
        record.job.attempt += 1
        record.job.progress = 0
        enqueueReady(record, now: now)
    }

    private mutating func finishCancelled(_ record: JobRecord, now: Date) {
        move(record, to: .cancelled)
        record.job.finishedAt = now
        totals.cancelled += 1
        emit(.cancelled, record, now)
        retire(record)
        failDependents(of: record, now: now)
    }

    private mutating func deadLetter(_ record: JobRecord, _ reason: DeadLetterReason, now: Date) {
        move(record, to: .deadLettered)
        record.job.deadLetterReason = reason
        record.job.finishedAt = now
        totals.deadLettered += 1
        emit(.deadLettered(reason), record, now)
        retire(record)
        failDependents(of: record, now: now)
    }

    /// A job that ends without completing takes its waiting dependents with it, naming itself.
    private mutating func failDependents(of record: JobRecord, now: Date) {
        let dependents = record.dependents
        record.dependents = []
        for dependent in dependents where dependent.job.status == .pending && !dependent.handedOff {
            deadLetter(dependent, .dependencyFailed(record.job.id, status: record.job.status), now: now)
        }
    }

    /// A job this queue handed off for a retry ended elsewhere (another instance ran the retry; a
    /// job-state store says how it ended): the jobs here that wait for it go on, or are
    /// dead-lettered naming it, as if it had ended here. Nothing happens if its retry came back here.
    package mutating func endedElsewhere(_ id: JobID, _ status: JobStatus, now: Date) {
        guard status.isTerminal, let record = records[id], record.handedOff, !record.job.status.isTerminal else { return }
        // Retired already (when handed off): only what it says, and what waits for it, change.
        record.job.status = status
        finishedIDs.insert(id, value: UInt8(status.index))
        guard status == .completed else {
            failDependents(of: record, now: now)
            return
        }
        for dependent in record.dependents where dependent.job.status == .pending && !dependent.handedOff {
            dependent.waitingOn -= 1
            if dependent.waitingOn == 0 { readyWhenDue(dependent, now: now) }
        }
        record.dependents = []
    }

    /// Jobs handed off for a retry that jobs here still wait for (to ask a store how they ended).
    package var awaitedElsewhere: [JobID] {
        records.values.filter { $0.handedOff && !$0.job.status.isTerminal && $0.dependents.contains { !$0.isGone } }.map(\.job.id)
    }

    /// Forgets a finished job's record (its id leaves the dedup window), so that a copy replayed
    /// from the dead-letter queue is taken as new. Unfinished jobs are left alone.
    package mutating func forgetFinished(_ id: JobID) {
        finishedIDs.remove(id)
        guard let record = records[id], record.job.status.isTerminal else { return }
        records[id] = nil
    }

    // MARK: Handing back

    /// Gives up every job that has not started (pending, queued or waiting for a retry) and forgets
    /// it, as if it had never arrived: the transport returns their messages for another consumer.
    /// Running jobs stay and settle as usual. Used by a graceful shutdown.
    package mutating func withdrawUnstarted() -> [Job] {
        let unstarted = records.values.filter { record in
            guard !record.handedOff else { return false }
            switch record.job.status {
            case .pending, .queued, .retrying: return true
            default: return false
            }
        }
        for record in unstarted {
            statusCounts[record.job.status.index] -= 1
            if record.job.status == .queued { queuedByPriority[record.job.priority.rawValue] -= 1 }
            liveCount -= 1
            record.handedOff = true
            staleTimers += record.timers
            records[record.job.id] = nil
        }
        // Every queued job is gone: the lanes hold nothing else.
        ready = PriorityLanes()
        return unstarted.map(\.job)
    }

    // MARK: Cancel and progress

    /// Cancels a job. A job that has not started never runs; a running one is marked, and the owner
    /// must stop its handler and then settle it (any outcome of a marked job ends `cancelled`).
    public mutating func cancel(_ id: JobID, now: Date) -> CancelResult {
        guard let record = records[id], !record.handedOff else { return .unknown }
        switch record.job.status {
        case .pending, .queued, .retrying:
            finishCancelled(record, now: now)
            return .cancelled
        case .running:
            record.cancelling = true
            return .cancelling
        case .failed, .timedOut, .completed, .cancelled, .deadLettered:
            return .alreadyFinished(record.job.status)
        }
    }

    /// Records a running job's progress (clamped to 0–100).
    @discardableResult
    public mutating func progress(_ id: JobID, _ percent: Double, now: Date) -> Bool {
        guard let record = records[id], record.job.status == .running, percent.isFinite else { return false }
        record.job.progress = min(100, max(0, percent))
        emit(.progress(record.job.progress), record, now)
        return true
    }

    // MARK: Time

    /// Fires every timer due at `now` (delays, retry backoffs, deadlines) and returns when the next one
    /// is due, if any.
    @discardableResult
    public mutating func advance(now: Date) -> Date? {
        while let entry = timers.min, entry.at <= now {
            _ = timers.removeMin()
            let record = entry.record
            record.timers -= 1
            if record.isGone { staleTimers -= 1; continue }
            switch (entry.kind, record.job.status) {
            case (.ready, .pending) where record.waitingOn == 0 && (record.job.notBefore ?? now) <= now:
                enqueueReady(record, now: now)
            case (.ready, .retrying):
                requeueForRetry(record, now: now)
            case (.deadline, .pending), (.deadline, .queued), (.deadline, .retrying):
                deadLetter(record, .deadline(entry.at), now: now)
            default:
                break
            }
        }
        return timers.min?.at
    }

    /// When the next timer is due.
    public var nextTimer: Date? { timers.min?.at }

    /// Timer entries held, stale ones included (for tests of compaction).
    var timerCount: Int { timers.count }

    private mutating func schedule(_ record: JobRecord, at date: Date, _ kind: TimerEntry.Kind) {
        timerSequence &+= 1
        record.timers += 1
        timers.insert(TimerEntry(at: date, sequence: timerSequence, kind: kind, record: record))
    }

    private mutating func readyWhenDue(_ record: JobRecord, now: Date) {
        if let notBefore = record.job.notBefore, notBefore > now {
            schedule(record, at: notBefore, .ready)
        } else {
            enqueueReady(record, now: now)
        }
    }

    private mutating func enqueueReady(_ record: JobRecord, now: Date) {
        // Past its deadline (an enqueue that came too late, or a retry due after it): never ready.
        if let deadline = record.job.deadline, deadline <= now {
            deadLetter(record, .deadline(deadline), now: now)
            return
        }
        move(record, to: .queued)
        record.queuedAt = now
        ready.append(record, priority: record.job.priority)
    }

    // MARK: Bookkeeping

    /// Every status change goes through here, and the counts follow it: the ready count is the
    /// number of queued jobs by construction, whichever way a job leaves the ready lanes.
    private mutating func move(_ record: JobRecord, to next: JobStatus) {
        let previous = record.job.status
        do {
            try record.job.transition(to: next)
        } catch {
            preconditionFailure("\(error)")
        }
        statusCounts[previous.index] -= 1
        statusCounts[next.index] += 1
        if previous == .queued { queuedByPriority[record.job.priority.rawValue] -= 1 }
        if next == .queued { queuedByPriority[record.job.priority.rawValue] += 1 }
    }

    private mutating func retire(_ record: JobRecord) {
        liveCount -= 1
        if recordsDepartures, !record.handedOff {
            switch record.job.status {
            case .completed: departures.append(.completed(record.job))
            case .cancelled: departures.append(.cancelled(record.job))
            case .deadLettered: departures.append(.deadLettered(record.job))
            default: break
            }
        }
        if record.timers > 0 {
            staleTimers += record.timers
            if staleTimers > 1024, staleTimers > timers.count / 2 { compactTimers() }
        }
        if record.job.status.isTerminal { finishedIDs.insert(record.job.id, value: UInt8(record.job.status.index)) }
        guard configuration.finishedWindow > 0 else {
            let waitedFor = record.handedOff && record.dependents.contains { !$0.isGone }
            if records[record.job.id] === record, !waitedFor { records[record.job.id] = nil }
            return
        }
        finishedOrder.append(record)
        if finishedOrder.count > configuration.finishedWindow {
            let oldest = finishedOrder.removeFirst()
            // A returning retry may have taken the id over since: remove only this record.
            if records[oldest.job.id] === oldest {
                if oldest.handedOff, oldest.dependents.contains(where: { !$0.isGone }) {
                    // Jobs here wait for its next attempt: kept until that returns (they are
                    // unfinished jobs, bounded by the capacity).
                    finishedOrder.append(oldest)
                } else {
                    records[oldest.job.id] = nil
                }
            }
        }
    }

    /// Drops timers of finished jobs (deadlines of completed jobs) so the heap stays proportional to
    /// the live jobs, whatever their deadlines.
    private mutating func compactTimers() {
        var live: [TimerEntry] = []
        live.reserveCapacity(timers.count - staleTimers)
        for entry in timers.unordered {
            if entry.record.isGone { entry.record.timers -= 1 } else { live.append(entry) }
        }
        timers = Heap(live)
        staleTimers = 0
    }

    private mutating func emit(_ kind: JobEvent.Kind, _ record: JobRecord, _ now: Date) {
        guard recordsEvents else { return }
        events.append(JobEvent(kind, id: record.job.id, name: record.job.name, priority: record.job.priority, at: now))
    }

    /// Returns the departures collected since the last call (when `recordsDepartures` is on).
    public mutating func takeDepartures() -> [Departure] {
        guard !departures.isEmpty else { return [] }
        defer { departures.removeAll(keepingCapacity: true) }
        return departures
    }

    /// Returns the events collected since the last call (when `recordsEvents` is on).
    public mutating func takeEvents() -> [JobEvent] {
        guard !events.isEmpty else { return [] }
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    // MARK: Queries

    /// The job as it is now: unfinished, or finished within the window.
    public func snapshot(_ id: JobID) -> Job? { records[id]?.job }

    /// How the job ended, if it has (and is still within the finished window).
    public func outcome(_ id: JobID) -> JobOutcome? {
        guard let job = records[id]?.job else { return nil }
        switch job.status {
        case .completed: return .completed(job.result ?? Data())
        case .cancelled: return .cancelled
        case .deadLettered: return .deadLettered(job.deadLetterReason ?? .malformedMessage("unknown"), errors: job.errors)
        default: return nil
        }
    }

    /// Unfinished jobs held.
    public var unfinishedCount: Int { liveCount }
    public var inFlight: Int { statusCounts[JobStatus.running.index] }

    /// Jobs that are ready (queued) now.
    public var readyCount: Int { queuedByPriority.reduce(0, +) }

    public func statistics() -> QueueStatistics {
        var byStatus: [JobStatus: Int] = [:]
        for status in JobStatus.allCases {
            switch status {
            case .completed: byStatus[status] = totals.completed
            case .cancelled: byStatus[status] = totals.cancelled
            case .deadLettered: byStatus[status] = totals.deadLettered
            default: byStatus[status] = statusCounts[status.index]
            }
        }
        var depth: [JobPriority: Int] = [:]
        for priority in JobPriority.allCases { depth[priority] = queuedByPriority[priority.rawValue] }
        return QueueStatistics(
            byStatus: byStatus, depthByPriority: depth, inFlight: inFlight,
            enqueued: totals.enqueued, started: totals.started, completed: totals.completed,
            failedAttempts: totals.failed, timedOutAttempts: totals.timedOut, retried: totals.retried,
            cancelled: totals.cancelled, deadLettered: totals.deadLettered,
            runDuration: runDurations.summary, waitDuration: waitDurations.summary)
    }
}

private struct Totals {
    var enqueued = 0, started = 0, completed = 0, failed = 0, timedOut = 0, retried = 0, cancelled = 0, deadLettered = 0
}

/// One unfinished job and the bookkeeping around it (a class: lanes, timers and dependents share it).
final class JobRecord {
    var job: Job
    /// Dependencies not yet completed.
    var waitingOn = 0
    var dependents: [JobRecord] = []
    var queuedAt = Date.distantPast
    var cancelling = false
    /// Timer entries that still point here.
    var timers = 0
    /// Handed to the transport for a retry: no longer held here.
    var handedOff = false
    /// The running attempt's stop signal (see `deliver`).
    var stop: StopSignal?

    /// Finished, or handed off: timers pointing here are stale.
    var isGone: Bool { handedOff || job.status.isTerminal }

    init(_ job: Job) { self.job = job }
}

private struct TimerEntry: Comparable {
    enum Kind { case ready, deadline }
    let at: Date
    let sequence: UInt64
    let kind: Kind
    let record: JobRecord

    static func < (lhs: TimerEntry, rhs: TimerEntry) -> Bool {
        (lhs.at, lhs.sequence) < (rhs.at, rhs.sequence)
    }
    static func == (lhs: TimerEntry, rhs: TimerEntry) -> Bool { lhs.sequence == rhs.sequence }
}

extension JobStatus {
    init?(index: Int) {
        guard let status = JobStatus.allCases.first(where: { $0.index == index }) else { return nil }
        self = status
    }

    var index: Int {
        switch self {
        case .pending: 0
        case .queued: 1
        case .running: 2
        case .completed: 3
        case .failed: 4
        case .timedOut: 5
        case .retrying: 6
        case .cancelled: 7
        case .deadLettered: 8
        }
    }
}

/// Lets the queue keep an injected generator of any type.
struct AnyRandomNumberGenerator: RandomNumberGenerator {
    private var base: any RandomNumberGenerator
    init(_ base: any RandomNumberGenerator) { self.base = base }
    mutating func next() -> UInt64 { base.next() }
}

/// The rules every broker applies to jobs before accepting them, written once: each job is valid,
/// its id is unique within the batch and new to the broker, each dependency is in the batch or
/// known to the broker, and no dependencies form a cycle.
@_spi(Transport) public enum BatchRules {
    /// Checks `jobs` as one batch: the jobs in an order where each comes after the batch members it
    /// depends on, or the first rule broken.
    /// - Parameters:
    ///   - isNew: whether the broker may take this job (its id unknown to it, or a retry it handed off).
    ///   - isKnown: whether the broker holds this id, or finished it within its dedup window.
    public static func admit(_ jobs: [Job], isNew: (Job) -> Bool, isKnown: (JobID) -> Bool) throws(EnqueueRefusal) -> [Job] {
        var batch: [JobID: Job] = [:]
        for job in jobs {
            try validate(job)
            guard batch[job.id] == nil, isNew(job) else { throw .duplicate(job.id) }
            batch[job.id] = job
        }
        for job in jobs {
            for dependency in job.dependencies where batch[dependency] == nil && !isKnown(dependency) {
                throw .unknownDependency(job: job.id, dependency: dependency)
            }
        }
        return try topologicalOrder(jobs, batch: batch)
    }

    /// What makes a job acceptable on its own.
    public static func validate(_ job: Job) throws(EnqueueRefusal) {
        if job.name.isEmpty { throw .invalid(job.id, "empty job name") }
        if job.id.rawValue.isEmpty { throw .invalid(job.id, "empty job id") }
        if job.maxRetries < 0 { throw .invalid(job.id, "maxRetries must be 0 or more, got \(job.maxRetries)") }
        if job.attempt < 1 { throw .invalid(job.id, "attempt must be 1 or more, got \(job.attempt)") }
        if let timeout = job.timeout, timeout <= .zero { throw .invalid(job.id, "timeout must be positive, got \(timeout)") }
    }

    private static func topologicalOrder(_ jobs: [Job], batch: [JobID: Job]) throws(EnqueueRefusal) -> [Job] {
        enum Mark { case visiting, done }
        var marks: [JobID: Mark] = [:]
        var order: [Job] = []
        var path: [JobID] = []
        func visit(_ job: Job) -> [JobID]? {
            switch marks[job.id] {
            case .done: return nil
            case .visiting:
                let start = path.firstIndex(of: job.id) ?? 0
                return Array(path[start...]) + [job.id]
            case nil: break
            }
            marks[job.id] = .visiting
            path.append(job.id)
            for dependency in job.dependencies {
                if let member = batch[dependency], let cycle = visit(member) { return cycle }
            }
            path.removeLast()
            marks[job.id] = .done
            order.append(job)
            return nil
        }
        for job in jobs { if let cycle = visit(job) { throw .dependencyCycle(cycle) } }
        return order
    }
}
