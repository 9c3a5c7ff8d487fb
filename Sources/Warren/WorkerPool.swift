#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Instrumentation
public import Logging
public import Tracing
import Synchronization

/// How a worker pool runs.
public struct WorkerPoolConfiguration: Sendable {
    public var groups: [WorkerGroup]
    public var routing: RoutingStrategy
    /// For jobs whose job and handler both name no timeout; nil runs them unbounded.
    public var defaultTimeout: Duration?
    /// How long shutdown waits for running jobs before stopping them (they are then retried).
    public var shutdownGrace: Duration
    /// Most jobs of a name running at once, by job name, within the pool's own limit (which stays
    /// the ceiling): a job whose name is at its limit waits, and ready jobs of other names start
    /// meanwhile in priority order.
    public var limits: [String: Int]
    /// What handlers log through (`JobContext.logger`, with the job's id and name).
    public var logger: Logger
    /// Where each attempt's span goes (see `WorkerPool`); nil: the tracer the process bootstrapped
    /// (`InstrumentationSystem.tracer`) before making the pool, none by default.
    public var tracer: (any Tracer)?

    /// How long a shutdown lets running jobs finish unless told otherwise: 25 s, inside the 30 s
    /// Kubernetes and Docker give a container before killing it.
    public static let defaultShutdownGrace: Duration = .seconds(25)

    public static let defaultConcurrency = 16

    /// One group of `concurrency` workers.
    public init(
        concurrency: Int = Self.defaultConcurrency, reservedForCritical: Int = 0, capabilities: Set<String> = [],
        defaultTimeout: Duration? = nil, shutdownGrace: Duration = Self.defaultShutdownGrace, limits: [String: Int] = [:],
        logger: Logger = Logger(label: "warren")
    ) {
        self.init(
            groups: [WorkerGroup(concurrency: concurrency, reservedForCritical: reservedForCritical, capabilities: capabilities)],
            defaultTimeout: defaultTimeout, shutdownGrace: shutdownGrace, limits: limits, logger: logger)
    }

    public init(
        groups: [WorkerGroup], routing: RoutingStrategy = .leastLoaded, defaultTimeout: Duration? = nil,
        shutdownGrace: Duration = Self.defaultShutdownGrace, limits: [String: Int] = [:], logger: Logger = Logger(label: "warren")
    ) {
        precondition(!groups.isEmpty, "a worker pool needs at least one group")
        self.groups = groups
        self.routing = routing
        self.defaultTimeout = defaultTimeout
        self.shutdownGrace = shutdownGrace
        self.limits = limits
        self.logger = logger
    }
}

/// Runs handlers for the jobs of a broker: pulls a job only when a slot is free (back-pressure),
/// runs it with its timeout, and settles the attempt.
///
/// A pool of one group runs a long-lived task per slot, each taking the next job that fits it
/// (parked in the broker while there is none): a busy pool starts a job without a new task or a
/// hand-off between tasks. A pool of several groups has a dispatcher that pulls each job and
/// routes it to a group, where it runs in a task of its own.
///
/// Cancellation and timeouts are cooperative: the handler's task is cancelled, and the attempt is
/// settled at once (`cancelled` or `timed out`). A handler that ignores cancellation keeps running
/// until it returns; its result is discarded and its slot stays taken until then, so the pool never
/// runs more handlers than its concurrency.
///
/// Tracing: with a tracer (`WorkerPoolConfiguration.tracer`, or one bootstrapped through
/// swift-distributed-tracing) each attempt is a span of kind consumer named after the job, with
/// the job's id, name, attempt, priority and outcome as `warren.job.*` attributes, continuing the
/// W3C trace context its producer put in the job's metadata (`traceparent`, `tracestate`).
public final class WorkerPool: Sendable {
    private let broker: any WorkSource
    private let registry: HandlerRegistry
    let configuration: WorkerPoolConfiguration
    private let clock: any WarrenClock
    private let timeouts: Timeouts
    private let state: Locked<PoolState>
    /// Set by `shutdown()` before it takes the lock, so a reader under the lock sees it too; read
    /// without the lock by a slot running jobs back to back, before every next job.
    private let stopping = Atomic(false)
    private let servable: [Set<String>]
    /// The per-name limits every filter of this pool carries (nil without any).
    private let nameLimits: NameLimits?
    /// With a single group: what its ordinary and reserved slots take.
    private let slotFilters: SlotFilters?
    /// Where attempts' spans go: the configured tracer, else the one bootstrapped when the pool was
    /// made; nil when that traces nothing.
    private let tracer: (any Tracer)?

    public init(
        broker: any WorkSource, registry: HandlerRegistry, configuration: WorkerPoolConfiguration = WorkerPoolConfiguration(),
        clock: any WarrenClock = SystemClock()
    ) {
        self.broker = broker
        self.registry = registry
        self.configuration = configuration
        self.clock = clock
        let tracer = configuration.tracer ?? InstrumentationSystem.tracer
        self.tracer = tracer is NoOpTracer ? nil : tracer
        timeouts = Timeouts(clock: clock)
        servable = configuration.groups.map(\.capabilities)
        let nameLimits = configuration.limits.isEmpty ? nil : NameLimits(configuration.limits)
        self.nameLimits = nameLimits
        slotFilters = configuration.groups.count == 1
            ? SlotFilters(configuration.groups[0], servable: servable, limits: nameLimits) : nil
        state = Locked(PoolState(
            loads: configuration.groups.map { GroupLoad(group: $0) }, router: Router(strategy: configuration.routing),
            limits: nameLimits))
    }

    /// Handlers running now.
    public var running: Int { state.withLock { $0.running } }

    /// How busy each group is now.
    public var loads: [GroupLoad] { state.withLock { $0.loads } }

    /// Runs until `shutdown()` or until the calling task is cancelled; then stops taking jobs, waits
    /// up to the grace period for running ones, stops the rest (they are retried) and returns.
    public func run() async {
        await withTaskCancellationHandler {
            if let slotFilters { await runSlots(slotFilters) } else { await dispatch() }
        } onCancel: {
            shutdown()
        }
        await drain()
        timeouts.stop()
    }

    /// Whether `shutdown()` was called (or the run was cancelled): no job starts from now on.
    public var isShuttingDown: Bool { stopping.load(ordering: .acquiring) }

    /// Asks `run()` to stop taking jobs and return once running ones end.
    public func shutdown() {
        stopping.store(true, ordering: .releasing)
        let (wake, pull, stopWaiter, idle) = state.withLock { state in
            defer {
                state.roomWaiter = nil
                state.stopWaiter = nil
                state.idleSlots.removeAll()
            }
            return (state.roomWaiter, state.pull, state.stopWaiter, Array(state.idleSlots.values))
        }
        wake?.resume()
        pull?.task.cancel()
        stopWaiter?.resume()
        // Only slots waiting for a job are cancelled; running ones finish within the grace period.
        for slot in idle { slot.cancel() }
    }

    // MARK: Slots (a pool of one group)

    /// Starts a task for each slot and waits for `shutdown()`.
    private func runSlots(_ filters: SlotFilters) async {
        let group = configuration.groups[0]
        for _ in 0..<group.concurrency { spawnSlot(.ordinary, filters.ordinary) }
        for _ in 0..<group.reservedForCritical { spawnSlot(.reserved, filters.reserved) }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let stopped = state.withLock { state -> Bool in
                if stopping.load(ordering: .acquiring) { return true }
                state.stopWaiter = continuation
                return false
            }
            if stopped { continuation.resume() }
        }
    }

    private func spawnSlot(_ slot: Slot, _ filter: DeliveryFilter) {
        let pool = self
        let worker = WorkerTask()
        worker.attach(Task { await pool.serve(slot, filter, worker: worker) })
    }

    /// One slot's task: takes the next job that fits the slot (waiting in the broker while there is
    /// none), runs it, settles it while taking the next ready one, and again, until shutdown.
    private func serve(_ slot: Slot, _ filter: DeliveryFilter, worker: WorkerTask) async {
        let id = ObjectIdentifier(worker)
        var unyielded = 0
        var taken: (delivery: Delivery, run: UInt64)?
        while true {
            let (delivery, run): (Delivery, UInt64)
            if let taken {
                (delivery, run) = taken
            } else {
                // Waiting for a job is the only time shutdown cancels this task.
                guard state.withLock({ state -> Bool in
                    guard !stopping.load(ordering: .acquiring) else { return false }
                    state.idleSlots[id] = worker
                    return true
                }) else { return }
                let next = await broker.next(filter)
                unyielded = 0
                let nextRun = state.withLock { state -> UInt64? in
                    state.idleSlots[id] = nil
                    guard let next else { return nil }
                    state.occupy(0, slot)
                    return state.register(next.stop, in: 0, slot)
                }
                // The broker closed, or shutdown cancelled the wait.
                guard let next, let nextRun else { return }
                if Task.isCancelled {
                    // Shutdown cancelled the wait as the job arrived: it runs in a task nobody cancelled.
                    let fresh = WorkerTask()
                    fresh.attach(Task { [self] in await runAndRelease(next, run: nextRun, worker: fresh) })
                    return
                }
                (delivery, run) = (next, nextRun)
            }
            taken = nil
            watch(delivery, worker: worker)
            let outcome = await attempt(delivery)
            // A stop (cancel, timeout) cancels this task, now or in a moment: a new task takes the
            // slot. A stop cannot fire once the attempt is settled, so `reason` is final here.
            let goesOn = delivery.stop.reason == nil && !Task.isCancelled
            // Jobs that are ready at once never suspend this task: now and then let others have the
            // thread, with no job taken (a job held across the yield would hold back the acks of
            // every later delivery, as a transport acks contiguous runs).
            unyielded += 1
            let yields = unyielded == 32
            if yields { unyielded = 0 }
            if let outcome {
                if goesOn, !yields, !stopping.load(ordering: .acquiring) {
                    if let next = await broker.settle(delivery, outcome, thenTryNext: filter) {
                        // The slot passes from one run to the next without being freed, under the same run.
                        state.withLock { $0.handlers[run] = (0, slot, next.stop) }
                        taken = (next, run)
                    }
                } else {
                    await broker.settle(delivery, outcome)
                }
            }
            guard taken == nil else { continue }
            release(run)
            if !goesOn {
                if !stopping.load(ordering: .acquiring) { spawnSlot(slot, filter) }
                return
            }
            if yields { await Task.yield() }
        }
    }

    // MARK: Dispatch

    private func dispatch() async {
        while let filter = await waitForRoom() {
            let delivery: Delivery?
            if let ready = await broker.tryNext(filter) {
                delivery = ready
            } else {
                delivery = await pullWaiting(filter)
            }
            guard let delivery else { continue }
            start(delivery)
        }
    }

    /// Waits until some slot is free; returns the filter of what the pool can take now.
    private func waitForRoom() async -> DeliveryFilter? {
        while true {
            enum Step { case stop, filter(DeliveryFilter), wait }
            let step = state.withLock { state -> Step in
                if stopping.load(ordering: .acquiring) { return .stop }
                let filter = state.filter(servable: servable)
                return filter.rooms.isEmpty ? .wait : .filter(filter)
            }
            switch step {
            case .stop: return nil
            case let .filter(filter): return filter
            case .wait:
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resume = state.withLock { state -> Bool in
                        if stopping.load(ordering: .acquiring) || !state.filter(servable: servable).rooms.isEmpty { return true }
                        state.roomWaiter = continuation
                        return false
                    }
                    if resume { continuation.resume() }
                }
            }
        }
    }

    /// Waits for a job in a task that is cancelled if a freed slot widens what the pool can take.
    private func pullWaiting(_ filter: DeliveryFilter) async -> Delivery? {
        let broker = self.broker
        let task = Task { await broker.next(filter) }
        let cancelled = state.withLock { state -> Bool in
            state.pull = (filter, task)
            // A slot freed since the filter was made: pull again with what is free now.
            return stopping.load(ordering: .acquiring) || state.filter(servable: servable) != filter
        }
        if cancelled { task.cancel() }
        let delivery = await task.value
        state.withLock { $0.pull = nil }
        return delivery
    }

    private func start(_ delivery: Delivery) {
        let job = delivery.job
        let run = state.withLock { state -> UInt64 in
            // Only the dispatcher takes slots, so the room the filter promised is still there; if a
            // job slipped through anyway it runs in the least busy capable group rather than being lost.
            let choice = state.router.route(job, among: state.loads) ?? state.fallback(for: job)
            state.occupy(choice.group, choice.slot)
            return state.register(delivery.stop, in: choice.group, choice.slot)
        }
        let pool = self
        let worker = WorkerTask()
        worker.attach(Task { await pool.runAndRelease(delivery, run: run, worker: worker) })
    }

    // MARK: Running a job

    private func runAndRelease(_ delivery: Delivery, run: UInt64, worker: WorkerTask) async {
        watch(delivery, worker: worker)
        if let outcome = await attempt(delivery) { await broker.settle(delivery, outcome) }
        release(run)
    }

    /// A stop (cancel, timeout, shutdown) cancels the job's task and settles the attempt at once,
    /// in its own task; the job's task waits for that settlement before it frees the slot, so
    /// nothing outlives the pool.
    private func watch(_ delivery: Delivery, worker: WorkerTask) {
        delivery.stop.onFire { [broker] reason in
            worker.cancel()
            let outcome: AttemptOutcome = switch reason {
            case .cancelled: .cancelled
            case .timedOut: .timedOut
            case .shutdown: .interrupted
            }
            // Claimed under the signal's lock, as the job's task claims: whoever loses finds the
            // winner's settlement already recorded.
            delivery.stop.settleOnStop { Task { await broker.settle(delivery, outcome) } }
        }
    }

    /// Runs the job's handler and claims the settlement: the outcome to settle, or nil when a stop
    /// settled the attempt (once that settlement is done).
    private func attempt(_ delivery: Delivery) async -> AttemptOutcome? {
        let job = delivery.job
        let outcome: AttemptOutcome
        if let tracer {
            outcome = await traced(delivery, tracer)
        } else {
            outcome = await run(delivery)
        }
        // The run is over: its name's place goes back before the settlement, which offers ready
        // jobs to waiting slots again.
        let freed = nameLimits?.give(job.name) ?? false
        if case let .stopped(settlement) = delivery.stop.claimOrStopSettlement() {
            await settlement?.value
            // Settled by the stop while the handler still ran: nothing offers jobs of this name
            // to waiting slots now that it is back under its limit.
            if freed { await broker.reoffer() }
            return nil
        }
        return outcome
    }

    /// Runs the job's handler (with its timeout): how the attempt ended.
    private func run(_ delivery: Delivery, tracer: (any Tracer)? = nil) async -> AttemptOutcome {
        let job = delivery.job
        guard let entry = registry.entry(job.name) else { return .rejected(.unknownJobName(job.name)) }
        if let timeout = job.timeout ?? entry.timeout ?? configuration.defaultTimeout {
            timeouts.schedule(delivery.stop, at: clock.now().addingTimeInterval(timeout.timeInterval), inFlight: running)
        }
        do {
            let context = JobContext(
                job: job, broker: broker, logger: configuration.logger, tracer: tracer, context: tracer == nil ? .topLevel : (.current ?? .topLevel))
            return .completed(try await entry.run(job, context))
        } catch let error as UndecodableInput {
            return .rejected(.undecodablePayload(error.detail))
        } catch let error as JobRejected {
            return .rejected(.rejected(error.reason))
        } catch {
            return .failed(describeFailure(error))
        }
    }

    /// `run` inside a span (kind consumer, named after the job) that continues the trace the
    /// job's producer sent (`traceparent` in its metadata) or starts one. The handler runs in the
    /// span's context: what it calls (an HTTP service, a command) is given that trace by injection.
    private func traced(_ delivery: Delivery, _ tracer: any Tracer) async -> AttemptOutcome {
        let job = delivery.job
        var parent = InstrumentationContext.topLevel
        tracer.extract(job.metadata, into: &parent, using: MetadataExtractor())
        return await tracer.withSpan(job.name, context: parent, ofKind: .consumer) { span in
            span.attributes["warren.job.id"] = job.id.rawValue
            span.attributes["warren.job.name"] = job.name
            span.attributes["warren.job.attempt"] = job.attempt
            span.attributes["warren.job.priority"] = job.priority.name
            let outcome = await run(delivery, tracer: tracer)
            let label: String
            switch outcome {
            case .completed: label = "completed"
            case .interrupted: label = "interrupted"
            case let .failed(message):
                label = "failed"
                span.setStatus(SpanStatus(code: .error, message: message))
            case let .rejected(reason):
                label = "rejected"
                span.setStatus(SpanStatus(code: .error, message: reason.description))
            case .timedOut:
                label = "timed_out"
                span.setStatus(SpanStatus(code: .error, message: "timed out"))
            case .cancelled:
                label = "cancelled"
                span.setStatus(SpanStatus(code: .error, message: "cancelled"))
            }
            // A stop settles the attempt as what stopped it, whatever the handler then returned.
            switch delivery.stop.reason {
            case .timedOut?: span.attributes["warren.job.outcome"] = "timed_out"
            case .cancelled?: span.attributes["warren.job.outcome"] = "cancelled"
            case .shutdown?: span.attributes["warren.job.outcome"] = "interrupted"
            case nil: span.attributes["warren.job.outcome"] = label
            }
            return outcome
        }
    }

    private func release(_ run: UInt64) {
        let wake = state.withLock { state -> (room: CheckedContinuation<Void, Never>?, pull: Task<Delivery?, Never>?, drained: CheckedContinuation<Void, Never>?) in
            guard let (group, slot, _) = state.handlers.removeValue(forKey: run) else { return (nil, nil, nil) }
            state.free(group, slot)
            let roomWaiter = state.roomWaiter
            state.roomWaiter = nil
            // A parked pull with a narrower filter than what is free now is restarted.
            var pull: Task<Delivery?, Never>?
            if let current = state.pull, current.filter != state.filter(servable: servable) { pull = current.task }
            var drained: CheckedContinuation<Void, Never>?
            if state.running == 0 { drained = state.drainWaiter; state.drainWaiter = nil }
            return (roomWaiter, pull, drained)
        }
        wake.room?.resume()
        wake.pull?.cancel()
        wake.drained?.resume()
    }

    // MARK: Shutdown

    private func drain() async {
        let clock = self.clock
        let grace = clock.now().addingTimeInterval(configuration.shutdownGrace.timeInterval)
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask { [state] in
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let done = state.withLock { state -> Bool in
                        if state.running == 0 { return true }
                        state.drainWaiter = continuation
                        return false
                    }
                    if done { continuation.resume() }
                }
                return true
            }
            group.addTask {
                try? await clock.sleep(until: grace)
                return false
            }
            let first = await group.next() ?? true
            group.cancelAll()
            if !first {
                // Past the grace period: stop what still runs, then wait for their tasks to end.
                let (stops, drainWaiter) = state.withLock { state -> ([StopSignal], CheckedContinuation<Void, Never>?) in
                    defer { state.drainWaiter = nil }
                    return (state.handlers.values.map(\.stop), state.drainWaiter)
                }
                for stop in stops { stop.fire(.shutdown) }
                drainWaiter?.resume()
                // The stops settle the attempts at once, in tasks of their own: done before run()
                // returns, so a broker closed right after still settles them (a dead letter
                // published but its original never acked came back after every restart).
                for stop in stops { await stop.stopSettlement?.value }
            }
            return first
        }
        _ = finished
    }
}

/// An error as the text stored with the failed attempt.
func describeFailure(_ error: any Error) -> String {
    if let error = error as? any LocalizedError, let text = error.errorDescription { return text }
    return String(describing: error)
}

private struct SlotFilters {
    let ordinary: DeliveryFilter
    let reserved: DeliveryFilter

    init(_ group: WorkerGroup, servable: [Set<String>], limits: NameLimits?) {
        ordinary = DeliveryFilter(
            rooms: [.init(lowest: .background, capabilities: group.capabilities)], servable: servable, limits: limits)
        reserved = DeliveryFilter(
            rooms: [.init(lowest: .critical, capabilities: group.capabilities)], servable: servable, limits: limits)
    }
}

/// The task running a job (or a slot's jobs), for a stop or shutdown to cancel. A cancel can come
/// before the task is attached; it is then cancelled as it is attached.
private final class WorkerTask: Sendable {
    private let state = Mutex<(task: Task<Void, Never>?, cancelled: Bool)>((nil, false))

    func attach(_ task: Task<Void, Never>) {
        let cancel = state.withLock { state -> Bool in
            state.task = task
            return state.cancelled
        }
        if cancel { task.cancel() }
    }

    func cancel() {
        let task = state.withLock { state -> Task<Void, Never>? in
            state.cancelled = true
            return state.task
        }
        task?.cancel()
    }
}

private struct PoolState {
    var loads: [GroupLoad]
    var router: Router
    var running = 0
    /// Each running handler's group, slot and stop signal, by run.
    /// Handlers running now, by run: the group and slot they hold and their stop signal.
    var handlers: [UInt64: (group: Int, slot: Slot, stop: StopSignal)] = [:]
    var nextRun: UInt64 = 0
    var roomWaiter: CheckedContinuation<Void, Never>?
    var pull: (filter: DeliveryFilter, task: Task<Delivery?, Never>)?
    var drainWaiter: CheckedContinuation<Void, Never>?
    /// A one-group pool: waits for shutdown.
    var stopWaiter: CheckedContinuation<Void, Never>?
    /// A one-group pool: the slot tasks waiting for a job, which shutdown cancels.
    var idleSlots: [ObjectIdentifier: WorkerTask] = [:]
    /// `filter`'s answer until a group's room changes.
    private var cachedFilter: DeliveryFilter?
    let limits: NameLimits?

    init(loads: [GroupLoad], router: Router, limits: NameLimits?) {
        self.loads = loads
        self.router = router
        self.limits = limits
    }

    /// Notes a job now running in a slot; returns its run. Keyed per run, not per job: a retry can
    /// start while its timed-out attempt still runs. (A slot that takes its next job as it settles
    /// one keeps its run.)
    mutating func register(_ stop: StopSignal, in group: Int, _ slot: Slot) -> UInt64 {
        nextRun &+= 1
        handlers[nextRun] = (group, slot, stop)
        return nextRun
    }

    /// What the pool can take now. Kept until a group's room changes: it is asked for on every
    /// pull and every release, but changes only when a group fills up or gets room again.
    mutating func filter(servable: [Set<String>]) -> DeliveryFilter {
        if let cachedFilter { return cachedFilter }
        let filter = makeFilter(servable: servable)
        cachedFilter = filter
        return filter
    }

    private func makeFilter(servable: [Set<String>]) -> DeliveryFilter {
        var rooms: [DeliveryFilter.Room] = []
        for load in loads {
            if load.busy < load.group.concurrency {
                rooms.append(.init(lowest: .background, capabilities: load.group.capabilities))
            } else if load.reservedBusy < load.group.reservedForCritical {
                rooms.append(.init(lowest: .critical, capabilities: load.group.capabilities))
            }
        }
        return DeliveryFilter(rooms: rooms, servable: servable, limits: limits)
    }

    func fallback(for job: Job) -> (group: Int, slot: Slot) {
        let capable = loads.indices.filter { job.requiredCapabilities.isSubset(of: loads[$0].group.capabilities) }
        let index = capable.min { loads[$0].load < loads[$1].load } ?? 0
        return (index, .ordinary)
    }

    /// Whether a group has an ordinary room, a reserved one, or none (what its rooms depend on).
    private func roomState(_ group: Int) -> Int {
        let load = loads[group]
        return load.busy < load.group.concurrency ? 2 : (load.reservedBusy < load.group.reservedForCritical ? 1 : 0)
    }

    mutating func occupy(_ group: Int, _ slot: Slot) {
        let before = roomState(group)
        defer { if roomState(group) != before { cachedFilter = nil } }
        running += 1
        switch slot {
        case .ordinary: loads[group].busy += 1
        case .reserved: loads[group].reservedBusy += 1
        }
    }

    mutating func free(_ group: Int, _ slot: Slot) {
        let before = roomState(group)
        defer { if roomState(group) != before { cachedFilter = nil } }
        running -= 1
        switch slot {
        case .ordinary: loads[group].busy -= 1
        case .reserved: loads[group].reservedBusy -= 1
        }
    }
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from a job's metadata.
struct MetadataExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}
