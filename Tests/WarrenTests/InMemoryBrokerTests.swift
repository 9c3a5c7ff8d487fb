import Foundation
import Testing
import WarrenConformance
@_spi(Transport) @testable import Warren

@Suite("In-memory broker and worker pool")
struct InMemoryBrokerTests {
    /// Waits (yielding, bounded) until `condition` holds.
    func eventually(_ what: String, within seconds: Double = 5, _ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while await !condition() {
            if ContinuousClock.now > deadline { Issue.record("timed out waiting for \(what)"); return }
            await Task.yield()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func delayedJobsShareOneTimerAndWakeExactlyOnTime() async throws {
        let clock = ManualClock()
        let broker = InMemoryBroker(clock: clock)
        let t0 = clock.now()
        let jobs = (1...100).map { Job(id: JobID("d\($0)"), name: "x", notBefore: t0.addingTimeInterval(Double($0))) }
        try await broker.enqueue(jobs)
        // One heap, one sleeping timer for all hundred delayed jobs: no polling loop.
        try await eventually("the alarm to sleep") { clock.sleeperCount == 1 }
        #expect(await broker.tryNext(.any) == nil)
        let waiting = Task { await broker.next(.any) }
        clock.advance(by: .seconds(1))
        let first = await waiting.value
        #expect(first?.job.id == "d1")
        #expect(await broker.tryNext(.any) == nil, "d2 is not due yet")
        try await eventually("the alarm to re-arm") { clock.sleeperCount == 1 }
        clock.advance(by: .milliseconds(1_999))
        let due = await broker.next(.any)
        #expect(due?.job.id == "d2")
        #expect(await broker.tryNext(.any) == nil, "d3 is due at 3 s, the clock is at 2.999 s")
        await broker.close()
    }

    @Test(.timeLimit(.minutes(1)))
    func retryBackoffFollowsTheInjectedClock() async throws {
        let clock = ManualClock()
        let policy = RetryPolicy(baseDelay: .seconds(60), jitter: 0)
        let broker = InMemoryBroker(configuration: QueueConfiguration(retryPolicy: policy), clock: clock)
        try await broker.enqueue([Job(id: "r", name: "x", maxRetries: 1)])
        let first = try #require(await broker.tryNext(.any))
        await broker.settle(first, .failed("nope"))
        #expect(await broker.snapshot("r")?.status == .retrying)
        try await eventually("the alarm to sleep") { clock.sleeperCount == 1 }
        clock.advance(by: .seconds(59))
        #expect(await broker.tryNext(.any) == nil)
        clock.advance(by: .seconds(1))
        try await eventually("the retry to be ready") { await broker.snapshot("r")?.status == .queued }
        #expect(await broker.tryNext(.any)?.job.attempt == 2)
        await broker.close()
    }

    @Test(.timeLimit(.minutes(1)))
    func closingReleasesWaitingConsumersAndRefusesJobs() async throws {
        let broker = InMemoryBroker()
        let waiting = Task { await broker.next(.any) }
        try await eventually("the consumer to park") { broker.waitingConsumers == 1 }
        await broker.close()
        #expect(await waiting.value == nil)
        await #expect(throws: EnqueueRefusal.closed) { try await broker.enqueue([Job(name: "x")]) }
    }

    @Test(.timeLimit(.minutes(1)))
    func aCancelledWaitReturnsNothingAndLosesNoJob() async throws {
        let broker = InMemoryBroker()
        let waiting = Task { await broker.next(.any) }
        try await eventually("the consumer to park") { broker.waitingConsumers == 1 }
        waiting.cancel()
        try await eventually("the consumer to leave") { broker.waitingConsumers == 0 }
        #expect(await waiting.value == nil)
        try await broker.enqueue([Job(id: "kept", name: "x")])
        #expect(await broker.tryNext(.any)?.job.id == "kept")
        await broker.close()
    }

    @Test(.timeLimit(.minutes(1)))
    func shutdownWaitsForRunningJobsWithinGrace() async throws {
        let broker = InMemoryBroker()
        var registry = HandlerRegistry()
        try registry.registerRaw("slow") { payload, _ in
            try await Task.sleep(for: .milliseconds(300))
            return payload
        }
        let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2, shutdownGrace: .seconds(10)))
        let runner = Task { await pool.run() }
        try await broker.enqueue([Job(id: "a", name: "slow"), Job(id: "b", name: "slow"), Job(id: "c", name: "slow")])
        try await eventually("two jobs to run") { pool.running == 2 }
        pool.shutdown()
        await runner.value
        #expect(await broker.snapshot("a")?.status == .completed)
        #expect(await broker.snapshot("b")?.status == .completed)
        #expect(await broker.snapshot("c")?.status == .queued, "no new job starts after shutdown")
        await broker.close()
    }

    @Test(.timeLimit(.minutes(1)))
    func pastTheGracePeriodRunningJobsAreStoppedAndRetried() async throws {
        let broker = InMemoryBroker(configuration: QueueConfiguration(retryPolicy: .immediate))
        var registry = HandlerRegistry()
        try registry.registerRaw("stuck") { payload, _ in
            try await Task.sleep(for: .seconds(60))
            return payload
        }
        let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 1, shutdownGrace: .milliseconds(100)))
        let runner = Task { await pool.run() }
        try await broker.enqueue([Job(id: "s", name: "stuck", maxRetries: 1)])
        try await eventually("the job to run") { pool.running == 1 }
        pool.shutdown()
        await runner.value
        let job = try #require(await broker.snapshot("s"))
        #expect(job.status == .queued && job.attempt == 1, "queued again, the interrupted attempt not counted: \(job.status) \(job.attempt)")
        #expect(job.errors.isEmpty, "an interruption is not the job's error")
        await broker.close()
    }

    @Test(.timeLimit(.minutes(1)))
    func handleReportsUnknownJobsAndUndecodableResults() async throws {
        let broker = InMemoryBroker()
        let queue = JobQueue(broker: broker)
        var registry = HandlerRegistry()
        let kind = JobKind<Nothing, Int>("numbers")
        try registry.registerRaw(kind.name) { _, _ in Data(#""not a number""#.utf8) }
        #expect(throws: RegistrationError.duplicate("numbers")) { try registry.register(kind) { _, _ in 1 } }
        let pool = WorkerPool(broker: broker, registry: registry)
        let runner = Task { await pool.run() }
        let handle = try await queue.submit(kind, Nothing())
        await #expect(throws: JobFailure.self) { try await handle.result() }
        do { _ = try await handle.result() } catch {
            guard case .undecodableResult = error else { Issue.record("expected undecodableResult, got \(error)"); return }
        }
        let missing = JobHandle<Data>(id: "never-submitted", broker: broker, decode: { $0 })
        await #expect(throws: JobFailure.unknownJob("never-submitted")) { try await missing.result() }
        pool.shutdown()
        await runner.value
        await broker.close()
    }
}
