import Foundation
import Testing
import Warren
@testable import WarrenAMQP

/// RabbitMQ as teams run it, on the test run's main node (RabbitMQ 4): quorum queues, graceful
/// restarts, consumers the broker cancels.
@Suite("Quorum queues and broker-cancelled consumers")
struct QuorumTests {
    func broker(_ queue: String, type: QueueType = .quorum, _ configure: (inout AMQPBroker.Configuration) -> Void = { _ in })
        async throws -> AMQPBroker
    {
        try await TestBroker.broker(queue, queueType: type, configure)
    }

    /// A queue deleted under a consumer: RabbitMQ cancels the consumer (it says so only to clients
    /// that announce `consumer_cancel_notify` at login). The broker is not consuming meanwhile,
    /// and consumes again once the queue is back, on the same channel: the running job keeps
    /// its delivery and settles once.
    @Test(.timeLimit(.minutes(4)))
    func aConsumerTheBrokerCancelsIsStartedAgainWhenItsQueueIsBack() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await broker(name, type: .classic)
            let release = Locked(false), ran = Locked<[String]>([])
            var registry = HandlerRegistry()
            try registry.registerRaw("work") { payload, _ in
                ran.withLock { $0.append(String(decoding: payload, as: UTF8.self)) }
                try await waitUntil("the test to let the first job end", within: 60) { release.withLock { $0 } }
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2))
            let runner = Task { await pool.run() }
            let queue = JobQueue(broker: broker)
            let first = try await queue.submit(Job(name: "work", payload: Data("1".utf8), priority: .high))
            try await waitUntil("the first job to start") { ran.withLock { $0.count } == 1 && broker.isConsuming }

            // Delete the normal queue under its consumer.
            let topology = Topology(queue: name)
            let admin = try RawConnection(url: try TestBroker.url())
            defer { admin.close() }
            try admin.deleteQueue(topology.brokerQueue(.normal))
            try await waitUntil("the broker to cancel the consumer") { !broker.isConsuming }
            #expect(broker.unconsumedQueues == [topology.brokerQueue(.normal)])
            #expect(broker.isReady, "the connection and its channel live on")

            // Back: declared again as the worker declares it, with a job waiting in it.
            try admin.declareQueue(topology.brokerQueue(.normal), arguments: topology.priorityQueueArguments)
            try admin.bindQueue(topology.brokerQueue(.normal), exchange: Topology.exchange, routingKey: topology.routingKey(.normal))
            let second = try await queue.submit(Job(name: "work", payload: Data("2".utf8)))
            try await waitUntil("the consumer to start again", within: 5) { broker.isConsuming }
            try await waitUntil("the waiting job to run", within: 10) { ran.withLock { $0.count } == 2 }
            release.withLock { $0 = true }
            #expect(try await first.result() == Data("1".utf8))
            #expect(try await second.result() == Data("2".utf8))
            #expect(broker.reconnects == 0, "no reconnection: the running job kept its delivery")
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
        }
    }

    /// 50 jobs wait in quorum queues; a worker with one slot is stopped gracefully 25 times while
    /// it runs them. Every stop hands back what it prefetched. RabbitMQ before 4.3 counts every
    /// return toward the delivery limit (20 by default in 4.0), and a message past it was dropped:
    /// 32 to 38 of the 50 jobs vanished this way. Now every job is done or still queued, and none
    /// is dead-lettered: a graceful stop is not a failed delivery.
    @Test(.timeLimit(.minutes(4)))
    func gracefulRestartsLoseNoJobAndWearNoDeliveryCount() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let producer = try await broker(name) { $0.deliveryLimit = 5 }
            let queue = JobQueue(broker: producer)
            let ids = (0..<50).map { _ in JobID.random() }
            for id in ids { _ = try await queue.submit(Job(id: id, name: "slow", payload: Data("{}".utf8))) }
            let done = Locked<[JobID: Int]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw("slow") { payload, context in
                try await Task.sleep(for: .milliseconds(40))
                done.withLock { $0[context.id, default: 0] += 1 }
                return payload
            }
            for _ in 0..<25 {
                let worker = try await broker(name) { $0.deliveryLimit = 5 }
                let pool = WorkerPool(broker: worker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 1))
                let runner = Task { await worker.run(pool) }
                let before = done.withLock { $0.count }
                // Nothing left to run (every job done, or, before the fix, dead-lettered) ends the restarts.
                let ranOne = (try? await waitUntil("the worker to run a job", within: 10) { done.withLock { $0.count } > before }) != nil
                runner.cancel()
                await runner.value
                if !ranOne { break }
            }
            let completed = done.withLock { Set($0.keys) }
            let admin = try RawConnection(url: try TestBroker.url())
            defer { admin.close() }
            let topology = Topology(queue: name, queueType: .quorum)
            // Handed-back copies are confirmed before their originals are acked: all are counted here.
            let queued = try JobPriority.allCases.reduce(0) { sum, priority in
                sum + (try admin.declareQueue(topology.brokerQueue(priority), passive: true)).messages
            }
            let dead = (try admin.declareQueue(topology.deadQueue, passive: true)).messages
            #expect(completed.isSubset(of: Set(ids)))
            #expect(queued + completed.count == ids.count, "done \(completed.count), queued \(queued), dead \(dead)")
            #expect(dead == 0, "a graceful stop is not a failed delivery")
            await producer.close()
            try TestBroker.deleteQueues([name])
        }
    }
}
