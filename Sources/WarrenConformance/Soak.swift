#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import Warren

/// A seeded random workload run against any broker for a bounded time, with invariants checked
/// while it runs: bursts of jobs of every priority separated by idle gaps, delays, deadlines
/// (past and future), retries, failures, timeouts, rejections, cancels (before and while running),
/// dependencies (that complete and that fail), per-name limits, reserved critical slots.
///
/// Checked continuously: no ready job waits longer than `maxReadyWait` while a slot that may run it
/// is idle; the pool's limit, its ordinary slots and each name's limit are never exceeded; nothing
/// starts before its delay, after its deadline, before its dependencies completed, or after it
/// was cancelled. At the end: every job ended exactly as its script says, none lost. A failure
/// names the seed and the last events.
public struct Soak: Sendable {
    public struct Settings: Sendable {
        public var seed: UInt64
        /// How long new jobs keep coming; the run then waits for every job to end.
        public var duration: Duration
        /// The longest a ready job may wait while a slot that could run it is idle.
        public var maxReadyWait: Duration
        /// How long after the last burst every job must have ended.
        public var settleTime: Duration
        public var concurrency: Int
        public var reservedForCritical: Int
        /// The limit on the `slow` jobs.
        public var slowLimit: Int

        public init(
            seed: UInt64, duration: Duration = .seconds(60), maxReadyWait: Duration = .milliseconds(50),
            settleTime: Duration = .seconds(60)
        ) {
            self.seed = seed
            self.duration = duration
            self.maxReadyWait = maxReadyWait
            self.settleTime = settleTime
            var random = SplitMix64(seed: seed)
            concurrency = Int.random(in: 2...6, using: &random)
            reservedForCritical = Int.random(in: 0...1, using: &random)
            slowLimit = Int.random(in: 1...2, using: &random)
        }
    }

    /// What a broker needs to be soaked: the broker, and which jobs it holds ready itself now (a
    /// transport's published-job index can say `queued` for a message still on its way).
    public struct Subject: Sendable {
        public let broker: any Broker
        public let isReadyHere: @Sendable (JobID) async -> Bool
        public init(broker: any Broker, isReadyHere: @escaping @Sendable (JobID) async -> Bool) {
            self.broker = broker
            self.isReadyHere = isReadyHere
        }
    }

    /// What a run saw.
    public struct Report: Sendable, CustomStringConvertible {
        public var jobs = 0
        public var attempts = 0
        public var longestReadyWhileIdle: Duration = .zero
        public var byOutcome: [String: Int] = [:]
        public var description: String {
            "\(jobs) jobs, \(attempts) attempts, outcomes \(byOutcome.sorted { $0.key < $1.key }), "
                + "longest ready wait with an idle slot \(longestReadyWhileIdle)"
        }
    }

    public let settings: Settings
    public init(_ settings: Settings) { self.settings = settings }

    /// The quick retry policy a soaked broker should use (the cases' backoffs assume it).
    public static let retryPolicy = RetryPolicy(baseDelay: .milliseconds(50), multiplier: 2, maxDelay: .milliseconds(400), jitter: 0.2)

    /// Runs the soak on `subject` (whose broker it closes at the end).
    public func run(_ subject: Subject) async throws -> Report {
        let settings = self.settings
        let broker = subject.broker
        let watch = Watch(settings: settings)
        let registry = try Self.handlers(watch)
        let pool = WorkerPool(
            broker: broker, registry: registry,
            configuration: WorkerPoolConfiguration(
                concurrency: settings.concurrency, reservedForCritical: settings.reservedForCritical,
                shutdownGrace: .seconds(5), limits: ["slow": settings.slowLimit]))
        let events = broker.events()
        let following = Task {
            for await event in events where event.isTerminal { watch.done(event.id) }
        }
        let running = Task { await pool.run() }
        let sampler = Task { await Self.sample(subject, watch: watch, settings: settings) }
        var failure: (any Error)?
        do {
            try await produce(broker, watch: watch)
            try await awaitOutcomes(broker, watch: watch)
        } catch {
            failure = error
        }
        sampler.cancel()
        await sampler.value
        pool.shutdown()
        await running.value
        await broker.close()
        await following.value
        if let failure { throw watch.failure(failure) }
        let violations = watch.violations
        if !violations.isEmpty {
            throw watch.failure(ConformanceFailure("\(violations.count) violations; first: \(violations.prefix(5).joined(separator: "; "))"))
        }
        return watch.report
    }

    // MARK: The workload

    /// How each scripted job must end.
    enum Expected: Equatable, Sendable, CustomStringConvertible {
        case completed
        case deadLettered(String)
        case cancelled

        var description: String {
            switch self {
            case .completed: "completed"
            case let .deadLettered(code): "dead-lettered \(code)"
            case .cancelled: "cancelled"
            }
        }
    }

    /// A job's script, in its payload: how long each attempt runs and how many attempts fail.
    struct Script: Codable {
        var millis: Int
        /// Attempts that fail before one succeeds (more than the retries: dead-lettered).
        var failures: Int
        /// Runs until stopped (cancelled or timed out).
        var hangs: Bool
        var rejects: Bool
    }

    static func handlers(_ watch: Watch) throws -> HandlerRegistry {
        var registry = HandlerRegistry()
        for name in ["quick", "slow", "flaky", "hang", "reject"] {
            try registry.registerRaw(name) { payload, context in
                let script = try JSONDecoder().decode(Script.self, from: payload)
                watch.started(context)
                defer { watch.ended(context) }
                if script.hangs {
                    while !Task.isCancelled { try? await Task.sleep(for: .seconds(10)) }
                    throw CancellationError()
                }
                if script.millis > 0 { try? await Task.sleep(for: .milliseconds(script.millis)) }
                if script.rejects { throw JobRejected("the script says no") }
                if context.attempt <= script.failures { throw ConformanceFailure("scripted failure \(context.attempt)") }
                return Data("{\"ok\":true}".utf8)
            }
        }
        return registry
    }

    func produce(_ broker: any Broker, watch: Watch) async throws {
        var random = SplitMix64(seed: settings.seed &* 0x9E37_79B9_7F4A_7C15)
        let end = ContinuousClock.now + settings.duration
        var counter = 0
        var recent: [JobID] = []
        while ContinuousClock.now < end {
            let burst = Int.random(in: 0...9, using: &random) == 0 ? 1 : Int.random(in: 3...30, using: &random)
            for _ in 0..<burst {
                counter += 1
                let id = JobID("soak-\(settings.seed)-\(counter)")
                var (job, expected, cancelAfter) = Self.makeJob(id: id, recent: recent, watch: watch, random: &random)
                job.createdAt = Date()
                // Known before it is sent: a transport may run it before `enqueue` returns.
                watch.submitted(job, expected: expected)
                do {
                    try await broker.enqueue([job])
                } catch {
                    watch.refused(id)
                    if case .unknownDependency = error { continue }  // its dependency left the window
                    throw ConformanceFailure("\(id) was refused: \(error)")
                }
                recent.append(id)
                if recent.count > 40 { recent.removeFirst() }
                if let cancelAfter {
                    Task {
                        try? await Task.sleep(for: cancelAfter)
                        watch.cancelling(id)
                        _ = await broker.cancel(id)
                    }
                }
            }
            // An idle gap: the pool goes idle, then lone jobs must still start at once.
            let gap = Int.random(in: 0...3, using: &random) == 0 ? Int.random(in: 200...700, using: &random) : Int.random(in: 0...60, using: &random)
            try await Task.sleep(for: .milliseconds(gap))
        }
    }

    static func makeJob(id: JobID, recent: [JobID], watch: Watch, random: inout SplitMix64) -> (Job, Expected, Duration?) {
        let priority = JobPriority.allCases[Int.random(in: 0...4, using: &random)]
        func script(_ millis: Int, failures: Int = 0, hangs: Bool = false, rejects: Bool = false) -> Data {
            (try? JSONEncoder().encode(Script(millis: millis, failures: failures, hangs: hangs, rejects: rejects))) ?? Data()
        }
        let now = Date()
        switch Int.random(in: 1...100, using: &random) {
        case 1...35:
            return (Job(id: id, name: "quick", payload: script(Int.random(in: 0...3, using: &random)), priority: priority), .completed, nil)
        case 36...50:
            return (Job(id: id, name: "slow", payload: script(Int.random(in: 20...80, using: &random)), priority: priority), .completed, nil)
        case 51...58:
            let failures = Int.random(in: 1...3, using: &random)
            let retries = Int.random(in: 0...2, using: &random)
            let expected: Expected = failures > retries ? .deadLettered("retries_exhausted") : .completed
            return (Job(id: id, name: "flaky", payload: script(1, failures: failures), priority: priority, maxRetries: retries), expected, nil)
        case 59...62:
            return (Job(id: id, name: "reject", payload: script(1, rejects: true), priority: priority), .deadLettered("rejected"), nil)
        case 63...66:
            // Times out on every attempt.
            return (Job(id: id, name: "hang", payload: script(0, hangs: true), priority: priority, timeout: .milliseconds(60), maxRetries: 0),
                    .deadLettered("retries_exhausted"), nil)
        case 67...70:
            // Cancelled while it runs (or before, if it has not started yet).
            return (Job(id: id, name: "hang", payload: script(0, hangs: true), priority: priority), .cancelled,
                    .milliseconds(Int.random(in: 5...120, using: &random)))
        case 71...74:
            // Delayed well past its cancel: never runs.
            return (Job(id: id, name: "quick", payload: script(0), priority: priority, notBefore: now.addingTimeInterval(3)), .cancelled,
                    .milliseconds(Int.random(in: 0...200, using: &random)))
        case 75...80:
            let delay = Double(Int.random(in: 20...600, using: &random)) / 1_000
            return (Job(id: id, name: "quick", payload: script(1), priority: priority, notBefore: now.addingTimeInterval(delay)), .completed, nil)
        case 81...84:
            return (Job(id: id, name: "quick", payload: script(1), priority: priority, deadline: now.addingTimeInterval(-1)),
                    .deadLettered("deadline"), nil)
        case 85...88:
            return (Job(id: id, name: "quick", payload: script(1), priority: priority, deadline: now.addingTimeInterval(120)), .completed, nil)
        default:
            // Depends on a recent job: completes when that one completes, dead-lettered otherwise.
            guard let parent = recent.last(where: { watch.expected($0) != nil }), let parentExpected = watch.expected(parent) else {
                return (Job(id: id, name: "quick", payload: script(0), priority: priority), .completed, nil)
            }
            let expected: Expected = parentExpected == .completed ? .completed : .deadLettered("dependency_failed")
            return (Job(id: id, name: "quick", payload: script(1), priority: priority, dependencies: [parent]), expected, nil)
        }
    }

    func awaitOutcomes(_ broker: any Broker, watch: Watch) async throws {
        let deadline = ContinuousClock.now + settings.settleTime
        for (id, expected) in watch.scripts {
            var outcome: JobOutcome?
            while outcome == nil {
                // A broken invariant fails the run at once, not when the wait for an outcome runs out.
                if let first = watch.violations.first { throw ConformanceFailure(first) }
                let remaining = deadline - ContinuousClock.now
                do {
                    outcome = try await within(min(1, max(0.001, remaining.timeInterval)), "job \(id) to end (expected \(expected))") {
                        await broker.outcome(of: id)
                    }
                    if outcome == nil { break }
                } catch {
                    guard remaining > .seconds(1) else {
                        let job = await broker.snapshot(id)
                        throw ConformanceFailure("\(error); the job is \(job.map { "\($0.status) at attempt \($0.attempt): \($0)" } ?? "unknown")")
                    }
                }
            }
            let ended: Expected? = switch outcome {
            case .completed: .completed
            case .cancelled: .cancelled
            case let .deadLettered(reason, _): .deadLettered(reason.code)
            case nil: nil
            }
            watch.ended(id, as: ended)
            guard ended == expected else {
                throw ConformanceFailure("job \(id) ended \(ended.map(\.description) ?? "unknown"), its script says \(expected)")
            }
        }
    }

    /// Every few milliseconds: is a job ready here while a slot that may run it is idle?
    static func sample(_ subject: Subject, watch: Watch, settings: Settings) async {
        let clock = ContinuousClock()
        var previous = clock.now
        var readySince: [JobID: ContinuousClock.Instant] = [:]
        var reported = Set<JobID>()
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(5))
            let now = clock.now
            // A sampler that did not run for a while (a starved machine) saw nothing: start over.
            if now - previous > .milliseconds(20) { readySince.removeAll() }
            previous = now
            var stillReady: [JobID: ContinuousClock.Instant] = [:]
            for (id, name, priority) in watch.waiting() {
                guard watch.hasIdleSlot(for: name, priority), await subject.isReadyHere(id) else { continue }
                // The slot must still be idle after the look: a start in between is no stall.
                guard watch.hasIdleSlot(for: name, priority) else { continue }
                let since = readySince[id] ?? now
                stillReady[id] = since
                let waited = clock.now - since
                watch.readyWhileIdle(waited)
                if waited > settings.maxReadyWait, clock.now - previous < .milliseconds(20), reported.insert(id).inserted {
                    watch.violation("\(id) (\(name), \(priority)) ready for \(waited) while a slot that may run it was idle")
                }
            }
            readySince = stillReady
        }
    }
}

/// What the soak knows and checks, behind one lock.
final class Watch: Sendable {
    struct Entry {
        let job: Job
        let expected: Soak.Expected
        var started = 0
        var running = false
        var done = false
        var ended: Soak.Expected??
        var cancelAsked = false
    }
    struct State {
        var entries: [JobID: Entry] = [:]
        var order: [JobID] = []
        /// Submitted and not ended yet, in submission order.
        var open: [JobID] = []
        var running = 0
        var runningOrdinary = 0
        var byName: [String: Int] = [:]
        var attempts = 0
        var longest: Duration = .zero
        var violations: [String] = []
        var log: [String] = []
        /// The events before the first violation.
        var firstContext: ArraySlice<String> = []
    }
    let settings: Soak.Settings
    let state = Locked(State())

    init(settings: Soak.Settings) { self.settings = settings }

    func note(_ state: inout State, _ text: String) {
        state.log.append("\(Date().timeIntervalSince1970) \(text)")
        if state.log.count > 200 { state.log.removeFirst(100) }
    }

    func submitted(_ job: Job, expected: Soak.Expected) {
        state.withLock { state in
            state.entries[job.id] = Entry(job: job, expected: expected)
            state.order.append(job.id)
            state.open.append(job.id)
            note(&state, "submitted \(job.id) \(job.name) \(job.priority) → \(expected)")
        }
    }

    func refused(_ id: JobID) {
        state.withLock { state in
            state.entries[id] = nil
            state.order.removeAll { $0 == id }
            state.open.removeAll { $0 == id }
        }
    }

    func expected(_ id: JobID) -> Soak.Expected? { state.withLock { $0.entries[id]?.expected } }
    var scripts: [(JobID, Soak.Expected)] { state.withLock { state in state.order.map { ($0, state.entries[$0]!.expected) } } }

    func cancelling(_ id: JobID) {
        state.withLock { state in
            state.entries[id]?.cancelAsked = true
            note(&state, "cancel \(id)")
        }
    }

    func started(_ context: JobContext) {
        let now = Date()
        state.withLock { state in
            state.attempts += 1
            state.running += 1
            if context.priority != .critical { state.runningOrdinary += 1 }
            state.byName[context.name, default: 0] += 1
            note(&state, "start \(context.id) #\(context.attempt) (\(state.running) running)")
            let ceiling = settings.concurrency + settings.reservedForCritical
            if state.running > ceiling { violation(&state, "\(state.running) jobs running, the pool has \(ceiling) slots") }
            if state.runningOrdinary > settings.concurrency {
                violation(&state, "\(state.runningOrdinary) non-critical jobs running in \(settings.concurrency) ordinary slots")
            }
            if context.name == "slow", state.byName["slow"]! > settings.slowLimit {
                violation(&state, "\(state.byName["slow"]!) slow jobs running, limit \(settings.slowLimit)")
            }
            guard var entry = state.entries[context.id] else { return }
            entry.started += 1
            entry.running = true
            state.entries[context.id] = entry
            let job = entry.job
            if let notBefore = job.notBefore, now < notBefore { violation(&state, "\(job.id) started \(notBefore.timeIntervalSince(now)) s early") }
            if let deadline = job.deadline, now > deadline { violation(&state, "\(job.id) started after its deadline") }
            if entry.expected == .cancelled, job.name == "quick" { violation(&state, "\(job.id) ran although it was cancelled before its delay ended") }
            for dependency in job.dependencies {
                if let parent = state.entries[dependency], parent.ended != .some(.some(.completed)), parent.started == 0 {
                    let history = state.log.filter { $0.contains("\(dependency) ") || $0.hasSuffix("\(dependency)") }
                    violation(&state, "\(job.id) started before its dependency \(dependency) ran (\(parent.job.name), expected "
                        + "\(parent.expected), not before \(String(describing: parent.job.notBefore)), deadline "
                        + "\(String(describing: parent.job.deadline)); its events: \(history))")
                }
            }
        }
    }

    func ended(_ context: JobContext) {
        state.withLock { state in
            state.running -= 1
            if context.priority != .critical { state.runningOrdinary -= 1 }
            state.byName[context.name, default: 0] -= 1
            state.entries[context.id]?.running = false
            note(&state, "end \(context.id) #\(context.attempt)")
        }
    }

    /// The job ended (a terminal event): no longer looked at by the sampler.
    func done(_ id: JobID) {
        state.withLock { $0.entries[id]?.done = true }
    }

    func ended(_ id: JobID, as outcome: Soak.Expected?) {
        state.withLock { state in state.entries[id]?.ended = .some(outcome) }
    }

    /// Jobs submitted that have not ended and are not running, with what decides where they may run.
    func waiting() -> [(JobID, String, JobPriority)] {
        state.withLock { state in
            let entries = state.entries
            state.open.removeAll { entries[$0]?.done ?? true }
            return state.open.compactMap { id in
                guard let entry = state.entries[id], !entry.done, !entry.running, !entry.cancelAsked, entry.expected != .cancelled else { return nil }
                return (id, entry.job.name, entry.job.priority)
            }
        }
    }

    func hasIdleSlot(for name: String, _ priority: JobPriority) -> Bool {
        state.withLock { state in
            if name == "slow", state.byName["slow", default: 0] >= settings.slowLimit { return false }
            // Which slot a running critical job holds is the pool's business: an ordinary one is
            // surely free only while fewer jobs run than there are ordinary slots.
            if priority == .critical { return state.running < settings.concurrency + settings.reservedForCritical }
            return state.running < settings.concurrency
        }
    }

    func readyWhileIdle(_ waited: Duration) {
        state.withLock { $0.longest = max($0.longest, waited) }
    }

    func violation(_ text: String) { state.withLock { violation(&$0, text) } }

    private func violation(_ state: inout State, _ text: String) {
        if state.violations.isEmpty { state.firstContext = state.log.suffix(60) }
        state.violations.append(text)
        note(&state, "VIOLATION \(text)")
    }

    var violations: [String] { state.withLock { $0.violations } }

    var report: Soak.Report {
        state.withLock { state in
            var report = Soak.Report()
            report.jobs = state.order.count
            report.attempts = state.attempts
            report.longestReadyWhileIdle = state.longest
            for entry in state.entries.values { report.byOutcome[entry.expected.description, default: 0] += 1 }
            return report
        }
    }

    func failure(_ error: any Error) -> ConformanceFailure {
        let (log, context) = state.withLock { ($0.log.suffix(40).joined(separator: "\n"), $0.firstContext.joined(separator: "\n")) }
        let before = context.isEmpty ? "" : "\nevents before the first violation:\n\(context)"
        return ConformanceFailure("soak seed \(settings.seed) (\(settings)): \(error)\(before)\nlast events:\n\(log)")
    }
}

extension Soak.Settings {
    /// Settings from `WARREN_SOAK_SECONDS` (default 60) and `WARREN_SOAK_SEED` (default `defaultSeed`).
    public static func fromEnvironment(defaultSeed: UInt64) -> Soak.Settings {
        let environment = ProcessInfo.processInfo.environment
        let seconds = environment["WARREN_SOAK_SECONDS"].flatMap(Int.init).map { min(max(1, $0), 3_600) } ?? 60
        let seed = environment["WARREN_SOAK_SEED"].flatMap(UInt64.init) ?? defaultSeed
        return Soak.Settings(seed: seed, duration: .seconds(seconds))
    }
}
