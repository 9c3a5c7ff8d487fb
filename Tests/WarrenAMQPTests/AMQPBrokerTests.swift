import Foundation
import Testing
import Warren
@testable import WarrenAMQP

@Suite("AMQP broker")
struct AMQPBrokerTests {
    func broker(_ queue: String, _ configure: (inout AMQPBroker.Configuration) -> Void = { _ in }) async throws -> AMQPBroker {
        try await TestBroker.broker(queue, configure)
    }

    @Test(.timeLimit(.minutes(4)))
    func runsTypedJobsEndToEnd() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await broker(name)
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
            try TestBroker.deleteQueues([name])
        }
    }

    /// A worker asks for jobs before the connection is up (as `warren serve` does): the new
    /// channel's setup starts the consumers, and the worker's own request must not start them a
    /// second time, which RabbitMQ answers by closing the connection (a reused consumer tag).
    @Test(.timeLimit(.minutes(4)))
    func consumingBeforeTheConnectionIsUpStartsTheConsumersOnce() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = AMQPBroker(AMQPBroker.Configuration(url: try TestBroker.url(), queue: name, prefetch: 10))
            #expect(!broker.isReady, "the connection is still being made")
            #expect(await broker.tryNext(.any) == nil)
            try await broker.waitUntilReady(timeout: .seconds(20))
            var registry = HandlerRegistry()
            try registry.registerRaw("echo") { payload, _ in payload }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2))
            let runner = Task { await pool.run() }
            let queue = JobQueue(broker: broker)
            for n in 0..<20 {
                let handle = try await queue.submit(Job(name: "echo", payload: Data("\(n)".utf8)))
                #expect(try await handle.result() == Data("\(n)".utf8))
            }
            #expect(broker.reconnects == 0, "the connection was made once and kept")
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
        }
    }
}
