import Foundation
import Synchronization
import Testing
import WarrenConformance
@_spi(Transport) @testable import Warren

/// The worker pool's limits over seeded random set-ups (one group or several, reserved slots,
/// per-name limits), with every job ready before the pool starts: checked at every handler start,
/// running jobs never exceed the pool's slots (reserved ones run critical jobs only), each name
/// stays within its limit, and no job starts while a job of higher priority that an ordinary
/// slot could run is still waiting.
@Suite("Worker pool limits")
struct PoolLimitTests {
    @Test(.timeLimit(.minutes(2)))
    func limitsHoldOverRandomSetUps() async throws {
        let runs = ProcessInfo.processInfo.environment["WARREN_POOL_LIMIT_RUNS"].flatMap(Int.init).map { max(1, $0) } ?? 12
        for seed in 1...UInt64(runs) {
            try await run(seed: seed)
        }
    }

    /// A handler that declares its own limit does not add room: the worker-wide limit stays the
    /// ceiling and the highest priority is served first (the service once gave such a handler a
    /// group of its own, so three jobs ran at once with a limit of one, in arrival order).
    @Test(.timeLimit(.minutes(1)))
    func aNameLimitNeverRaisesThePoolLimit() async throws {
        let broker = InMemoryBroker()
        let monitor = Monitor(ceiling: 1, ordinary: 1, limits: ["wide": 4], jobs: [:], broker: broker)
        var registry = HandlerRegistry()
        for name in ["wide", "other"] {
            try registry.registerRaw(name) { _, context in
                await monitor.started(context)
                try? await Task.sleep(for: .milliseconds(20))
                monitor.ended(context)
                return Data("{}".utf8)
            }
        }
        let jobs = [
            Job(id: "low", name: "wide", priority: .low), Job(id: "other", name: "other", priority: .normal),
            Job(id: "high", name: "wide", priority: .high),
        ]
        try await broker.enqueue(jobs)
        monitor.expect(jobs)
        let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 1, limits: ["wide": 4]))
        let running = Task { await pool.run() }
        for job in jobs { _ = await broker.outcome(of: job.id) }
        pool.shutdown()
        await running.value
        await broker.close()
        #expect(monitor.violations.isEmpty, "\(monitor.violations)")
        #expect(monitor.order == ["high", "other", "low"])
        #expect(monitor.most == 1)
    }

    func run(seed: UInt64) async throws {
        var random = SplitMix64(seed: seed)
        let names = ["a", "b", "c", "d"]
        var limits: [String: Int] = [:]
        for name in names where Bool.random(using: &random) { limits[name] = Int.random(in: 1...3, using: &random) }
        let groups: [WorkerGroup]
        if Int.random(in: 0...3, using: &random) == 0 {
            groups = [WorkerGroup(name: "one", concurrency: Int.random(in: 1...3, using: &random)),
                      WorkerGroup(name: "two", concurrency: Int.random(in: 1...3, using: &random),
                                  reservedForCritical: Int.random(in: 0...1, using: &random))]
        } else {
            groups = [WorkerGroup(concurrency: Int.random(in: 1...6, using: &random), reservedForCritical: Int.random(in: 0...2, using: &random))]
        }
        let ordinary = groups.map(\.concurrency).reduce(0, +)
        let ceiling = ordinary + groups.map(\.reservedForCritical).reduce(0, +)
        var jobs: [Job] = []
        for index in 0..<60 {
            jobs.append(Job(
                id: JobID("s\(seed)-\(index)"), name: names[Int.random(in: 0...3, using: &random)],
                payload: Data("\(Int.random(in: 0...4, using: &random))".utf8),
                priority: JobPriority.allCases[Int.random(in: 0...4, using: &random)]))
        }
        let broker = InMemoryBroker()
        let monitor = Monitor(ceiling: ceiling, ordinary: ordinary, limits: limits, jobs: [:], broker: broker)
        var registry = HandlerRegistry()
        for name in names {
            try registry.registerRaw(name) { payload, context in
                await monitor.started(context)
                let millis = Int(String(decoding: payload, as: UTF8.self)) ?? 0
                if millis > 0 { try? await Task.sleep(for: .milliseconds(millis)) } else { await Task.yield() }
                monitor.ended(context)
                return Data("{}".utf8)
            }
        }
        try await broker.enqueue(jobs)
        monitor.expect(jobs)
        let pool = WorkerPool(
            broker: broker, registry: registry, configuration: WorkerPoolConfiguration(groups: groups, limits: limits))
        let running = Task { await pool.run() }
        for job in jobs {
            let outcome = await broker.outcome(of: job.id)
            guard case .completed = outcome else {
                Issue.record("seed \(seed): \(job.id) ended \(String(describing: outcome))")
                continue
            }
        }
        pool.shutdown()
        await running.value
        await broker.close()
        #expect(monitor.violations.isEmpty, "seed \(seed), groups \(groups), limits \(limits): \(monitor.violations.prefix(5))")
    }
}

/// Watches handler starts and ends.
private final class Monitor: Sendable {
    struct State {
        var running = 0
        var runningOrdinary = 0
        var byName: [String: Int] = [:]
        var most = 0
        var order: [String] = []
        var violations: [String] = []
        var jobs: [JobID: Job] = [:]
    }
    let ceiling: Int
    let ordinary: Int
    let limits: [String: Int]
    let broker: InMemoryBroker
    let state: Mutex<State>

    init(ceiling: Int, ordinary: Int, limits: [String: Int], jobs: [JobID: Job], broker: InMemoryBroker) {
        self.ceiling = ceiling
        self.ordinary = ordinary
        self.limits = limits
        self.broker = broker
        state = Mutex(State(jobs: jobs))
    }

    func expect(_ jobs: [Job]) {
        state.withLock { for job in jobs { $0.jobs[job.id] = job } }
    }

    var violations: [String] { state.withLock { $0.violations } }
    var order: [String] { state.withLock { $0.order } }
    var most: Int { state.withLock { $0.most } }

    func started(_ context: JobContext) async {
        let candidates = state.withLock { state -> [Job] in
            state.running += 1
            state.most = max(state.most, state.running)
            if context.priority != .critical { state.runningOrdinary += 1 }
            state.byName[context.name, default: 0] += 1
            state.order.append(context.id.rawValue)
            if state.running > ceiling { state.violations.append("\(state.running) running, ceiling \(ceiling)") }
            if state.runningOrdinary > ordinary {
                state.violations.append("\(state.runningOrdinary) non-critical jobs running in \(ordinary) ordinary slots")
            }
            if let limit = limits[context.name], state.byName[context.name]! > limit {
                state.violations.append("\(state.byName[context.name]!) '\(context.name)' running, limit \(limit)")
            }
            // Every job was ready before the pool started: one of higher priority and an unlimited
            // name still waiting now was waiting when this one was taken.
            return state.jobs.values.filter { $0.priority < context.priority && limits[$0.name] == nil }
        }
        for candidate in candidates where await broker.snapshot(candidate.id)?.status == .queued {
            state.withLock {
                $0.violations.append("\(context.id) (\(context.priority)) started while \(candidate.id) (\(candidate.priority)) waited")
            }
        }
    }

    func ended(_ context: JobContext) {
        state.withLock { state in
            state.running -= 1
            if context.priority != .critical { state.runningOrdinary -= 1 }
            state.byName[context.name, default: 0] -= 1
        }
    }
}
