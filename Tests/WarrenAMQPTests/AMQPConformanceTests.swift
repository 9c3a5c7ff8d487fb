import Testing
import Warren
import WarrenAMQP
import WarrenConformance

@Suite("Conformance: RabbitMQ broker")
struct AMQPConformanceTests {
    @Test(.timeLimit(.minutes(3)), arguments: ConformanceSuite.cases)
    func conformance(_ testCase: ConformanceCase) async throws {
        let url = try TestBroker.url()
        try await usingBroker {
        try await testCase.run { context in
            let broker = AMQPBroker(AMQPBroker.Configuration(
                url: url, queue: context.queueName, prefetch: 50, retryPolicy: context.configuration.retryPolicy,
                defaultMaxRetries: 0,
                maxQueueLength: context.configuration.capacity < QueueConfiguration().capacity ? context.configuration.capacity : nil))
            try await broker.waitUntilReady()
            return broker
        }
        }
    }
}
