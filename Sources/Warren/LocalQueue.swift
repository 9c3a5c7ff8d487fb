#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import DequeModule
import Synchronization

/// The local engine: the queue contract in this process, behind one lock (priority lanes, timers,
/// the dedup window, dependencies, cancellation) plus consumers parked in `next`, event
/// subscribers, callers waiting for outcomes, and one alarm for every timer. The in-memory broker
/// is exactly this; a transport (the AMQP broker, or one in a package of its own, imported with
/// `@_spi(Transport) import Warren`) feeds it what arrives (`enqueueEach`) and settles the messages
/// of what departs (`departures`).
@_spi(Transport) public final class LocalQueue: Sendable {
    private let state: Locked<State>
    private let clock: any WarrenClock
    private let alarm: Alarm
    /// Identifies a parked consumer or an outcome waiter, for its cancellation to find it.
    private let waiterIDs = Atomic<UInt64>(0)

    /// - Parameter departures: when set, receives every job leaving the queue (in order, outside
    ///   the lock), for a transport to settle its message.
    public init(
        configuration: QueueConfiguration, clock: any WarrenClock, random: any RandomNumberGenerator & Sendable,
        departures: (@Sendable ([Departure]) -> Void)? = nil
    ) {
        self.clock = clock
        var core = JobQueueCore(configuration: configuration, random: random)
        core.recordsDepartures = departures != nil
        let state = Locked(State(core: core, departures: departures))
        self.state = state
        // The alarm fires the core's timers (delays, backoffs, deadlines) and hands freed jobs on.
        alarm = Alarm(clock: clock) { now in
            let (next, effects) = state.withLock { state in
                state.core.advance(now: now)
                return (state.core.nextTimer, state.settle(now: now))
            }
            effects.run()
            return next
        }
    }

    /// Enqueues each job on its own (one refusal does not stop the others), under one lock and
    /// with one hand-off to waiting consumers: how a transport delivers a burst of messages.
    public func enqueueEach(_ jobs: [Job], cancelling: Set<JobID> = []) -> [EnqueueRefusal?] {
        let now = clock.now()
        let (refusals, effects) = state.withLock { state -> ([EnqueueRefusal?], Effects) in
            guard !state.closed else { return (jobs.map { _ in .closed }, Effects()) }
            var refusals: [EnqueueRefusal?] = []
            refusals.reserveCapacity(jobs.count)
            for job in jobs {
                do throws(EnqueueRefusal) {
                    try state.core.enqueue(job, now: now)
                    if cancelling.contains(job.id) { _ = state.core.cancel(job.id, now: now) }
                    refusals.append(nil)
                } catch {
                    refusals.append(error)
                }
            }
            return (refusals, state.settle(now: now))
        }
        apply(effects)
        return refusals
    }

    /// Enqueues jobs atomically. `cancelling` ones are cancelled in the same step: they arrive
    /// (so their departure settles their message) but no consumer ever sees them.
    public func enqueue(_ jobs: [Job], cancelling: Set<JobID> = []) throws(EnqueueRefusal) {
        try change { state, now throws(EnqueueRefusal) in
            guard !state.closed else { throw .closed }
            try state.core.enqueue(jobs, now: now)
            for id in cancelling { _ = state.core.cancel(id, now: now) }
        }
    }

    public func next(_ filter: DeliveryFilter) async -> Delivery? {
        let now = clock.now()
        let (fast, effects) = state.withLock { state -> (Delivery??, Effects) in
            if state.closed { return (.some(nil), Effects()) }
            guard let delivery = state.core.deliver(filter, now: now) else { return (nil, state.settle(now: now)) }
            return (.some(delivery), state.settle(now: now))
        }
        apply(effects)
        if let fast { return fast }
        let delivery = await park(filter)
        if delivery != nil { handOn() }
        return delivery
    }

    /// Hands one more ready job to a parked consumer. Every change to the queue wakes at most one
    /// parked consumer, which wakes the next as it takes its job, and so on while jobs are ready:
    /// the thread that made a burst ready (a transport's I/O thread) resumes one task, not every
    /// parked one, and jobs do not sit handed to tasks still queued on the executor while running
    /// tasks take later ones (out of order, which holds back a transport's contiguous acks).
    private func handOn() {
        let effects = state.withLock { state -> Effects? in
            guard !state.waiters.isEmpty, state.core.readyCount > 0 else { return nil }
            return state.settle(now: clock.now())
        }
        if let effects { apply(effects) }
    }

    public func tryNext(_ filter: DeliveryFilter) -> Delivery? {
        let now = clock.now()
        let (delivery, effects) = state.withLock { state -> (Delivery?, Effects) in
            guard !state.closed, let delivery = state.core.deliver(filter, now: now) else { return (nil, Effects()) }
            return (delivery, state.settle(now: now))
        }
        apply(effects)
        return delivery
    }

    private func park(_ filter: DeliveryFilter) async -> Delivery? {
        let id = waiterIDs.wrappingAdd(1, ordering: .relaxed).newValue
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Delivery?, Never>) in
                let now = clock.now()
                let (immediate, effects) = state.withLock { state -> (Delivery??, Effects) in
                    if state.closed || Task.isCancelled { return (.some(nil), Effects()) }
                    if let delivery = state.core.deliver(filter, now: now) {
                        return (.some(delivery), state.settle(now: now))
                    }
                    state.waiters.append(Waiter(id: id, filter: filter, continuation: continuation))
                    return (nil, state.settle(now: now))
                }
                apply(effects)
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: nil)
        }
    }

    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome) {
        _ = settle(delivery, outcome, thenTryNext: nil)
    }

    /// Settles a delivery and, given a filter, takes the best ready job it admits, under one lock.
    public func settle(_ delivery: Delivery, _ outcome: AttemptOutcome, thenTryNext filter: DeliveryFilter?) -> Delivery? {
        change { state, now in
            state.core.settle(delivery.job.id, attempt: delivery.job.attempt, outcome, now: now)
            guard let filter, !state.closed else { return nil }
            return state.core.deliver(filter, now: now)
        }
    }

    public func cancel(_ id: JobID) -> CancelResult {
        let (result, stop) = change { state, now -> (CancelResult, StopSignal?) in
            let result = state.core.cancel(id, now: now)
            return (result, result == .cancelling ? state.core.stopSignal(of: id) : nil)
        }
        stop?.fire(.cancelled)
        return result
    }

    /// Offers ready jobs to parked consumers again (see `Broker.reoffer`).
    public func reoffer() {
        change { _, _ in }
    }

    public func reportProgress(_ id: JobID, _ percent: Double) {
        change { state, now in _ = state.core.progress(id, percent, now: now) }
    }

    public func events() -> AsyncStream<JobEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: JobEvent.self, bufferingPolicy: .unbounded)
        let id = state.withLock { state -> UInt64? in
            guard !state.closed else { return nil }
            state.nextSubscriber &+= 1
            state.subscribers[state.nextSubscriber] = continuation
            state.updateEventRecording()
            return state.nextSubscriber
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [state] _ in
            state.withLock { state in
                state.subscribers[id] = nil
                state.updateEventRecording()
            }
        }
        return stream
    }

    public func snapshot(_ id: JobID) -> Job? {
        state.withLock { $0.core.snapshot(id) }
    }

    /// Waits until the job ends. An unknown job gives nil at once, unless `waitIfUnknown` (a job
    /// published to a broker that this queue has not received yet).
    public func outcome(of id: JobID, waitIfUnknown: Bool = false) async -> JobOutcome? {
        enum Now { case done(JobOutcome?), wait }
        let now = state.withLock { state -> Now in
            if let outcome = state.core.outcome(id) { return .done(outcome) }
            if state.closed || (!waitIfUnknown && state.core.snapshot(id) == nil) { return .done(nil) }
            return .wait
        }
        if case let .done(outcome) = now { return outcome }
        let waiter = waiterIDs.wrappingAdd(1, ordering: .relaxed).newValue
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<JobOutcome?, Never>) in
                let immediate = state.withLock { state -> JobOutcome?? in
                    if let outcome = state.core.outcome(id) { return .some(outcome) }
                    if state.closed || Task.isCancelled || (!waitIfUnknown && state.core.snapshot(id) == nil) { return .some(nil) }
                    state.outcomeWaiters[id, default: []].append((waiter, continuation))
                    state.updateEventRecording()
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<JobOutcome?, Never>? in
                guard let index = state.outcomeWaiters[id]?.firstIndex(where: { $0.0 == waiter }) else { return nil }
                let continuation = state.outcomeWaiters[id]!.remove(at: index).1
                if state.outcomeWaiters[id]!.isEmpty { state.outcomeWaiters[id] = nil }
                state.updateEventRecording()
                return continuation
            }
            continuation?.resume(returning: nil)
        }
    }

    /// Records a job that arrived unreadable (dead-lettered by the transport itself), so its
    /// outcome, status, events and statistics are known here like any other job's.
    public func recordRejected(_ job: Job, _ reason: DeadLetterReason) {
        change { state, now in state.core.recordRejected(job, reason, now: now) }
    }

    /// See `JobQueueCore.endedElsewhere`.
    public func endedElsewhere(_ id: JobID, _ status: JobStatus) {
        change { state, now in state.core.endedElsewhere(id, status, now: now) }
    }

    /// See `JobQueueCore.awaitedElsewhere`.
    public var awaitedElsewhere: [JobID] { state.withLock { $0.core.awaitedElsewhere } }

    /// See `JobQueueCore.forgetFinished`.
    public func forgetFinished(_ id: JobID) {
        state.withLock { $0.core.forgetFinished(id) }
    }

    /// Gives up every job that has not started (see `JobQueueCore.withdrawUnstarted`).
    public func withdrawUnstarted() -> [Job] {
        change { state, _ in state.core.withdrawUnstarted() }
    }

    /// Consumers parked in `next`.
    public var waitingConsumers: Int { state.withLock { $0.waiters.count } }

    public func statistics() -> QueueStatistics {
        state.withLock { $0.core.statistics() }
    }

    /// Whether `close` was called.
    public var isClosed: Bool { state.withLock { $0.closed } }

    public func close() {
        let effects = state.withLock { state -> Effects in
            state.closed = true
            var effects = Effects()
            effects.deliveries = state.waiters.map { ($0.continuation, nil) }
            state.waiters.removeAll()
            effects.outcomes = state.outcomeWaiters.values.flatMap { $0.map { ($0.1, nil) } }
            state.outcomeWaiters.removeAll()
            effects.finishedStreams = Array(state.subscribers.values)
            state.subscribers.removeAll()
            return effects
        }
        alarm.stop()
        effects.run()
        for stream in effects.finishedStreams { stream.finish() }
    }

    /// Changes the queue under the lock, then hands ready jobs on, delivers events and outcomes,
    /// settles departures and re-arms the alarm, outside it.
    private func change<R, Failure: Error>(_ body: (inout sending State, Date) throws(Failure) -> sending R) throws(Failure) -> R {
        let now = clock.now()
        let (result, effects) = try state.withLock { state throws(Failure) -> (R, Effects) in
            let result = try body(&state, now)
            return (result, state.settle(now: now))
        }
        apply(effects)
        return result
    }

    private func apply(_ effects: Effects) {
        effects.run()
        if let date = effects.nextTimer { alarm.arm(at: date) }
    }
}

// MARK: - State

private struct Waiter {
    let id: UInt64
    let filter: DeliveryFilter
    let continuation: CheckedContinuation<Delivery?, Never>
}

/// What an operation leaves to do once the lock is released.
private struct Effects {
    var deliveries: [(CheckedContinuation<Delivery?, Never>, Delivery?)] = []
    var outcomes: [(CheckedContinuation<JobOutcome?, Never>, JobOutcome?)] = []
    var events: [JobEvent] = []
    var subscribers: [AsyncStream<JobEvent>.Continuation] = []
    var finishedStreams: [AsyncStream<JobEvent>.Continuation] = []
    var nextTimer: Date?
    var departures: [Departure] = []
    var settleDepartures: (@Sendable ([Departure]) -> Void)?

    func run() {
        if let settleDepartures, !departures.isEmpty { settleDepartures(departures) }
        for event in events { for subscriber in subscribers { subscriber.yield(event) } }
        for (continuation, delivery) in deliveries { continuation.resume(returning: delivery) }
        for (continuation, outcome) in outcomes { continuation.resume(returning: outcome) }
    }
}

private struct State {
    var core: JobQueueCore
    var waiters = Deque<Waiter>()
    var subscribers: [UInt64: AsyncStream<JobEvent>.Continuation] = [:]
    var nextSubscriber: UInt64 = 0
    var outcomeWaiters: [JobID: [(UInt64, CheckedContinuation<JobOutcome?, Never>)]] = [:]
    var closed = false
    let departures: (@Sendable ([Departure]) -> Void)?

    init(core: JobQueueCore, departures: (@Sendable ([Departure]) -> Void)?) {
        self.core = core
        self.departures = departures
    }

    mutating func updateEventRecording() {
        core.recordsEvents = !subscribers.isEmpty || !outcomeWaiters.isEmpty
    }

    /// Hands a ready job to a parked consumer (one: it hands on the next, see `handOn`), gathers
    /// events and finished jobs' waiters.
    mutating func settle(now: Date) -> Effects {
        var effects = Effects()
        var index = waiters.startIndex
        while index < waiters.endIndex, core.readyCount > 0, effects.deliveries.isEmpty {
            if let delivery = core.deliver(waiters[index].filter, now: now) {
                effects.deliveries.append((waiters.remove(at: index).continuation, delivery))
            } else {
                index += 1
            }
        }
        if core.recordsEvents {
            effects.events = core.takeEvents()
            if !effects.events.isEmpty {
                effects.subscribers = Array(subscribers.values)
                if !outcomeWaiters.isEmpty {
                    for event in effects.events where event.isTerminal {
                        guard let waiting = outcomeWaiters.removeValue(forKey: event.id) else { continue }
                        let outcome = core.outcome(event.id)
                        effects.outcomes += waiting.map { ($0.1, outcome) }
                    }
                    updateEventRecording()
                }
            }
        }
        effects.nextTimer = core.nextTimer
        if departures != nil {
            effects.departures = core.takeDepartures()
            effects.settleDepartures = departures
        }
        return effects
    }
}

