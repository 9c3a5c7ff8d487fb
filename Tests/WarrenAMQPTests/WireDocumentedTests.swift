import Foundation
import Testing
import Warren
@testable import WarrenAMQP

/// Issue 12: what docs/wire-format.md promises a producer in another language, against the real
/// broker: dedup by `message_id`, the bare routing key, and where the job name comes from.
@Suite("wire format as documented")
struct WireDocumentedTests {
    func makeBroker(_ queue: String) async throws -> AMQPBroker { try await TestBroker.broker(queue, prefetch: 20) }

    func message(
        _ queue: String, id: String, type: String?, headers: [String: AMQPValue] = [:], routingKey: String? = nil, body: String = "{}"
    ) -> OutgoingMessage {
        OutgoingMessage(
            exchange: Topology.exchange, routingKey: routingKey ?? Topology(queue: queue).routingKey(.normal),
            properties: MessageProperties(contentType: "application/json", headers: headers, deliveryMode: 2, messageID: id, type: type),
            body: Array(body.utf8), mandatory: true)
    }

    /// Two publishes with one `message_id`, as two producers (or one retrying) would send them:
    /// the job runs once, whether the copy comes while the first runs or just after it finished.
    @Test(.timeLimit(.minutes(4)))
    func aDuplicateMessageIDRunsOnce() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let runs = Locked<[String: Int]>([:])
            let hold = Latch(1)
            var registry = HandlerRegistry()
            try registry.registerRaw("wire.once") { payload, context in
                runs.withLock { $0[context.id.rawValue, default: 0] += 1 }
                if context.id.rawValue.hasPrefix("held-") { await hold.wait() }
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            defer { hold.countDown() }
            let first = try TestBroker.publisher(), second = try TestBroker.publisher()
            let held = "held-\(UUID().uuidString)"
            try await first.publish(message(name, id: held, type: "wire.once"))
            try await waitUntil("the first copy to run", within: 20) { runs.withLock { $0[held] } == 1 }
            try await second.publish(message(name, id: held, type: "wire.once"))
            // The queue delivers in order: once a job published after the copy has run, the copy
            // has arrived.
            let marker = "marker-\(UUID().uuidString)"
            try await second.publish(message(name, id: marker, type: "wire.once"))
            try await waitUntil("the marker to run", within: 20) { runs.withLock { $0[marker] } == 1 }
            #expect(runs.withLock { $0[held] } == 1, "the copy ran while the first was held")
            hold.countDown()
            #expect(await broker.outcome(of: JobID(held)) == .completed(Data("{}".utf8)))

            try await second.publish(message(name, id: held, type: "wire.once"))
            let after = "marker-\(UUID().uuidString)"
            try await first.publish(message(name, id: after, type: "wire.once"))
            try await waitUntil("the second marker to run", within: 20) { runs.withLock { $0[after] } == 1 }
            #expect(runs.withLock { $0[held] } == 1, "the copy ran after the first finished")
            try await waitUntil("nothing left in the queue", within: 20) {
                guard let raw = try? RawConnection(url: try TestBroker.url()) else { return false }
                defer { raw.close() }
                return (try? raw.declareQueue(Topology(queue: name).brokerQueue(.normal), passive: true))?.messages == 0
            }
            pool.shutdown()
            await runner.value
            await broker.close()
            await first.close()
            await second.close()
            try TestBroker.deleteQueues([name])
        }
    }

    /// The bare key `<queue>` is normal priority; the name is `type`, else `x-warren-job`, else
    /// the queue's name.
    @Test(.timeLimit(.minutes(4)))
    func theBareKeyIsNormalAndTheJobNameFallsBack() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let ran = Locked<[String: (name: String, priority: JobPriority)]>([:])
            var registry = HandlerRegistry()
            for handler in ["wire.typed", "wire.header", name] {
                try registry.registerRaw(handler) { payload, context in
                    ran.withLock { $0[context.id.rawValue] = (context.name, context.priority) }
                    return payload
                }
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            let producer = try TestBroker.publisher()
            let header: [String: AMQPValue] = [WireFormat.Header.job: .string("wire.header")]
            let cases: [(id: String, message: OutgoingMessage, name: String)] = [
                ("bare", message(name, id: "bare-\(UUID())", type: "wire.typed", routingKey: name), "wire.typed"),
                ("type", message(name, id: "type-\(UUID())", type: "wire.typed", headers: header), "wire.typed"),
                ("header", message(name, id: "header-\(UUID())", type: nil, headers: header), "wire.header"),
                ("queue", message(name, id: "queue-\(UUID())", type: nil), name),
            ]
            for (_, message, _) in cases { try await producer.publish(message) }
            try await waitUntil("all four jobs ran", within: 20) { ran.withLock { $0.count } == cases.count }
            for (label, message, expected) in cases {
                let run = ran.withLock { $0[message.properties.messageID ?? ""] }
                #expect(run?.name == expected, "\(label): ran as \(String(describing: run))")
                #expect(run?.priority == .normal, "\(label): priority \(String(describing: run))")
            }
            pool.shutdown()
            await runner.value
            await broker.close()
            await producer.close()
            try TestBroker.deleteQueues([name])
        }
    }
}
