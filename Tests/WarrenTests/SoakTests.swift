import Foundation
import Testing
import Warren
import WarrenConformance

/// The seeded random workload of `Soak` on the in-memory broker, with its invariants checked
/// while it runs. `WARREN_SOAK_SECONDS` (default 60) sets how long jobs keep coming and
/// `WARREN_SOAK_SEED` replays a seed (a failure prints it).
@Suite("Soak: in-memory broker")
struct InMemorySoakTests {
    @Test(.timeLimit(.minutes(5)))
    func randomWorkloadKeepsEveryInvariant() async throws {
        let settings = Soak.Settings.fromEnvironment(defaultSeed: UInt64.random(in: 1...1_000_000))
        let broker = InMemoryBroker(configuration: QueueConfiguration(retryPolicy: Soak.retryPolicy))
        let report = try await Soak(settings).run(Soak.Subject(broker: broker) { id in
            await broker.snapshot(id)?.status == .queued
        })
        print("soak (in-memory, seed \(settings.seed)): \(report)")
    }
}
