import Foundation
import Logging
import MetricsTestKit
import ServiceLifecycle
import Testing
import Warren
import WarrenConformance
import WarrenTestSupport

/// The library's metrics, through swift-metrics into a test backend: the names, dimensions and
/// values `/metrics` has always shown.
@Suite("job metrics")
struct JobMetricsTests {
    struct Boom: Error {}

    @Test(.timeLimit(.minutes(1)))
    func aWorkerEmitsOutcomesRetriesDeadLettersInFlightAndDurations() async throws {
        let backend = TestMetrics()
        let broker = InMemoryBroker(configuration: QueueConfiguration(retryPolicy: .immediate))
        var registry = HandlerRegistry()
        try registry.registerRaw("ok") { _, _ in Data() }
        try registry.registerRaw("fails") { _, _ in throw Boom() }
        let metrics = JobMetrics(queue: "q", handlerNames: Set(registry.names), factory: backend)
        let worker = WarrenWorker(broker: broker, pool: WorkerPool(broker: broker, registry: registry), metrics: metrics)
        let running = Task { await worker.runUntilCancelled() }
        try await broker.enqueue((0..<3).map { Job(id: JobID("ok\($0)"), name: "ok") } + [
            Job(id: "f", name: "fails", maxRetries: 1), Job(id: "u", name: "unknown.name", priority: .high),
        ])
        for id: JobID in ["ok0", "ok1", "ok2", "f", "u"] { _ = await broker.outcome(of: id) }
        running.cancel()
        await running.value

        func jobs(_ name: String, _ outcome: String, _ priority: String = "normal") -> Int64 {
            backend.counterTotal(
                label: "warren_jobs_total", dimensions: [("queue", "q"), ("priority", priority), ("name", name), ("outcome", outcome)])
        }
        #expect(jobs("ok", "completed") == 3)
        #expect(jobs("fails", "failed") == 2 && jobs("fails", "dead_lettered") == 1)
        #expect(jobs("other", "dead_lettered", "high") == 1, "a name no handler has is counted as other")
        #expect(backend.counterTotal(label: "warren_retries_total", dimensions: [("queue", "q"), ("name", "fails")]) == 1)
        #expect(backend.counterTotal(label: "warren_dead_letters_total", dimensions: [("queue", "q"), ("reason", "retries_exhausted")]) == 1)
        #expect(backend.counterTotal(label: "warren_dead_letters_total", dimensions: [("queue", "q"), ("reason", "unknown_job_name")]) == 1)
        let inFlight = try backend.expectMeter("warren_jobs_in_flight", [("queue", "q")])
        #expect(inFlight.lastValue == 0 && (inFlight.values.max() ?? 0) >= 1)
        let durations = try backend.expectTimer("warren_job_duration_seconds", [("queue", "q"), ("name", "ok")])
        #expect(durations.values.count == 3 && durations.values.allSatisfy { $0 >= 0 })
    }

    /// `record` answers how long the attempt an event ends ran (the service logs it), nil when it
    /// ends none it saw start.
    @Test func recordTellsTheAttemptsDuration() {
        let metrics = JobMetrics(queue: "q", handlerNames: ["x"], factory: TestMetrics())
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        func event(_ kind: JobEvent.Kind, at seconds: Double) -> JobEvent {
            JobEvent(kind, id: "a", name: "x", priority: .normal, at: start.addingTimeInterval(seconds))
        }
        #expect(metrics.record(event(.started(attempt: 1), at: 0)) == nil)
        #expect(metrics.record(event(.completed, at: 2.5)) == 2.5)
        #expect(metrics.record(event(.completed, at: 3)) == nil, "no attempt of it runs any more")
    }

    /// In a `ServiceGroup`, a graceful shutdown drains the worker and `run()` returns.
    @Test(.timeLimit(.minutes(1)))
    func aServiceGroupsGracefulShutdownDrainsTheWorker() async throws {
        let broker = InMemoryBroker()
        let started = Latch(1), release = Latch(1)
        var registry = HandlerRegistry()
        try registry.registerRaw("long") { _, _ in
            started.countDown()
            await release.wait()
            return Data("done".utf8)
        }
        let worker = WarrenWorker(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 1))
        let group = ServiceGroup(configuration: .init(services: [worker], logger: Logger(label: "test")))
        let running = Task { try await group.run() }
        try await broker.enqueue([Job(id: "long", name: "long"), Job(id: "waiting", name: "long", priority: .low)])
        await started.wait()
        await group.triggerGracefulShutdown()
        try await waitUntil("the pool to stop taking jobs") { worker.pool.isShuttingDown }
        release.countDown()
        try await running.value
        #expect(await broker.snapshot("long")?.status == .completed, "the running job finished")
        let waiting = await broker.snapshot("waiting")
        #expect(waiting?.status == .queued, "no job started after the shutdown began: \(String(describing: waiting))")
    }
}
