import Foundation
import Testing
import WarrenConformance
@_spi(Transport) @testable import Warren

/// The queue contract on the bare state machine, with time moved by hand.
@Suite("Queue core")
struct JobQueueCoreTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func core(_ configuration: QueueConfiguration = QueueConfiguration(), seed: UInt64 = 7) -> JobQueueCore {
        JobQueueCore(configuration: configuration, random: SplitMix64(seed: seed))
    }

    @Test func statusMachineAllowsOnlyItsTransitions() {
        let legal: Set<String> = [
            "pending>queued", "pending>cancelled", "pending>dead_lettered",
            "queued>running", "queued>cancelled", "queued>dead_lettered",
            "running>completed", "running>failed", "running>timed_out", "running>cancelled", "running>dead_lettered",
            "running>retrying",  // interrupted by a shutdown: the same attempt again
            "failed>retrying", "failed>dead_lettered", "timed_out>retrying", "timed_out>dead_lettered",
            "retrying>queued", "retrying>cancelled", "retrying>dead_lettered",
        ]
        for from in JobStatus.allCases {
            for to in JobStatus.allCases {
                #expect(from.canMove(to: to) == legal.contains("\(from)>\(to)"), "\(from) → \(to)")
            }
        }
        for terminal in JobStatus.allCases where terminal.isTerminal {
            #expect(JobStatus.allCases.allSatisfy { !terminal.canMove(to: $0) })
        }
    }

    @Test func illegalTransitionThrows() {
        var job = Job(name: "x")
        #expect(throws: IllegalTransition(job: job.id, from: .pending, to: .completed)) { try job.transition(to: .completed) }
        #expect(job.status == .pending)
        #expect(throws: Never.self) { try job.transition(to: .queued) }
        #expect(job.status == .queued)
    }

    @Test func retryBackoffIsExponentialWithSeededJitter() {
        let policy = RetryPolicy(baseDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(10), jitter: 0.5)
        var random = SplitMix64(seed: 1)
        let delays = (1...6).map { policy.delay(afterAttempt: $0, using: &random).timeInterval }
        let nominal = [1.0, 2, 4, 8, 10, 10]
        for (delay, nominal) in zip(delays, nominal) {
            #expect(delay >= nominal * 0.5 && delay <= min(nominal * 1.5, 10), "\(delay) around \(nominal)")
        }
        var again = SplitMix64(seed: 1)
        #expect((1...6).map { policy.delay(afterAttempt: $0, using: &again).timeInterval } == delays, "same seed, same delays")
        var noJitter = SplitMix64(seed: 1)
        let exact = RetryPolicy(baseDelay: .milliseconds(100), multiplier: 3, maxDelay: .seconds(1), jitter: 0)
        let exactDelays = (1...4).map { exact.delay(afterAttempt: $0, using: &noJitter).timeInterval }
        for (delay, expected) in zip(exactDelays, [0.1, 0.3, 0.9, 1.0]) { #expect(abs(delay - expected) < 1e-9) }
    }

    @Test func retriesWaitOutTheirBackoffThenDeadLetter() throws {
        let policy = RetryPolicy(baseDelay: .seconds(10), multiplier: 2, maxDelay: .seconds(100), jitter: 0)
        var queue = core(QueueConfiguration(retryPolicy: policy))
        let job = Job(id: "r", name: "x", maxRetries: 2)
        try queue.enqueue(job, now: t0)
        #expect(queue.dequeue(now: t0)?.attempt == 1)
        queue.settle("r", .failed("e1"), now: t0)
        #expect(queue.snapshot("r")?.status == .retrying)
        #expect(queue.nextTimer == t0.addingTimeInterval(10))
        queue.advance(now: t0.addingTimeInterval(9.999))
        #expect(queue.dequeue(now: t0.addingTimeInterval(9.999)) == nil, "not before its backoff")
        queue.advance(now: t0.addingTimeInterval(10))
        let dequeued = queue.dequeue(now: t0.addingTimeInterval(10))
        let second = try #require(dequeued)
        #expect(second.attempt == 2)
        queue.settle("r", .timedOut, now: t0.addingTimeInterval(11))
        #expect(queue.nextTimer == t0.addingTimeInterval(31), "second backoff is 20 s")
        queue.advance(now: t0.addingTimeInterval(31))
        #expect(queue.dequeue(now: t0.addingTimeInterval(31))?.attempt == 3)
        queue.settle("r", .failed("e3"), now: t0.addingTimeInterval(32))
        let final = try #require(queue.snapshot("r"))
        #expect(final.status == .deadLettered)
        #expect(final.deadLetterReason == .retriesExhausted(attempts: 3, lastError: "e3"))
        #expect(final.errors.count == 3)
        #expect(final.errors.first?.message == "e1" && final.errors.last?.message == "e3")
        #expect(final.errors[1].message.hasPrefix("timed out"))
        #expect(final.errors.map(\.timedOut) == [false, true, false])
        #expect(queue.statistics().retried == 2)
    }

    @Test func handOffModeGivesRetriesAndEndingsToTheTransport() throws {
        var queue = core(QueueConfiguration(retryPolicy: RetryPolicy(baseDelay: .seconds(5), jitter: 0), retries: .handOff))
        queue.recordsDepartures = true
        var job = Job(id: "h", name: "x", maxRetries: 1)
        job.deadline = t0.addingTimeInterval(3_600)
        try queue.enqueue(job, now: t0)
        _ = queue.dequeue(now: t0)
        queue.settle("h", .failed("first"), now: t0)
        let departures = queue.takeDepartures()
        guard case let .retry(next)? = departures.first, departures.count == 1 else { Issue.record("\(departures)"); return }
        #expect(next.attempt == 2 && next.notBefore == t0.addingTimeInterval(5) && next.errors.map(\.message) == ["first"])
        #expect(queue.nextTimer == t0.addingTimeInterval(3_600), "the deadline timer is stale now")
        queue.advance(now: t0.addingTimeInterval(3_600))
        #expect(queue.snapshot("h")?.status == .retrying, "a handed-off job is not dead-lettered here")
        #expect(queue.unfinishedCount == 0 && queue.inFlight == 0)
        #expect(throws: EnqueueRefusal.duplicate("h")) { try queue.enqueue(Job(id: "h", name: "x", attempt: 1), now: t0) }
        var back = next
        back.notBefore = nil
        try queue.enqueue(back, now: t0.addingTimeInterval(5))
        #expect(queue.dequeue(now: t0.addingTimeInterval(5))?.attempt == 2)
        queue.settle("h", .failed("second"), now: t0.addingTimeInterval(6))
        guard case let .deadLettered(dead)? = queue.takeDepartures().first else { Issue.record("no dead letter"); return }
        #expect(dead.errors.map(\.message) == ["first", "second"])
        #expect(dead.deadLetterReason == .retriesExhausted(attempts: 2, lastError: "second"))
    }

    @Test func deadlineDeadLettersAQueuedJobWithoutRunningIt() throws {
        var queue = core()
        var job = Job(id: "d", name: "x")
        job.deadline = t0.addingTimeInterval(5)
        try queue.enqueue(job, now: t0)
        queue.recordsEvents = true
        queue.advance(now: t0.addingTimeInterval(5))
        #expect(queue.snapshot("d")?.status == .deadLettered)
        #expect(queue.snapshot("d")?.deadLetterReason == .deadline(t0.addingTimeInterval(5)))
        #expect(queue.dequeue(now: t0.addingTimeInterval(6)) == nil)
        #expect(queue.takeEvents().map(\.label) == ["dead_lettered"])
        #expect(queue.statistics().depth == 0, "depth does not count the expired job")
    }

    @Test func delayedJobsBecomeReadyAtTheirTimeInOrder() throws {
        var queue = core()
        for (id, seconds) in [("c", 30.0), ("a", 10), ("b", 20)] {
            try queue.enqueue(Job(id: JobID(id), name: "x", notBefore: t0.addingTimeInterval(seconds)), now: t0)
        }
        #expect(queue.dequeue(now: t0) == nil)
        #expect(queue.advance(now: t0.addingTimeInterval(15)) == t0.addingTimeInterval(20))
        #expect(queue.dequeue(now: t0.addingTimeInterval(15))?.id == "a")
        #expect(queue.dequeue(now: t0.addingTimeInterval(15)) == nil)
        queue.advance(now: t0.addingTimeInterval(40))
        #expect(queue.dequeue(now: t0.addingTimeInterval(40))?.id == "b")
        #expect(queue.dequeue(now: t0.addingTimeInterval(40))?.id == "c")
        #expect(queue.nextTimer == nil)
    }

    @Test func finishedJobsAreRememberedWithinTheWindowOnly() throws {
        var queue = core(QueueConfiguration(finishedWindow: 2, dedupWindow: 4))
        for id in ["1", "2", "3", "4", "5"] {
            try queue.enqueue(Job(id: JobID(id), name: "x"), now: t0)
            _ = queue.dequeue(now: t0)
            queue.settle(JobID(id), id == "3" ? .rejected(.rejected("no")) : .completed(Data(id.utf8)), now: t0)
        }
        // Whole jobs (status, results) for the last two; ids and how they ended for the last four.
        #expect(queue.outcome("3") == nil, "left the whole-job window")
        #expect(queue.outcome("5") == .completed(Data("5".utf8)))
        #expect(throws: EnqueueRefusal.duplicate("2")) { try queue.enqueue(Job(id: "2", name: "x"), now: t0) }
        #expect(throws: Never.self) { try queue.enqueue(Job(id: "1", name: "x"), now: t0) }
        // Dependencies on ids past the whole-job window still know how they ended.
        try queue.enqueue(Job(id: "after-2", name: "x", dependencies: ["2"]), now: t0)
        #expect(queue.snapshot("after-2")?.status == .queued)
        try queue.enqueue(Job(id: "after-3", name: "x", dependencies: ["3"]), now: t0)
        #expect(queue.snapshot("after-3")?.deadLetterReason == .dependencyFailed("3", status: .deadLettered))
        #expect(throws: EnqueueRefusal.unknownDependency(job: "after-gone", dependency: "gone")) {
            try queue.enqueue(Job(id: "after-gone", name: "x", dependencies: ["gone"]), now: t0)
        }
    }

    /// A transport's retry comes back as a new record: the jobs waiting for the job move with it,
    /// even when the handed-off record has left the finished window meanwhile. (Over RabbitMQ a
    /// dependent of a job that failed once waited forever.)
    @Test(arguments: [1, 100])
    func dependentsFollowARetryHandedToTheTransport(finishedWindow: Int) throws {
        var queue = core(QueueConfiguration(finishedWindow: finishedWindow, retries: .handOff))
        queue.recordsDepartures = true
        try queue.enqueue(Job(id: "parent", name: "x", maxRetries: 1), now: t0)
        try queue.enqueue(Job(id: "child", name: "x", dependencies: ["parent"]), now: t0)
        _ = queue.dequeue(now: t0)
        queue.settle("parent", .failed("once"), now: t0)
        guard case let .retry(next)? = queue.takeDepartures().first else { Issue.record("no retry departure"); return }
        for index in 0..<3 {
            try queue.enqueue(Job(id: JobID("other\(index)"), name: "x"), now: t0)
            let other = queue.dequeue(now: t0)
            #expect(other?.id == JobID("other\(index)"))
            queue.settle(JobID("other\(index)"), .completed(Data()), now: t0)
        }
        // Back after its backoff (the transport delays it until `notBefore`).
        let later = t0.addingTimeInterval(3_600)
        try queue.enqueue(next, now: later)
        #expect(queue.dequeue(now: later)?.id == "parent")
        queue.settle("parent", .completed(Data()), now: later)
        #expect(queue.snapshot("child")?.status == .queued)
        #expect(queue.dequeue(now: later)?.id == "child")
    }

    /// The retry ran on another instance (a job-state store says how it ended): what waits for it
    /// here goes on when it completed, and is dead-lettered naming it when it did not.
    @Test(arguments: [JobStatus.completed, .deadLettered, .cancelled])
    func dependentsFollowARetryThatEndedElsewhere(ending: JobStatus) throws {
        var queue = core(QueueConfiguration(retries: .handOff))
        queue.recordsDepartures = true
        try queue.enqueue(Job(id: "parent", name: "x", maxRetries: 1), now: t0)
        try queue.enqueue(Job(id: "child", name: "x", dependencies: ["parent"]), now: t0)
        _ = queue.dequeue(now: t0)
        queue.settle("parent", .failed("once"), now: t0)
        _ = queue.takeDepartures()
        #expect(queue.awaitedElsewhere == ["parent"])
        // Said twice (pub/sub, then a recheck): the second changes nothing.
        queue.endedElsewhere("parent", ending, now: t0)
        queue.endedElsewhere("parent", ending, now: t0)
        #expect(queue.awaitedElsewhere.isEmpty)
        if ending == .completed {
            #expect(queue.dequeue(now: t0)?.id == "child")
        } else {
            #expect(queue.snapshot("child")?.status == .deadLettered)
            #expect(queue.snapshot("child")?.deadLetterReason == .dependencyFailed("parent", status: ending))
            #expect(queue.takeDepartures().count == 1, "the child's dead letter departs, once")
        }
        // A job held here, or one that ended here, is not changed by word from elsewhere.
        try queue.enqueue(Job(id: "here", name: "x"), now: t0)
        queue.endedElsewhere("here", .completed, now: t0)
        #expect(queue.snapshot("here")?.status == .queued)
    }

    @Test func recentIDsForgetTheOldestAndSurviveARemoveAndInsert() {
        var ids = RecentIDs(capacity: 3)
        for id in ["a", "b", "c"] { ids.insert(JobID(id), value: 1) }
        #expect(ids.contains("a") && ids.count == 3)
        ids.insert("d", value: 2)
        #expect(!ids.contains("a") && ids.value("d") == 2 && ids.count == 3)
        let removed = ids.remove("b")
        #expect(removed && !ids.contains("b"))
        ids.insert("b", value: 3)
        // "b" now has two places in the ring: the older one leaving must not forget it.
        ids.insert("e")
        #expect(ids.value("b") == 3)
        ids.insert("f")
        ids.insert("g")
        #expect(!ids.contains("b") && ids.contains("g"))
        #expect(RecentIDs(capacity: 0).contains("x") == false)
    }

    /// Seeded random inserts, removes and lookups against the plain rule: an id is remembered while
    /// it was not removed since its last insert that took a place, and that place is among the
    /// newest `capacity`.
    @Test(arguments: [(1, 3), (7, 5), (64, 40), (500, 2_000), (3_000, 2_500)])
    func recentIDsFollowTheirRuleUnderARandomWorkload(capacity: Int, universe: Int) {
        var random = SplitMix64(seed: UInt64(capacity * 31 + universe))
        var ids = RecentIDs(capacity: capacity)
        var places: [JobID] = []
        var present: [JobID: UInt8] = [:]
        func remembered(_ id: JobID) -> Bool { present[id] != nil && places.suffix(capacity).contains(id) }
        for step in 0..<20_000 {
            let id = JobID("id-\(Int.random(in: 0..<universe, using: &random))")
            switch Int.random(in: 0..<10, using: &random) {
            case 0..<6:
                let value = UInt8.random(in: 0...5, using: &random)
                if !remembered(id) { places.append(id) }
                present[id] = value
                ids.insert(id, value: value)
            case 6..<8:
                let expected = remembered(id)
                if expected { present[id] = nil }
                #expect(ids.remove(id) == expected, "step \(step)")
            default:
                #expect(ids.value(id) == (remembered(id) ? present[id] : nil), "step \(step): \(id)")
            }
            if places.count > 4 * capacity { places.removeFirst(places.count - capacity) }
        }
        let expectedCount = Set(places.suffix(capacity)).count { present[$0] != nil }
        #expect(ids.count == expectedCount)
    }

    @Test func staleDeadlineTimersAreCompacted() throws {
        var queue = core(QueueConfiguration(capacity: 10, finishedWindow: 0))
        for index in 0..<5_000 {
            let id = JobID("j\(index)")
            try queue.enqueue(Job(id: id, name: "x", deadline: t0.addingTimeInterval(3_600)), now: t0)
            _ = queue.dequeue(now: t0)
            queue.settle(id, .completed(Data()), now: t0)
        }
        #expect(queue.statistics().completed == 5_000)
        // Every one of the 5,000 deadline timers is stale: compaction keeps the heap from holding
        // them all (it runs once more than 1,024 are stale and they are over half the heap).
        #expect(queue.timerCount <= 1_025, "\(queue.timerCount) timers held for 0 unfinished jobs")
        #expect(queue.nextTimer != nil)
        queue.advance(now: t0.addingTimeInterval(3_601))
        #expect(queue.nextTimer == nil)
    }

    @Test(arguments: [
        (Job(id: "e", name: ""), "empty job name"),
        (Job(id: "r", name: "x", maxRetries: -1), "maxRetries"),
        (Job(id: "t", name: "x", timeout: .zero), "timeout"),
        (Job(id: "a", name: "x", attempt: 0), "attempt"),
    ])
    func invalidJobsAreRefused(job: Job, mentions: String) {
        var queue = core()
        #expect {
            try queue.enqueue(job, now: t0)
        } throws: { error in
            guard case let .invalid(_, why) = error as? EnqueueRefusal else { return false }
            return why.contains(mentions)
        }
    }

    @Test func selfDependencyIsACycle() {
        var queue = core()
        #expect(throws: EnqueueRefusal.dependencyCycle(["s", "s"])) {
            try queue.enqueue(Job(id: "s", name: "x", dependencies: ["s"]), now: t0)
        }
    }

    @Test func statisticsCountStatusesDepthAndDurations() throws {
        var queue = core()
        try queue.enqueue([Job(id: "1", name: "x", priority: .high), Job(id: "2", name: "x", priority: .low), Job(id: "3", name: "x", priority: .low)], now: t0)
        _ = queue.dequeue(now: t0.addingTimeInterval(1))
        queue.settle("1", .completed(Data()), now: t0.addingTimeInterval(3))
        _ = queue.dequeue(now: t0.addingTimeInterval(3))
        let stats = queue.statistics()
        #expect(stats.byStatus[.completed] == 1 && stats.byStatus[.running] == 1 && stats.byStatus[.queued] == 1)
        #expect(stats.depthByPriority[.low] == 1 && stats.depth == 1)
        #expect(stats.inFlight == 1)
        #expect(abs(stats.runDuration.p50 - 2) < 0.01)
        #expect(abs(stats.waitDuration.max - 3) < 0.01)
    }
}
