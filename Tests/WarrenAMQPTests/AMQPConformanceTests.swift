import Testing
import Warren
import WarrenAMQP
import WarrenConformance

@Suite("Conformance: RabbitMQ broker")
struct AMQPConformanceTests {
    @Test(.timeLimit(.minutes(3)), arguments: ConformanceSuite.cases)
    func conformance(_ testCase: ConformanceCase) async throws {
        let url = try TestBroker.url()
        let queues = Locked<[String]>([])
        try await usingBroker {
            // The case closes its broker, pass or fail; its queues go either way.
            var failure: (any Error)?
            do {
                try await testCase.run { context in
                    queues.withLock { $0.append(context.queueName) }
                    let broker = AMQPBroker(AMQPBroker.Configuration(
                        url: url, queue: context.queueName, prefetch: 50, retryPolicy: context.configuration.retryPolicy,
                        defaultMaxRetries: 0,
                        maxQueueLength: context.configuration.capacity < QueueConfiguration().capacity ? context.configuration.capacity : nil))
                    try await broker.waitUntilReady()
                    return broker
                }
            } catch {
                failure = error
            }
            try TestBroker.deleteQueues(queues.withLock { $0 })
            if let failure { throw failure }
        }
    }
}
