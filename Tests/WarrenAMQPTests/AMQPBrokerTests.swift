import Foundation
import Testing
import Warren
@testable import WarrenAMQP

@Suite("AMQP broker")
struct AMQPBrokerTests {
    func broker(_ queue: String, _ configure: (inout AMQPBroker.Configuration) -> Void = { _ in }) async throws -> AMQPBroker {
        var configuration = AMQPBroker.Configuration(url: try TestBroker.url(), queue: queue, prefetch: 50)
        configure(&configuration)
        let broker = AMQPBroker(configuration)
        try await broker.waitUntilReady(timeout: .seconds(20))
        return broker
    }

    @Test(.timeLimit(.minutes(3)))
    func runsTypedJobsEndToEnd() async throws {
        try await usingBroker {
            let broker = try await broker(TestBroker.unique())
            struct Add: Codable, Sendable { var a: Int; var b: Int }
            let add = JobKind<Add, Int>("math.add")
            var registry = HandlerRegistry()
            try registry.register(add) { input, _ in input.a + input.b }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            let queue = JobQueue(broker: broker)
            var handles: [JobHandle<Int>] = []
            for index in 0..<50 { handles.append(try await queue.submit(add, Add(a: index, b: 1))) }
            for (index, handle) in handles.enumerated() { #expect(try await handle.result() == index + 1) }
            pool.shutdown()
            await runner.value
            await broker.close()
        }
    }
}
