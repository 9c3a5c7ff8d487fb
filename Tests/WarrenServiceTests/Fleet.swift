import Foundation
import Testing
import Warren
@testable import WarrenAMQP
#if canImport(Glibc)
import Glibc
#endif

/// `warren serve` instances side by side on one queue, as teams run them. Their handler `work` is
/// an HTTP call to one fake service, which counts every run by job id and by instance (each
/// instance calls its own path, `/i<N>`).
final class Fleet: Sendable {
    let queue: String
    let queueType: QueueType
    let service: FakeService
    private let processes = Locked<[Int: ChildProcess]>([:])
    private let extra: [String: String]

    /// `respond`, when given, answers the handlers' calls instead of the default (`{}` after `handlerDelay`).
    init(
        queue: String, queueType: QueueType, environment extra: [String: String] = [:], handlerDelay: Duration = .zero,
        respond: (@Sendable (FakeService.Call) async -> (Int, String))? = nil
    ) async throws {
        self.queue = queue
        self.queueType = queueType
        self.extra = extra
        service = try await FakeService { call in
            if let respond { return await respond(call) }
            if handlerDelay > .zero { try? await Task.sleep(for: handlerDelay) }
            return (200, "{}")
        }
    }

    /// Starts instance `index` with the broker addresses `urls` (tried in order), and waits until
    /// its operations server listens.
    @discardableResult
    func launch(_ index: Int, urls: [String], prefetch: Int = 50) async throws -> ChildProcess {
        let dir = try makeTemporaryDirectory()
        try """
            handlers:
              work:
                http: { url: "\(service.url)/i\(index)" }
                timeout: 30s
            """.write(toFile: dir + "/handlers.yaml", atomically: false, encoding: .utf8)
        var environment = try TestEnvironment.serveEnvironment(
            queue: queue, handlersFile: dir + "/handlers.yaml", broker: urls.joined(separator: ","))
        environment["WARREN_QUEUE_TYPE"] = queueType.rawValue
        environment["WARREN_WORKER_CONCURRENCY"] = "8"
        environment["WARREN_WORKER_PREFETCH"] = "\(prefetch)"
        environment["WARREN_WORKER_SHUTDOWN_GRACE"] = "5s"
        environment.merge(extra) { $1 }
        let process = try ChildProcess(TestEnvironment.binary("warren"), ["serve"], environment: environment)
        processes.withLock { $0[index] = process }
        _ = try await operationsAddress(of: process)
        return process
    }

    func process(_ index: Int) -> ChildProcess? { processes.withLock { $0[index] } }

    /// SIGKILL: the instance dies holding its prefetched and running jobs.
    func kill(_ index: Int) async throws {
        guard let process = process(index) else { return }
        process.signal(SIGKILL)
        _ = try await process.exit(within: 10)
        // Gone: `stopAll` has nothing to wait for (a relaunch takes the index again).
        processes.withLock { $0[index] = nil }
    }

    /// SIGTERM, and waits for the drain.
    func stop(_ index: Int) async throws -> ProcessExit? {
        guard let process = process(index) else { return nil }
        process.signal(SIGTERM)
        return try await process.exit(within: 60)
    }

    func stopAll() async {
        for index in processes.withLock({ Array($0.keys) }) { _ = try? await stop(index) }
    }

    /// Runs per job id (a job that ran twice counts 2).
    var runs: [String: Int] {
        var runs: [String: Int] = [:]
        for call in service.received { runs[call.headers["x-warren-job-id"] ?? "", default: 0] += 1 }
        return runs
    }

    func runs(by index: Int) -> Int { service.received.filter { $0.path == "/i\(index)" }.count }

    /// Times instance `index` logged that it connected (and consumes).
    func connections(of index: Int) -> Int {
        process(index)?.lines.filter { $0.contains("\"connected to RabbitMQ; consuming\"") }.count ?? 0
    }

    /// Publishes `count` jobs named `work` through a producer of its own; returns their ids.
    func publish(_ count: Int, urls: [String]) async throws -> [String] {
        var configuration = AMQPBroker.Configuration(url: try AMQPURL(urls[0]), queue: queue, queueType: queueType)
        configuration.urls = try urls.map { try AMQPURL($0) }
        let producer = AMQPBroker(configuration)
        try await producer.waitUntilReady(timeout: .seconds(30))
        let jobs = (0..<count).map { n in
            Job(name: "work", payload: Data("{\"n\":\(n)}".utf8), priority: JobPriority.allCases[n % JobPriority.allCases.count])
        }
        for batch in stride(from: 0, to: jobs.count, by: 1_000) {
            try await producer.enqueue(Array(jobs[batch..<min(batch + 1_000, jobs.count)]))
        }
        await producer.close()
        return jobs.map(\.id.rawValue)
    }

    /// Messages left in the queue's five priority queues and its dead-letter queue.
    func leftInQueues(url: String) throws -> (ready: Int, dead: Int) {
        let raw = try RawConnection(url: try AMQPURL(url))
        defer { raw.close() }
        let topology = Topology(queue: queue, queueType: queueType)
        let ready = try JobPriority.allCases.reduce(0) { $0 + (try raw.declareQueue(topology.brokerQueue($1), passive: true)).messages }
        return (ready, try raw.declareQueue(topology.deadQueue, passive: true).messages)
    }

    /// Takes every message left in the five priority queues: their job ids.
    func takeLeftovers(url: String) throws -> [String] {
        let raw = try RawConnection(url: try AMQPURL(url))
        defer { raw.close() }
        let topology = Topology(queue: queue, queueType: queueType)
        var ids: [String] = []
        for priority in JobPriority.allCases {
            while let message = try raw.get(topology.brokerQueue(priority), autoAck: true) { ids.append(message.properties.messageID ?? "") }
        }
        return ids
    }

    func deleteQueues(url: String) {
        guard let raw = try? RawConnection(url: try AMQPURL(url)) else { return }
        defer { raw.close() }
        try? TestBrokerQueues.delete(queue, on: raw)
    }
}
