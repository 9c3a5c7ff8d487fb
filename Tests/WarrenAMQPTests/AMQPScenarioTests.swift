import Foundation
import Testing
import Warren
@testable import WarrenAMQP

/// The behaviours the AMQP issue asks for, against the real broker. Each is bounded in time.
@Suite("AMQP scenarios")
struct AMQPScenarioTests {
    struct Numbered: Codable, Sendable { var n: Int }
    static let good = JobKind<Numbered, Int>("scenario.good")

    func makeBroker(_ queue: String, heartbeat: Int? = nil, configure: (inout AMQPBroker.Configuration) -> Void = { _ in }) async throws -> AMQPBroker {
        try await TestBroker.broker(queue, heartbeat: heartbeat, configure)
    }

    @Test(.timeLimit(.minutes(4)))
    func badInputIsDeadLetteredWithAReasonAndGoodTrafficFlows() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let completed = Locked(Set<Int>())
            var registry = HandlerRegistry()
            try registry.register(Self.good) { input, _ in
                completed.withLock { _ = $0.insert(input.n) }
                return input.n
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 8))
            let runner = Task { await pool.run() }
            let producer = try TestBroker.publisher()
            let key = broker.topology.routingKey(.normal)
            func message(_ body: [UInt8], type: String? = Self.good.name, contentType: String? = "application/json", headers: [String: AMQPValue] = [:]) -> OutgoingMessage {
                OutgoingMessage(
                    exchange: Topology.exchange, routingKey: key,
                    properties: MessageProperties(contentType: contentType, headers: headers, messageID: UUID().uuidString, type: type),
                    body: body)
            }
            var bad: [(OutgoingMessage, String)] = []
            for _ in 0..<15 { bad.append((message(Array("not json {".utf8)), "malformed_message")) }
            for _ in 0..<13 { bad.append((message(Array(#"{"n":"seven"}"#.utf8)), "undecodable_payload")) }
            for _ in 0..<15 { bad.append((message(Array(#"{"n":1}"#.utf8), contentType: "text/plain"), "malformed_message")) }
            for _ in 0..<15 { bad.append((message(Array(#"{"n":1}"#.utf8), type: "scenario.nobody-handles-this"), "unknown_job_name")) }
            for _ in 0..<10 { bad.append((message(Array(#"{"n":1}"#.utf8), headers: [WireFormat.Header.priority: .string("urgent")]), "malformed_message")) }
            let absurd: [[String: AMQPValue]] = [
                [WireFormat.Header.attempt: .int(-5)], [WireFormat.Header.maxRetries: .string("lots")],
                [WireFormat.Header.timeout: .int(0)], [WireFormat.Header.deadline: .string("yesterday")],
                [WireFormat.Header.version: .int(99)], [WireFormat.Header.dependencies: .int(42)],
            ]
            for headers in absurd { for _ in 0..<5 { bad.append((message(Array(#"{"n":1}"#.utf8), headers: headers), "malformed_message")) } }
            // Over Warren's 8 MiB, under the 16 MiB RabbitMQ 4 accepts at most (3.x took 128 MiB).
            let huge = Array(repeating: UInt8(ascii: " "), count: 12 << 20)
            for _ in 0..<2 { bad.append((message(huge), "malformed_message")) }
            #expect(bad.count == 100)
            // Interleave: every fifth message is bad.
            var good = 0
            for (index, (message, _)) in bad.enumerated() {
                for _ in 0..<4 {
                    try await producer.publish(self.message(Numbered(n: good), key: key))
                    good += 1
                }
                try await producer.publish(message)
                if index == 50 { try await producer.publish(self.message(Numbered(n: good), key: key)); good += 1 }
            }
            let goodCount = good
            try await waitUntil("\(goodCount) good jobs", within: 60) { completed.withLock { $0.count } == goodCount }
            let dead = try await TestBroker.takeDeadLetters(broker.topology.queue, count: 100)
            #expect(dead.count == 100)
            let reasons = dead.compactMap { $0.properties.headers[WireFormat.Header.deadReason]?.stringValue }
            #expect(reasons.count == 100, "every dead letter says why")
            let expected = Dictionary(grouping: bad.map(\.1), by: { $0 }).mapValues(\.count)
            #expect(Dictionary(grouping: reasons, by: { $0 }).mapValues(\.count) == expected)
            #expect(dead.allSatisfy { $0.properties.headers[WireFormat.Header.deadError]?.stringValue?.isEmpty == false })
            #expect(dead.filter { $0.body.count == 12 << 20 }.count == 2, "oversized bodies are kept whole")
            #expect(broker.isReady, "the consumer never stopped")
            let last = try await JobQueue(broker: broker).submit(Self.good, Numbered(n: -1))
            #expect(try await last.result() == -1)
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
            await producer.close()
        }
    }

    func message(_ input: Numbered, key: String) -> OutgoingMessage {
        OutgoingMessage(
            exchange: Topology.exchange, routingKey: key,
            properties: MessageProperties(contentType: "application/json", messageID: UUID().uuidString, type: Self.good.name),
            body: Array(try! JSONEncoder().encode(input)))
    }

    @Test(.timeLimit(.minutes(4)))
    func aCriticalJobPublishedLastStartsBeforeAnyFurtherLowJob() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let gate = Latch(1)
            let started = Locked<[String]>([])
            var registry = HandlerRegistry()
            try registry.registerRaw("scenario.work") { payload, context in
                started.withLock { $0.append("\(context.priority)") }
                if context.priority != .critical { await gate.wait() }
                return payload
            }
            let queue = JobQueue(broker: broker)
            for start in stride(from: 0, to: 2_000, by: 500) {
                try await queue.submit(batch: (start..<start + 500).map { _ in Job(name: "scenario.work", priority: .low) })
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2, reservedForCritical: 1))
            let runner = Task { await pool.run() }
            try await waitUntil("every ordinary slot busy") { pool.running == 2 }
            let critical = try await queue.submit(Job(name: "scenario.work", priority: .critical))
            _ = try await critical.result()
            #expect(started.withLock { $0 } == ["low", "low", "critical"], "the critical job started while low jobs held every slot")
            let stats = await broker.statistics()
            #expect(stats.depthByPriority[.low]! > 0, "low jobs were waiting, prefetched")
            gate.countDown()
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func delaysAndRetriesKeepTheirTimeAndExhaustedJobsAreDeadLettered() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name) { $0.retryPolicy = RetryPolicy(baseDelay: .seconds(1), multiplier: 2, jitter: 0) }
            let starts = Locked<[String: [Date]]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw("scenario.later") { payload, context in
                starts.withLock { $0[context.id.rawValue, default: []].append(Date()) }
                return payload
            }
            try registry.registerRaw("scenario.failing") { _, context in
                starts.withLock { $0[context.id.rawValue, default: []].append(Date()) }
                throw TimedOut(description: "gateway says no (attempt \(context.attempt))")
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            let queue = JobQueue(broker: broker)
            let published = Date()
            let later = try await queue.submit(Job(name: "scenario.later", notBefore: published.addingTimeInterval(3)))
            let failing = try await queue.submit(Job(name: "scenario.failing", maxRetries: 2))
            _ = try await later.result()
            let delayed = starts.withLock { $0[later.id.rawValue]![0] }.timeIntervalSince(published)
            #expect(delayed >= 3 && delayed <= 4.5, "the delayed job started after \(delayed) s")
            do {
                _ = try await failing.result()
                Issue.record("the failing job succeeded")
            } catch {
                guard case let .deadLettered(_, reason, errors)? = error as? JobFailure else { Issue.record("\(error)"); return }
                #expect(reason.code == "retries_exhausted")
                #expect(errors.map(\.attempt) == [1, 2, 3])
            }
            let attempts = starts.withLock { $0[failing.id.rawValue]! }
            #expect(attempts.count == 3)
            if attempts.count == 3 {
                let gaps = zip(attempts.dropFirst(), attempts).map { $0.timeIntervalSince($1) }
                #expect(gaps[0] >= 1 && gaps[0] < 2.6, "first backoff \(gaps[0]) s (1 s)")
                #expect(gaps[1] >= 2 && gaps[1] < 3.6, "second backoff \(gaps[1]) s (2 s)")
            }
            let dead = try await TestBroker.takeDeadLetters(broker.topology.queue, count: 1)
            let headers = dead.first?.properties.headers ?? [:]
            #expect(headers[WireFormat.Header.deadReason]?.stringValue == "retries_exhausted")
            #expect(headers[WireFormat.Header.deadAttempts]?.intValue == 3)
            #expect(headers[WireFormat.Header.deadError]?.stringValue?.contains("gateway says no (attempt 3)") == true)
            #expect(headers["x-death"] == nil, "the broker's death headers are stripped")
            #expect(dead.first?.properties.messageID == failing.id.rawValue)
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aFortySecondHandlerKeepsItsConnectionWithTenSecondHeartbeats() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name, heartbeat: 10)
            let changes = Locked<[AMQPConnection.Status]>([])
            let updates = broker.connectionUpdates
            let watcher = Task { for await status in updates { changes.withLock { $0.append(status) } } }
            var registry = HandlerRegistry()
            try registry.registerRaw("scenario.long") { payload, _ in
                // The point of the test: a handler busy for 40 s, four heartbeat intervals.
                try await Task.sleep(for: .seconds(40))
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 1))
            let runner = Task { await pool.run() }
            let handle = try await JobQueue(broker: broker).submit(Job(name: "scenario.long"))
            _ = try await handle.result()
            let lost = changes.withLock { $0 }.filter { if case .disconnected = $0 { true } else { false } }
            #expect(lost.isEmpty, "the connection dropped: \(lost)")
            let queue = broker.topology.brokerQueue(.normal)
            try await waitUntil("the ack to land") {
                let counts = try? await broker.perform { session throws(AMQPError) in try session.raw.declareQueue(queue, passive: true) }
                return counts?.messages == 0
            }
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
            watcher.cancel()
        }
    }
}
