import Foundation
import Testing
import TinyTransport
import Warren
import WarrenConformance

/// The queue contract, as every Warren broker must keep it, on a broker built outside Warren.
@Suite("Conformance: a broker in its own package")
struct TinyTransportTests {
    @Test(.timeLimit(.minutes(1)), arguments: ConformanceSuite.cases)
    func conformance(_ testCase: ConformanceCase) async throws {
        try await testCase.run { context in TinyBroker(configuration: context.configuration) }
    }

    /// Every message is settled once its job leaves the engine: acked, or dead-lettered.
    @Test(.timeLimit(.minutes(1)))
    func everyMessageIsSettledWhenItsJobEnds() async throws {
        struct Boom: Error {}
        let broker = TinyBroker(configuration: QueueConfiguration(retryPolicy: .immediate))
        var registry = HandlerRegistry()
        try registry.registerRaw("ok") { _, _ in Data() }
        try registry.registerRaw("fails") { _, _ in throw Boom() }
        let worker = WarrenWorker(broker: broker, registry: registry)
        let running = Task { await worker.runUntilCancelled() }
        let jobs = (0..<20).map { Job(id: JobID("ok\($0)"), name: "ok") } + [Job(id: "f", name: "fails", maxRetries: 2)]
        try await broker.enqueue(jobs)
        for job in jobs { _ = await broker.outcome(of: job.id) }
        running.cancel()
        await running.value
        #expect(broker.log.ackedCount == 20 && broker.log.deadLetters.map(\.id) == ["f"] && broker.log.unackedCount == 0)
        await #expect(throws: EnqueueRefusal.self) { try await TinyBroker().enqueue([Job(id: "a", name: "x"), Job(id: "a", name: "x")]) }
    }

    /// Stopping gives the jobs that have not started back to the wire, and only those.
    @Test(.timeLimit(.minutes(1)))
    func stoppingGivesUnstartedJobsBack() async throws {
        let broker = TinyBroker()
        try await broker.enqueue((0..<5).map { Job(id: JobID("j\($0)"), name: "x") })
        let running = try #require(await broker.tryNext(.any))
        await broker.stopTakingWork()
        #expect(Set(broker.log.returned.map(\.id)) == Set(["j0", "j1", "j2", "j3", "j4"]).subtracting([running.job.id]))
        await broker.settle(running, .completed(Data()))
        #expect(broker.log.ackedCount == 1 && broker.log.unackedCount == 0)
        await broker.close()
    }
}
