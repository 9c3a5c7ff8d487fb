#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@_spi(Transport) import Warren

/// What arrives: decodes each burst of deliveries, dead-letters what is not a job (with the
/// reason), sends `x-warren-delay` messages through the delay cascade, sets copies of jobs held
/// here aside (they are settled with the original), holds jobs whose dependencies have not arrived,
/// and enqueues the rest in the local engine together.
final class Ingest: Sendable {
    private let configuration: AMQPBroker.Configuration
    private let local: LocalQueue
    private let settlement: Settlement
    private let deliveries: Deliveries
    private let published: PublishedJobs
    private let link: Locked<LinkState>
    private let holds: DependencyHolds
    private let malformed = Locked(0)
    /// The job-state store, when there is one: each arriving job is claimed before it goes in.
    private let store: StoreLink?
    /// Copies of jobs another live instance holds: unacked here, claimed again every `recheck`
    /// until that instance ends them (then acked as duplicates) or its lease runs out (then run here).
    private let parked = Locked<[JobID: (job: Job, message: IncomingMessage)]>([:])
    /// Every `storeRecheck` while copies are parked or jobs wait for dependencies: claims the
    /// parked copies again and asks the store how the awaited dependencies stand (endings are
    /// heard over pub/sub at once; this catches the ones said while the store was unreachable).
    private let recheck: Alarm
    private let clock: any WarrenClock
    static let storeRecheck: Duration = .milliseconds(500)
    /// Whether the endings of jobs anywhere are followed (with a store, from the start).
    private let watchingEndings = Locked(false)

    init(
        configuration: AMQPBroker.Configuration, local: LocalQueue, settlement: Settlement, deliveries: Deliveries,
        published: PublishedJobs, link: Locked<LinkState>, store: StoreLink?, clock: any WarrenClock
    ) {
        self.store = store
        self.clock = clock
        let tick = Locked<(@Sendable () -> Bool)?>(nil)
        recheck = Alarm(clock: clock) { now in
            let waiting = tick.withLock { $0 }?() ?? false
            return waiting ? now.addingTimeInterval(Self.storeRecheck.timeInterval) : nil
        }
        self.configuration = configuration
        self.local = local
        self.settlement = settlement
        self.deliveries = deliveries
        self.published = published
        self.link = link
        let wait = configuration.dependencyWait
        holds = DependencyHolds(clock: clock) { overdue in
            // Dependencies that never came (or, with a store, never ended): their jobs are dead-lettered saying which.
            for (dependency, entry) in overdue {
                guard let origins = deliveries.take(entry.job.id) else { continue }
                let reason = DeadLetterReason.malformedMessage(
                    store == nil
                        ? "its dependency \(dependency) did not arrive at this worker within \(wait)"
                        : "its dependency \(dependency) did not end within \(wait)")
                store?.note(entry.job.id, .deadLettered(reason))
                settlement.deadLetter(
                    properties: entry.message.properties, body: entry.message.body, reason: reason,
                    errors: entry.job.errors, attempts: entry.job.attempt - 1, origins: origins)
            }
        }
        tick.withLock { $0 = { [weak self] in self?.recheckStore() ?? false } }
        if let store { followEndings(store) }
    }

    /// A job left the engine for a retry that may run on another instance: if jobs here wait for
    /// it, the store is asked how it ends (besides hearing it over pub/sub).
    func handedOffForRetry() {
        guard store != nil else { return }
        recheck.arm(at: clock.now().addingTimeInterval(Self.storeRecheck.timeInterval))
    }

    /// Messages that were not valid jobs, dead-lettered on arrival.
    var malformedCount: Int { malformed.withLock { $0 } }

    /// Takes a burst of deliveries (on the connection's I/O thread).
    func receive(_ burst: [IncomingMessage], generation: UInt64) {
        if link.withLock({ $0.handingBack }) {
            // Arrived after consumption stopped (sent before the broker took the cancel): give them back.
            for message in burst {
                settlement.giveBack(
                    Origins(first: Origin(message, generation: generation)), priority: Consumers.priority(ofTag: message.consumerTag),
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
                    settlement.delay(message, generation: generation, until: notBefore, priority: priority)
                    continue
                }
                // A replay of a job that died here: its id is in the dedup window, but it must run.
                if job.metadata[WireFormat.replayedKey] != nil { local.forgetFinished(job.id) }
                jobs.append(job)
                origins.append(Origin(message, generation: generation))
                indices.append(index)
            case let .failure(reason):
                malformed.withLock { $0 += 1 }
                settlement.deadLetter(properties: message.properties, body: message.body, reason: reason, errors: [], attempts: 0,
                                      origins: Origins(first: Origin(message, generation: generation)))
                // Known here as dead-lettered (under its id when it has one), in outcomes, events and statistics.
                let id = message.properties.messageID.flatMap { $0.isEmpty ? nil : JobID($0) } ?? .random()
                let name = message.properties.type.flatMap { $0.isEmpty ? nil : $0 } ?? configuration.queue
                let rejected = Job(id: id, name: name, payload: Data(), priority: priority)
                local.recordRejected(rejected, reason)
                settlement.announce(.deadLettered, rejected, reason: reason)
                if let store, message.properties.messageID?.isEmpty == false {
                    // Known so everywhere, unless its id belongs to a job that ended or runs elsewhere.
                    Task {
                        guard await store.claim([rejected]) == [.claimed] else { return }
                        store.note(id, .deadLettered(reason))
                    }
                }
            }
        }
        guard !jobs.isEmpty else { return }
        // Where each job came from; a copy of a job held here (a redelivery after a reconnection)
        // is settled with the original.
        let copies = deliveries.register(jobs.map(\.id), origins)
        guard store != nil else {
            admit(jobs, indices.map { burst[$0] }, copies: copies)
            return
        }
        var fresh: [Job] = [], messages: [IncomingMessage] = []
        for position in jobs.indices where !copies[position] {
            fresh.append(jobs[position])
            messages.append(burst[indices[position]])
        }
        claim(fresh, messages)
    }

    /// Enqueues arrived jobs in the local engine, together: those whose dependencies have not all
    /// arrived wait (rare). `messages` are the jobs' own; `copies` says which are copies of jobs held here.
    private func admit(_ jobs: [Job], _ messages: [IncomingMessage], copies: [Bool]? = nil, cancelling: Set<JobID> = []) {
        var setAside: [Int] = [], waiting: [Int] = [], arrived: [JobID] = []
        for position in jobs.indices {
            if copies?[position] == true {
                setAside.append(position)
                continue
            }
            arrived.append(jobs[position].id)
            if !jobs[position].dependencies.isEmpty {
                setAside.append(position)
                waiting.append(position)
            }
        }
        // Not in the local queue until their dependencies are: the window remembers them meanwhile.
        var cancelled = published.arrived(arrived, holding: waiting.map { jobs[$0].id })
        cancelled.formUnion(cancelling)
        let anyHeld = !holds.isEmpty
        if !waiting.isEmpty {
            resolve(waiting.map { (jobs[$0], messages[$0], cancelled.contains(jobs[$0].id)) })
        }
        // Usually every job goes in: the arrays are passed on as they are.
        var ready = jobs, readyMessages = messages
        if !setAside.isEmpty {
            let aside = Set(setAside)
            ready = []
            readyMessages = []
            for (position, job) in jobs.enumerated() where !aside.contains(position) {
                ready.append(job)
                readyMessages.append(messages[position])
            }
        }
        guard !ready.isEmpty else { return }
        // Asked after this burst's own dependents have started waiting.
        let releases = anyHeld || (!waiting.isEmpty && !holds.isEmpty)
        let refusals = local.enqueueEach(ready, cancelling: cancelled)
        for (position, refusal) in refusals.enumerated() {
            if let refusal {
                refuse(ready[position], readyMessages[position], refusal)
            } else if releases {
                release(waitingFor: ready[position].id)
            }
        }
    }

    // MARK: Claims

    /// Claims arrived jobs in the store, then admits those this instance may run; ended ones are
    /// acked as duplicates, cancelled ones settled as cancelled, copies held elsewhere parked.
    private func claim(_ jobs: [Job], _ messages: [IncomingMessage]) {
        guard let store, !jobs.isEmpty else { return }
        Task {
            let answers = await store.claim(jobs)
            var run: [Job] = [], runMessages: [IncomingMessage] = [], cancelled: Set<JobID> = []
            var parking: [(job: Job, message: IncomingMessage)] = []
            for (position, job) in jobs.enumerated() {
                switch answers?[position] ?? .claimed {
                case .claimed:
                    run.append(job)
                    runMessages.append(messages[position])
                case .cancelled:
                    // Cancelled before it ran: in, and out at once as cancelled (known here so,
                    // its message acked), as a job cancelled here before it arrived.
                    run.append(job)
                    runMessages.append(messages[position])
                    cancelled.insert(job.id)
                case .finished:
                    if let origins = deliveries.take(job.id) { settlement.ack(origins) }
                case .heldElsewhere:
                    parking.append((job, messages[position]))
                }
            }
            if !parking.isEmpty {
                parked.withLock { parked in for entry in parking { parked[entry.job.id] = entry } }
                recheck.arm(at: clock.now().addingTimeInterval(Self.storeRecheck.timeInterval))
            }
            guard !run.isEmpty else { return }
            if link.withLock({ $0.handingBack }) {
                // Claimed while consumption stopped: back to the broker, and to the other instances.
                await store.release(run.map(\.id))
                handBack(run)
                return
            }
            admit(run, runMessages, cancelling: cancelled)
        }
    }

    /// Claims the parked copies again, and asks how the dependencies held jobs wait for stand;
    /// whether anything still waits.
    private func recheckStore() -> Bool {
        let entries = parked.withLock { parked in
            defer { parked.removeAll() }
            return Array(parked.values)
        }
        claim(entries.map(\.job), entries.map(\.message))
        // Dependencies of jobs held here, and retries handed off that jobs in the engine wait for;
        // and the held jobs' own cancel marks (a cancel said while one was between its claim and
        // its hold, or while the store was unreachable, is not heard again).
        let awaited = Array(Set(holds.dependencies + local.awaitedElsewhere))
        let held = holds.jobs
        if let store, !awaited.isEmpty {
            Task {
                if let marks = await store.cancelRequested(held) {
                    for (id, marked) in zip(held, marks) where marked { _ = cancelHeld(id) }
                }
                guard let statuses = await store.statuses(awaited) else { return }
                for (dependency, status) in zip(awaited, statuses) {
                    guard let status, status.isTerminal else { continue }
                    ended(dependency, status)
                }
            }
        }
        return !entries.isEmpty || !awaited.isEmpty
    }

    /// With a store: a job waiting for dependencies this process does not hold learns there how
    /// they stand. One that failed or was cancelled dead-letters it (as in memory); one not ended
    /// holds it here (its message unacked, woken when that dependency ends anywhere, for at most
    /// `dependencyWait`); completed ones are done with. The rest is as without a store: the
    /// dependencies held here order it. If the store does not answer: as without a store.
    private func resolve(_ waiting: [(job: Job, message: IncomingMessage, cancelled: Bool)]) {
        guard let store else {
            for entry in waiting { admit(entry.job, entry.message, cancelled: entry.cancelled) }
            return
        }
        Task {
            let remote = Array(Set(waiting.flatMap { $0.job.dependencies.filter { local.snapshot($0) == nil } }))
            var statuses: [JobID: JobStatus] = [:]
            if !remote.isEmpty {
                guard let answers = await store.statuses(remote) else {
                    for entry in waiting { admit(entry.job, entry.message, cancelled: entry.cancelled) }
                    return
                }
                for (id, status) in zip(remote, answers) { statuses[id] = status }
                followEndings(store)
            }
            for entry in waiting {
                var job = entry.job
                if let failed = job.dependencies.first(where: { statuses[$0] == .deadLettered || statuses[$0] == .cancelled }),
                   let status = statuses[failed] {
                    failDependent(job, entry.message, dependency: failed, status: status)
                    continue
                }
                if let pending = job.dependencies.first(where: { local.snapshot($0) == nil && statuses[$0] != .completed }) {
                    holds.hold(job, entry.message, cancelled: entry.cancelled, waitingFor: pending, atMost: configuration.dependencyWait)
                    recheck.arm(at: clock.now().addingTimeInterval(Self.storeRecheck.timeInterval))
                    continue
                }
                // Completed elsewhere: nothing to wait for here.
                job.dependencies.removeAll { local.snapshot($0) == nil }
                admit(job, entry.message, cancelled: entry.cancelled)
            }
        }
    }

    /// With a store: jobs that end anywhere release what waits for them here.
    private func followEndings(_ store: StoreLink) {
        guard watchingEndings.withLock({ watching in
            defer { watching = true }
            return !watching
        }) else { return }
        store.store.watchEndings { [weak self] id, status in self?.ended(id, status) }
    }

    /// A job ended somewhere: the jobs held here for it, and those in the engine waiting for its
    /// retry (which ran elsewhere), go on or fail with it.
    private func ended(_ id: JobID, _ status: JobStatus) {
        local.endedElsewhere(id, status)
        release(waitingFor: id)
    }

    /// Dead-letters a job whose dependency failed or was cancelled elsewhere, naming it.
    private func failDependent(_ job: Job, _ message: IncomingMessage, dependency: JobID, status: JobStatus) {
        guard let origins = deliveries.take(job.id) else { return }
        let reason = DeadLetterReason.dependencyFailed(dependency, status: status)
        store?.note(job.id, .deadLettered(reason))
        local.recordRejected(job, reason)
        settlement.announce(.deadLettered, job, reason: reason)
        settlement.deadLetter(
            properties: message.properties, body: message.body, reason: reason, errors: job.errors, attempts: job.attempt - 1, origins: origins)
    }

    // MARK: Dependencies

    /// Enqueues a received job once every dependency is here; then the jobs that waited for it.
    private func admit(_ job: Job, _ message: IncomingMessage, cancelled: Bool) {
        if let missing = job.dependencies.first(where: { local.snapshot($0) == nil }) {
            holds.hold(job, message, cancelled: cancelled, waitingFor: missing, atMost: configuration.dependencyWait)
            // It may have arrived between the look and the wait: look again.
            if local.snapshot(missing) != nil { release(waitingFor: missing) }
            return
        }
        do {
            try local.enqueue([job], cancelling: cancelled ? [job.id] : [])
        } catch {
            refuse(job, message, error)
            return
        }
        release(waitingFor: job.id)
    }

    private func release(waitingFor id: JobID) {
        let entries = holds.release(waitingFor: id)
        guard !entries.isEmpty else { return }
        resolve(entries.map { ($0.job, $0.message, $0.cancelled) })
    }

    private func refuse(_ job: Job, _ message: IncomingMessage, _ error: EnqueueRefusal) {
        guard let origins = deliveries.take(job.id) else { return }
        switch error {
        case .duplicate:
            // Finished here already (inside the dedup window): drop the copy.
            settlement.ack(origins)
        case .queueFull, .closed, .unavailable:
            // Back to the broker, for this or another consumer.
            settlement.giveBack(origins, priority: job.priority, body: Array(job.payload))
        case let .unknownDependency(_, dependency):
            settlement.deadLetter(properties: message.properties, body: message.body,
                                  reason: .malformedMessage("it depends on job \(dependency), which this worker has not seen"), errors: job.errors,
                                  attempts: job.attempt - 1, origins: origins)
        case let .invalid(_, why):
            settlement.deadLetter(properties: message.properties, body: message.body, reason: .malformedMessage(why), errors: job.errors,
                                  attempts: job.attempt - 1, origins: origins)
        case let .dependencyCycle(cycle):
            settlement.deadLetter(properties: message.properties, body: message.body,
                                  reason: .malformedMessage("dependency cycle \(cycle.map(\.rawValue))"), errors: job.errors,
                                  attempts: job.attempt - 1, origins: origins)
        }
    }

    /// A cancel for a job held here until its dependencies end: it leaves at once, cancelled (known
    /// here so, its message acked); whether it was held here.
    func cancelHeld(_ id: JobID) -> Bool {
        guard let entry = holds.remove(id) else { return false }
        // It never runs: what it waited for no longer matters.
        var job = entry.job
        job.dependencies = []
        do {
            try local.enqueue([job], cancelling: [id])
        } catch {
            refuse(job, entry.message, error)
        }
        return true
    }

    /// Stops the store rechecks (the broker closes; what is still held goes back with the channel).
    func stop() { recheck.stop() }

    // MARK: Handing back

    /// Returns unstarted jobs' messages (and their redelivered copies) to the broker, and every
    /// message still held here for a dependency.
    func handBack(_ jobs: [Job]) {
        let waiting = parked.withLock { parked in
            defer { parked.removeAll() }
            return parked.values.map(\.job)
        }
        for job in jobs + holds.releaseAll().map(\.job) + waiting {
            guard let origins = deliveries.take(job.id) else { continue }
            settlement.giveBack(origins, priority: job.priority, body: Array(job.payload))
        }
    }
}

/// Jobs that arrived before one of their dependencies (the five queues deliver in any order),
/// by the dependency they wait for; their messages stay unacked meanwhile. One timer for all their
/// deadlines (`AMQPBroker.Configuration.dependencyWait`), not a task per job.
final class DependencyHolds: Sendable {
    struct Held: Sendable {
        let job: Job
        let message: IncomingMessage
        let cancelled: Bool
        let until: Date
    }

    private let held: Locked<[JobID: [Held]]>
    private let alarm: Alarm
    private let clock: any WarrenClock

    /// - Parameter expired: called with the jobs whose wait ran out, and the dependency each waited for.
    init(clock: any WarrenClock, expired: @escaping @Sendable ([(dependency: JobID, held: Held)]) -> Void) {
        let held = Locked<[JobID: [Held]]>([:])
        self.held = held
        self.clock = clock
        alarm = Alarm(clock: clock) { now in
            let (overdue, next) = held.withLock { held -> ([(dependency: JobID, held: Held)], Date?) in
                var overdue: [(dependency: JobID, held: Held)] = []
                var next: Date?
                for dependency in Array(held.keys) {
                    var kept: [Held] = []
                    for entry in held[dependency] ?? [] {
                        if entry.until <= now {
                            overdue.append((dependency, entry))
                        } else {
                            kept.append(entry)
                            next = min(next ?? entry.until, entry.until)
                        }
                    }
                    held[dependency] = kept.isEmpty ? nil : kept
                }
                return (overdue, next)
            }
            if !overdue.isEmpty { expired(overdue) }
            return next
        }
    }

    var isEmpty: Bool { held.withLock { $0.isEmpty } }

    func hold(_ job: Job, _ message: IncomingMessage, cancelled: Bool, waitingFor dependency: JobID, atMost wait: Duration) {
        let until = clock.now().addingTimeInterval(wait.timeInterval)
        held.withLock { $0[dependency, default: []].append(Held(job: job, message: message, cancelled: cancelled, until: until)) }
        alarm.arm(at: until)
    }

    /// The jobs that waited for `dependency`.
    func release(waitingFor dependency: JobID) -> [Held] { held.withLock { $0.removeValue(forKey: dependency) } ?? [] }

    /// The dependencies held jobs wait for.
    var dependencies: [JobID] { held.withLock { Array($0.keys) } }

    /// The held jobs.
    var jobs: [JobID] { held.withLock { $0.values.flatMap { $0.map(\.job.id) } } }

    /// Takes the held job `id` out, whatever it waits for.
    func remove(_ id: JobID) -> Held? {
        held.withLock { held in
            for (dependency, entries) in held {
                guard let index = entries.firstIndex(where: { $0.job.id == id }) else { continue }
                var kept = entries
                let entry = kept.remove(at: index)
                held[dependency] = kept.isEmpty ? nil : kept
                return entry
            }
            return nil
        }
    }

    /// Every held job (a graceful stop hands them back); the timer stops.
    func releaseAll() -> [Held] {
        alarm.stop()
        return held.withLock { held in
            defer { held.removeAll() }
            return held.values.flatMap { $0 }
        }
    }
}
