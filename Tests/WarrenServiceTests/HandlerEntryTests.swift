import Foundation
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenService
#if canImport(Glibc)
import Glibc
#endif

/// Issue 12: a handlers-file entry's `retries`, `backoff` and `capabilities` as `warren serve`
/// applies them on the test broker.
@Suite("handlers-file entries")
struct HandlerEntryTests {
    func handlers(_ url: String) -> String {
        """
        handlers:
          entry.flaky:
            http: { url: "\(url)/flaky" }
            retries: 2
            backoff: { base: 3s, max: 3s, jitter: 0 }
          entry.gpu:
            http: { url: "\(url)/gpu" }
            capabilities: [gpu]
        """
    }

    /// The worker's own defaults (no retries, a 1 s backoff) differ from the entry's, so each
    /// check fails if the entry is ignored.
    func serve(_ queue: String, _ url: String, capabilities: String? = nil) async throws -> (ChildProcess, [String: String]) {
        let dir = try makeTemporaryDirectory()
        try handlers(url).write(toFile: dir + "/handlers.yaml", atomically: false, encoding: .utf8)
        var environment = try TestEnvironment.serveEnvironment(queue: queue, handlersFile: dir + "/handlers.yaml")
        environment["WARREN_RETRY_MAX_RETRIES"] = "0"
        environment["WARREN_RETRY_BASE_DELAY"] = "1s"
        environment["WARREN_RETRY_MAX_DELAY"] = "1s"
        environment["WARREN_WORKER_CAPABILITIES"] = capabilities
        let warren = try ChildProcess(TestEnvironment.binary("warren"), ["serve"], environment: environment)
        let address = try await operationsAddress(of: warren)
        // Ready: its queues are declared (submit declares nothing).
        try await waitUntil("the worker to be ready", within: 30) { await get(address + "/readyz")?.0 == 200 }
        return (warren, environment)
    }

    func submit(_ name: String, _ environment: [String: String]) async throws -> String {
        let child = try ChildProcess(TestEnvironment.binary("warren"), ["submit", name, "--payload", "{}"], environment: environment)
        let exit = try await child.exit(within: 60)
        #expect(exit == .exited(0), "\(child.output)")
        return child.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test(.timeLimit(.minutes(4)))
    func retriesBackoffAndCapabilitiesFromTheHandlersFile() async throws {
        try await usingBroker { try await run() }
    }

    func run() async throws {
        let calls = Locked<[(path: String, id: String, at: Date)]>([])
        let service = try await FakeService { call in
            calls.withLock { $0.append((call.path, call.headers["x-warren-job-id"] ?? "", Date())) }
            return call.path == "/flaky" ? (500, #"{"error":"down"}"#) : (200, "{}")
        }
        let queue = TestEnvironment.unique()
        let tools = AMQPTools(url: try AMQPURL(try TestEnvironment.amqpURL), queue: queue)
        let (plain, environment) = try await serve(queue, service.url)

        // retries: 2 → three attempts; backoff 3 s (no jitter) between them.
        let flaky = try await submit("entry.flaky", environment)
        // capabilities: [gpu] on a worker that offers none → no_capable_worker, never called.
        let needsGPU = try await submit("entry.gpu", environment)
        try await waitUntil("two dead letters", within: 60) { ((try? await tools.deadLetters())?.count ?? 0) == 2 }
        let dead = try await tools.deadLetters()
        let flakyDead = try #require(dead.first { $0.id == flaky })
        #expect(flakyDead.reason == "retries_exhausted" && flakyDead.attempts == 3, "\(flakyDead)")
        let gpuDead = try #require(dead.first { $0.id == needsGPU })
        #expect(gpuDead.reason == "no_capable_worker" && gpuDead.attempts == 0, "\(gpuDead)")
        let flakyCalls = calls.withLock { $0 }.filter { $0.id == flaky }.map(\.at)
        #expect(flakyCalls.count == 3)
        for (earlier, later) in zip(flakyCalls, flakyCalls.dropFirst()) {
            let gap = later.timeIntervalSince(earlier)
            #expect(gap >= 2.9, "attempts \(gap) s apart; the entry's backoff is 3 s")
        }
        #expect(!calls.withLock { $0 }.contains { $0.path == "/gpu" })
        plain.signal(SIGTERM)
        #expect(try await plain.exit(within: 30) == .exited(0))

        // A worker that offers gpu runs such a job.
        let (capable, capableEnvironment) = try await serve(queue, service.url, capabilities: "gpu")
        let runs = try await submit("entry.gpu", capableEnvironment)
        try await waitUntil("the gpu job to run", within: 30) { service.completed.contains(runs) }
        #expect(((try? await tools.deadLetters())?.count ?? 0) == 2, "no new dead letter")
        capable.signal(SIGTERM)
        #expect(try await capable.exit(within: 30) == .exited(0))
        let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { raw.close() }
        try TestBrokerQueues.delete(queue, on: raw)
    }
}
