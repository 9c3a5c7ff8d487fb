import Testing
import Warren
import WarrenAMQP
import WarrenConformance

/// The conformance suite over RabbitMQ: on the main test node (RabbitMQ 4) with classic and with
/// quorum queues, and on the legacy node (Debian's RabbitMQ 3.10) with classic queues.
@Suite("Conformance: RabbitMQ broker")
struct AMQPConformanceTests {
    @Test(.timeLimit(.minutes(4)), arguments: ConformanceSuite.cases)
    func conformance(_ testCase: ConformanceCase) async throws {
        try await run(testCase, url: try TestBroker.url(), type: .classic)
    }

    @Test(.timeLimit(.minutes(4)), arguments: ConformanceSuite.cases)
    func conformanceOnQuorumQueues(_ testCase: ConformanceCase) async throws {
        try await run(testCase, url: try TestBroker.url(), type: .quorum)
    }

    @Test(.timeLimit(.minutes(4)), arguments: ConformanceSuite.cases)
    func conformanceOnTheLegacyBroker(_ testCase: ConformanceCase) async throws {
        try await run(testCase, url: try TestBroker.legacyURL(), type: .classic)
    }

    func run(_ testCase: ConformanceCase, url: AMQPURL, type: QueueType) async throws {
        let queues = Locked<[String]>([])
        try await usingBroker {
            // The case closes its broker, pass or fail; its queues go either way.
            var failure: (any Error)?
            do {
                // The delay cascade rounds delays up to whole seconds (docs/wire-format.md).
                try await testCase.run(delayResolution: .seconds(1)) { context in
                    queues.withLock { $0.append(context.queueName) }
                    let broker = AMQPBroker(AMQPBroker.Configuration(
                        url: url, queue: context.queueName, queueType: type, prefetch: 50, retryPolicy: context.configuration.retryPolicy,
                        defaultMaxRetries: 0,
                        maxQueueLength: context.configuration.capacity < QueueConfiguration().capacity ? context.configuration.capacity : nil))
                    try await broker.waitUntilReady()
                    return broker
                }
            } catch {
                failure = error
            }
            try TestBroker.deleteQueues(queues.withLock { $0 }, at: url)
            if let failure { throw failure }
        }
    }
}
