import Foundation
import Testing
import Warren
import WarrenAMQP
import WarrenConformance
@testable import WarrenRedis
import WarrenTestSupport

/// The conformance suite over RabbitMQ (classic and quorum queues) with the job-state store on:
/// every arriving job is claimed, every ending recorded before its ack, cancels go through the
/// store. The queue contract must hold exactly as without it.
@Suite("Conformance: RabbitMQ broker with the job-state store")
struct StoreConformanceTests {
    @Test(.timeLimit(.minutes(5)), arguments: ConformanceSuite.cases)
    func conformance(_ testCase: ConformanceCase) async throws {
        try await run(testCase, type: .classic)
    }

    @Test(.timeLimit(.minutes(5)), arguments: ConformanceSuite.cases)
    func conformanceOnQuorumQueues(_ testCase: ConformanceCase) async throws {
        try await run(testCase, type: .quorum)
    }

    func run(_ testCase: ConformanceCase, type: QueueType) async throws {
        let url = try SharedStateTests.amqpURL()
        let queues = Locked<[String]>([])
        try await ServerAccess.redis.using {
            try await usingBroker {
                var failure: (any Error)?
                do {
                    try await testCase.run(delayResolution: .seconds(1)) { context in
                        queues.withLock { $0.append(context.queueName) }
                        let client = try await TestRedis.client("conformance")
                        var configuration = AMQPBroker.Configuration(
                            url: url, queue: context.queueName, queueType: type, prefetch: 50, retryPolicy: context.configuration.retryPolicy,
                            defaultMaxRetries: 0,
                            maxQueueLength: context.configuration.capacity < QueueConfiguration().capacity ? context.configuration.capacity : nil)
                        configuration.stateStore = RedisJobStore(client: client, configuration: .init(queue: context.queueName, instance: "conformance"))
                        let broker = AMQPBroker(configuration)
                        try await broker.waitUntilReady()
                        return broker
                    }
                } catch {
                    failure = error
                }
                for queue in queues.withLock({ $0 }) { try? SharedStateTests.deleteQueues(queue) }
                if let failure { throw failure }
            }
        }
    }
}
