import Foundation
import Testing
import Warren
import WarrenAMQP
import WarrenConformance

/// The seeded random workload of `Soak` over RabbitMQ (delays and retries through the delay
/// cascade, dead letters through `warren.dead`), with its invariants checked while it runs.
/// `WARREN_SOAK_SECONDS` and `WARREN_SOAK_SEED` as for the in-memory soak.
@Suite("Soak: RabbitMQ broker")
struct AMQPSoakTests {
    @Test(.timeLimit(.minutes(6)))
    func randomWorkloadKeepsEveryInvariant() async throws {
        let settings = Soak.Settings.fromEnvironment(defaultSeed: UInt64.random(in: 1...1_000_000))
        let url = try TestBroker.url()
        let queue = TestBroker.unique()
        try await usingBroker {
            let broker = AMQPBroker(AMQPBroker.Configuration(
                url: url, queue: queue, prefetch: 50, retryPolicy: Soak.retryPolicy, defaultMaxRetries: 0))
            try await broker.waitUntilReady()
            var failure: (any Error)?
            do {
                let report = try await Soak(settings).run(Soak.Subject(broker: broker) { id in
                    broker.received(id)?.status == .queued
                })
                print("soak (RabbitMQ, seed \(settings.seed)): \(report)")
            } catch {
                failure = error
            }
            try TestBroker.deleteQueues([queue])
            if let failure { throw failure }
        }
    }
}
