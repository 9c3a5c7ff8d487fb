import Foundation
import Testing
import WarrenConformance
@_spi(Transport) @testable import Warren

/// The core's counts checked after every step of seeded random operation sequences: enqueues
/// (batches, delays, deadlines already past, impossible capabilities, dependencies), filtered
/// dequeues, every kind of settlement, cancels, progress, timers and hand-backs.
///
/// `WARREN_INVARIANT_RUNS` runs more sequences (the suite runs a bounded number); a failure names
/// its seed and the last steps, and `WARREN_INVARIANT_SEED` replays one.
@Suite("Queue core invariants")
struct CoreInvariantTests {
    @Test func countsMatchTheJobsAfterEveryStep() async throws {
        let environment = ProcessInfo.processInfo.environment
        let seeds: [UInt64] = if let seed = environment["WARREN_INVARIANT_SEED"].flatMap(UInt64.init) {
            [seed]
        } else {
            Array(1...UInt64(environment["WARREN_INVARIANT_RUNS"].flatMap(Int.init).map { max(1, $0) } ?? 25))
        }
        for seed in seeds {
            var run = InvariantRun(seed: seed)
            try await run.go(steps: 800)
        }
    }

    /// The miscount that stalled the service: a job taken past its deadline was removed from the
    /// ready count twice, so consumers parked while a job was ready.
    @Test func aJobPastItsDeadlineLeavesTheReadyCountRight() throws {
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        var core = JobQueueCore(random: SplitMix64(seed: 1))
        try core.enqueue(Job(id: "late", name: "x", deadline: t0.addingTimeInterval(1)), now: t0)
        #expect(core.dequeue(now: t0.addingTimeInterval(2)) == nil)
        #expect(core.readyCount == 0)
        try core.enqueue(Job(id: "next", name: "x"), now: t0.addingTimeInterval(3))
        #expect(core.readyCount == 1)
        #expect(core.dequeue(now: t0.addingTimeInterval(3))?.id == "next")
        #expect(core.readyCount == 0)

        try core.enqueue(Job(id: "gpu", name: "x", requiredCapabilities: ["gpu"]), now: t0.addingTimeInterval(4))
        let cpuOnly = DeliveryFilter(rooms: [.init()], servable: [["cpu"]])
        #expect(core.dequeue(cpuOnly, now: t0.addingTimeInterval(4)) == nil)
        #expect(core.readyCount == 0)
        #expect(core.snapshot("gpu")?.status == .deadLettered)
    }
}

private struct InvariantRun {
    let seed: UInt64
    var random: SplitMix64
    var core: JobQueueCore
    var now = Date(timeIntervalSince1970: 1_800_000_000)
    var ids: [JobID] = []
    var running: [(id: JobID, attempt: Int)] = []
    var counter = 0
    var log: [String] = []

    init(seed: UInt64) {
        self.seed = seed
        random = SplitMix64(seed: seed)
        let retries: RetryScheduling = seed % 3 == 0 ? .handOff : .local
        let policy = RetryPolicy(baseDelay: .milliseconds(20), multiplier: 2, maxDelay: .milliseconds(200), jitter: 0.5)
        core = JobQueueCore(
            configuration: QueueConfiguration(capacity: 300, finishedWindow: 50, retryPolicy: policy, retries: retries),
            random: SplitMix64(seed: seed &* 31))
        core.recordsDepartures = true
        core.recordsEvents = seed % 2 == 0
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &random) }
    mutating func chance(_ percent: Int) -> Bool { int(1...100) <= percent }

    /// Yields now and then: a test that keeps one of the cooperative pool's threads (two on this
    /// machine) busy for seconds makes every timer of the tests running beside it late.
    mutating func go(steps: Int) async throws {
        for step in 0..<steps {
            if step % 50 == 0 { await Task.yield() }
            let roll = int(1...100)
            switch roll {
            case 1...30: enqueue()
            case 31...55: dequeue(checked: false)
            case 56...62: dequeue(checked: true)
            case 63...80: settle()
            case 81...86: cancel()
            case 87...88: progress()
            case 89...99: advance()
            default: withdraw()
            }
            // The alarm fires every due timer as time moves; the checks see the queue as it is then.
            core.advance(now: now)
            _ = core.takeDepartures()
            _ = core.takeEvents()
            try check(step: step)
        }
    }

    func fail(_ what: String, step: Int) -> some Error {
        InvariantViolation(text: "seed \(seed), step \(step): \(what)\nlast steps:\n" + log.suffix(15).joined(separator: "\n"))
    }

    mutating func note(_ text: String) {
        log.append(text)
        if log.count > 64 { log.removeFirst(32) }
    }

    mutating func makeJob() -> Job {
        counter += 1
        let id = JobID("j\(counter)")
        let priority = JobPriority.allCases[int(0...4)]
        var deadline: Date?
        if chance(15) { deadline = now.addingTimeInterval(Double(int(-50...200)) / 1_000) }
        var notBefore: Date?
        if chance(15) { notBefore = now.addingTimeInterval(Double(int(1...150)) / 1_000) }
        var capabilities: Set<String> = []
        if chance(10) { capabilities = ["gpu"] }
        if chance(5) { capabilities = ["impossible"] }
        var dependencies: [JobID] = []
        if chance(20), !ids.isEmpty { dependencies = [ids[int(0...ids.count - 1)]] }
        return Job(
            id: id, name: chance(50) ? "a" : "b", priority: priority, createdAt: now, notBefore: notBefore, deadline: deadline,
            maxRetries: int(0...2), dependencies: dependencies, requiredCapabilities: capabilities)
    }

    mutating func enqueue() {
        if chance(20) {
            var batch = [makeJob(), makeJob()]
            if chance(50) { batch[1].dependencies = [batch[0].id] }
            do {
                try core.enqueue(batch, now: now)
                ids += batch.map(\.id)
                note("enqueue batch \(batch.map(\.id.rawValue))")
            } catch { note("batch refused: \(error)") }
        } else {
            let job = makeJob()
            do {
                try core.enqueue(job, now: now)
                ids.append(job.id)
                note("enqueue \(job.id) \(job.priority) deadline \(job.deadline.map { $0.timeIntervalSince(now) } ?? .nan)")
            } catch { note("refused \(job.id): \(error)") }
        }
    }

    mutating func filter() -> DeliveryFilter {
        switch int(1...5) {
        case 1: .any
        case 2: .criticalOnly
        case 3: DeliveryFilter(rooms: [.init(lowest: .normal, capabilities: [])], servable: [[], ["gpu"]])
        case 4: DeliveryFilter(rooms: [.init(capabilities: ["gpu"]), .init(lowest: .critical, capabilities: [])], servable: [["gpu"]])
        default: DeliveryFilter(rooms: [])
        }
    }

    /// `checked`: a dequeue for any job, which must return one exactly when the ready count says so.
    mutating func dequeue(checked: Bool) {
        let filter = checked ? .any : filter()
        let readyBefore = core.readyCount
        let job = core.dequeue(filter, now: now)
        if let job {
            running.append((job.id, job.attempt))
            // Strict priority: nothing of a higher priority that this filter admits was left ready.
            for id in ids {
                guard let other = core.snapshot(id), other.status == .queued, other.priority < job.priority,
                      (other.deadline ?? .distantFuture) > now,
                      filter.admits(priority: other.priority, requiring: other.requiredCapabilities) else { continue }
                log.append("!! \(job.id) (\(job.priority)) taken while \(other.id) (\(other.priority)) was ready and admitted")
                mismatch = true
            }
        }
        note("dequeue\(checked ? " any" : "") ready \(readyBefore) → \(job.map(\.id.rawValue) ?? "nil")")
        if checked, (job != nil) != (readyBefore > 0) {
            log.append("!! dequeue(any) gave \(job.map(\.id.rawValue) ?? "nil") with readyCount \(readyBefore)")
            mismatch = true
        }
    }
    var mismatch = false

    mutating func settle() {
        guard !running.isEmpty else { return }
        let (id, attempt) = running.remove(at: int(0...running.count - 1))
        let outcome: AttemptOutcome = switch int(1...7) {
        case 1, 2: .completed(Data("{}".utf8))
        case 3: .failed("boom")
        case 4: .timedOut
        case 5: .cancelled
        case 6: .interrupted
        default: .rejected(.rejected("no"))
        }
        if chance(10) { now = now.addingTimeInterval(Double(int(0...30)) / 1_000) }
        let settled = core.settle(id, attempt: attempt, outcome, now: now)
        note("settle \(id)#\(attempt) \(outcome) → \(settled)")
    }

    mutating func cancel() {
        guard !ids.isEmpty else { return }
        let id = ids[int(0...ids.count - 1)]
        let result = core.cancel(id, now: now)
        note("cancel \(id) → \(result)")
    }

    mutating func progress() {
        guard let (id, _) = running.first else { return }
        core.progress(id, Double(int(0...100)), now: now)
    }

    mutating func advance() {
        now = now.addingTimeInterval(Double(int(1...120)) / 1_000)
        note("advance to +\(Int(now.timeIntervalSince1970 * 1_000) % 100_000) ms")
    }

    mutating func withdraw() {
        let withdrawn = core.withdrawUnstarted()
        note("withdraw \(withdrawn.count)")
    }

    mutating func check(step: Int) throws {
        if mismatch { throw fail("a dequeue broke the ready count or the priority order (see !! above)", step: step) }
        var queued = [Int](repeating: 0, count: JobPriority.allCases.count)
        var inFlight = 0
        var takeable = 0
        // Finished and withdrawn jobs never count again: only unfinished ones are looked at next time.
        var unfinished: [JobID] = []
        for id in ids {
            guard let job = core.snapshot(id), !job.status.isTerminal else { continue }
            unfinished.append(id)
            if job.status == .queued {
                queued[job.priority.rawValue] += 1
                if (job.deadline ?? .distantFuture) > now { takeable += 1 }
            }
            if job.status == .running { inFlight += 1 }
        }
        guard core.inFlight == inFlight else { throw fail("inFlight \(core.inFlight), running jobs \(inFlight)", step: step) }
        guard core.readyCount == queued.reduce(0, +) else {
            throw fail("readyCount \(core.readyCount), queued jobs \(queued.reduce(0, +))", step: step)
        }
        // Every due timer has fired: a queued job is one a dequeue for any job would take.
        guard takeable == core.readyCount else {
            throw fail("readyCount \(core.readyCount), takeable jobs \(takeable)", step: step)
        }
        ids = unfinished
        // The statistics (depth by priority) cost more to build: looked at now and then.
        guard step % 20 == 0 else { return }
        let statistics = core.statistics()
        for priority in JobPriority.allCases {
            let depth = statistics.depthByPriority[priority] ?? -1
            guard depth >= 0, depth == queued[priority.rawValue] else {
                throw fail("\(priority) depth \(depth), queued jobs \(queued[priority.rawValue])", step: step)
            }
        }
        guard statistics.inFlight == inFlight else { throw fail("statistics say \(statistics.inFlight) in flight, \(inFlight) running", step: step) }
        guard core.unfinishedCount >= 0 else { throw fail("unfinished count \(core.unfinishedCount)", step: step) }
    }
}

struct InvariantViolation: Error, CustomStringConvertible {
    let text: String
    var description: String { text }
}
