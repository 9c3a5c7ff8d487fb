import Foundation
import Testing
import Warren
import WarrenConformance
@testable import WarrenAMQP

/// Issue 12 against the real broker: messages that used to crash the worker, what dead letters
/// and replies say, and `x-warren-delay`.
@Suite("wire robustness")
struct WireRobustnessTests {
    func makeBroker(_ queue: String) async throws -> AMQPBroker {
        try await TestBroker.broker(queue, prefetch: 20) { $0.retryPolicy = RetryPolicy(baseDelay: .seconds(1), multiplier: 1, jitter: 0) }
    }

    func raw(
        _ queue: String, type: String, headers: [String: AMQPValue] = [:], timestamp: Date? = nil, contentType: String = "application/json",
        replyTo: String? = nil, correlationID: String? = nil, body: String = #"{"n":1}"#
    ) -> OutgoingMessage {
        OutgoingMessage(
            exchange: Topology.exchange, routingKey: Topology(queue: queue).routingKey(.normal),
            properties: MessageProperties(
                contentType: contentType, headers: headers, deliveryMode: 2, correlationID: correlationID, replyTo: replyTo,
                messageID: UUID().uuidString, timestamp: timestamp, type: type),
            body: Array(body.utf8), mandatory: true)
    }

    /// A job whose dependency never reaches this worker is held (its message unacked) for
    /// `dependencyWait`, then dead-lettered saying which dependency it waited for; a job whose
    /// dependency does arrive runs.
    @Test(.timeLimit(.minutes(4)))
    func heldJobsAreGivenUpWhenTheirDependencyNeverArrives() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await TestBroker.broker(name) { $0.dependencyWait = .milliseconds(600) }
            let ran = Locked<[String]>([])
            var registry = HandlerRegistry()
            try registry.registerRaw("wire.ok") { _, context in
                ran.withLock { $0.append(context.id.rawValue) }
                return Data()
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2))
            let runner = Task { await pool.run() }
            let producer = try TestBroker.publisher()
            func message(_ id: String, dependingOn dependency: String?) -> OutgoingMessage {
                var message = raw(name, type: "wire.ok", headers: dependency.map { [WireFormat.Header.dependencies: .string($0)] } ?? [:])
                message.properties.messageID = id
                return message
            }
            for (id, dependency) in [("first", "never-1"), ("second", "never-2"), ("child", "parent"), ("parent", nil)] {
                try await producer.publish(message(id, dependingOn: dependency))
            }
            let dead = try await TestBroker.takeDeadLetters(name, count: 2)
            let reasons = Dictionary(uniqueKeysWithValues: dead.map { ($0.properties.messageID ?? "", $0.properties.headers[WireFormat.Header.deadError]?.text ?? "") })
            #expect(reasons["first"]?.contains("its dependency never-1 did not arrive at this worker within 0.6 seconds") == true, "\(reasons)")
            #expect(reasons["second"]?.contains("its dependency never-2 did not arrive at this worker") == true, "\(reasons)")
            try await waitUntil("the child to run after its parent", within: 10) { ran.withLock { $0 }.contains("child") }
            #expect(ran.withLock { $0 } == ["parent", "child"])
            pool.shutdown()
            await runner.value
            await broker.close()
            await producer.close()
            try TestBroker.deleteQueues([name])
        }
    }

    /// One timer serves every held job: each is given up at its own deadline, not before, and not
    /// all at once when the first runs out.
    @Test(.timeLimit(.minutes(1)))
    func eachHeldJobIsGivenUpAtItsOwnDeadline() async throws {
        let clock = ManualClock()
        let expired = Locked<[String]>([])
        let holds = DependencyHolds(clock: clock) { overdue in expired.withLock { $0 += overdue.map { $0.held.job.id.rawValue } } }
        let message = IncomingMessage(
            deliveryTag: 1, redelivered: false, exchange: "", routingKey: "", consumerTag: "", properties: MessageProperties(), body: [])
        holds.hold(Job(id: "a", name: "x"), message, cancelled: false, waitingFor: "p", atMost: .seconds(10))
        clock.advance(by: .seconds(4))
        holds.hold(Job(id: "b", name: "x"), message, cancelled: false, waitingFor: "q", atMost: .seconds(10))
        holds.hold(Job(id: "c", name: "x"), message, cancelled: false, waitingFor: "p", atMost: .seconds(10))
        clock.advance(by: .seconds(5))
        #expect(expired.withLock { $0 }.isEmpty)
        clock.advance(by: .seconds(1))
        try await waitUntil("a to be given up") { expired.withLock { $0 } == ["a"] }
        #expect(holds.release(waitingFor: "p").map(\.job.id) == ["c"], "c still waits for p")
        try await waitUntil("the timer to be armed for b") { clock.sleeperCount == 1 }
        clock.advance(by: .seconds(4))
        try await waitUntil("b to be given up") { expired.withLock { $0 } == ["a", "b"] }
        #expect(holds.isEmpty)
    }

    /// The four messages of item 2 (each alone used to kill `warren serve`, again on every
    /// redelivery) and two more malformed ones are dead-lettered on arrival, with a reply where
    /// they asked for one; the worker keeps running and then runs a normal job.
    @Test(.timeLimit(.minutes(4)))
    func crashMessagesAreDeadLetteredAndTheWorkerRunsOn() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let replies = "\(name).replies"
            let received = Received()
            let listener = consumingConnection([replies], url: try TestBroker.url(), received: received)
            let broker = try await makeBroker(name)
            let ran = Locked<[Int]>([])
            var registry = HandlerRegistry()
            // Fails its first attempt: the retry re-encodes the job, where two of the crashes were.
            try registry.registerRaw("wire.flaky") { payload, context in
                if context.attempt == 1 { throw TimedOut(description: "first attempt fails") }
                return payload
            }
            try registry.registerRaw("wire.ok") { payload, _ in
                if let object = try? JSONSerialization.jsonObject(with: payload) as? [String: Int], let n = object["n"] {
                    ran.withLock { $0.append(n) }
                }
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            let producer = try TestBroker.publisher()
            let crashes = [
                raw(name, type: "wire.ok", headers: [WireFormat.Header.deadline: .double(1e300)], replyTo: replies, correlationID: "c-deadline-double"),
                raw(name, type: "wire.flaky", headers: [WireFormat.Header.deadline: .int(.max)], replyTo: replies, correlationID: "c-deadline-int"),
                raw(name, type: "wire.flaky", headers: [WireFormat.Header.created: .int(.max)]),
                // The largest timestamp the publisher writes (2^64 − 2048 s: 2^64 − 1 is not a double).
                raw(name, type: "wire.flaky", timestamp: Date(timeIntervalSince1970: Double(UInt64.max))),
                raw(name, type: "wire.ok", contentType: "text/plain", replyTo: replies, correlationID: "c-text"),
                raw(name, type: "wire.ok", headers: [WireFormat.Header.maxRetries: .string("5")], replyTo: replies, correlationID: "c-string"),
            ]
            for message in crashes { try await producer.publish(message) }
            let dead = try await TestBroker.takeDeadLetters(name, count: crashes.count)
            #expect(dead.count == crashes.count)
            for letter in dead {
                #expect(letter.properties.headers[WireFormat.Header.deadReason]?.text == "malformed_message")
                #expect(letter.properties.headers[WireFormat.Header.deadAttempts] == .int(0), "dead-lettered on arrival, never run")
            }
            let answered = try await received.wait(count: 4).map(\.0)
            #expect(Set(answered.compactMap(\.properties.correlationID)) == ["c-deadline-double", "c-deadline-int", "c-text", "c-string"])
            for reply in answered {
                #expect(reply.properties.headers["x-warren-status"]?.text == "dead_lettered")
                #expect(reply.properties.headers[WireFormat.Header.deadReason]?.text == "malformed_message")
            }
            try await producer.publish(raw(name, type: "wire.ok", body: #"{"n":7}"#))
            try await waitUntil("the normal job ran", within: 20) { ran.withLock { $0 } == [7] }
            #expect(broker.isReady && broker.malformedCount == crashes.count)
            pool.shutdown()
            await runner.value
            await broker.close()
            await producer.close()
            await listener.close()
            try TestBroker.deleteQueues([name])
            let cleaner = try RawConnection(url: try TestBroker.url())
            try cleaner.deleteQueue(replies)
            cleaner.close()
        }
    }

    /// A job retried through the delay cascade and dead-lettered names where it was first sent,
    /// lists every attempt (the end of a long error kept) and counts them; a job its handler
    /// rejects on the first attempt counts one.
    @Test(.timeLimit(.minutes(4)))
    func deadLettersSayWhereAndHowManyAttempts() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let stderr = String(repeating: "warning: noise\n", count: 500)
            var registry = HandlerRegistry()
            try registry.registerRaw("wire.failing") { _, context in
                throw TimedOut(description: stderr + "error: attempt \(context.attempt) cannot reach the database")
            }
            try registry.registerRaw("wire.rejecting") { _, _ in throw JobRejected("HTTP 422: the order does not exist") }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            let queue = JobQueue(broker: broker)
            let failing = try await queue.submit(Job(name: "wire.failing", priority: .high, maxRetries: 2))
            let rejecting = try await queue.submit(Job(name: "wire.rejecting", priority: .high, maxRetries: 2))
            _ = try? await failing.result()
            _ = try? await rejecting.result()
            let dead = try await TestBroker.takeDeadLetters(name, count: 2)
            let byID = Dictionary(dead.map { ($0.properties.messageID ?? "", $0.properties.headers) }, uniquingKeysWith: { first, _ in first })
            let retried = try #require(byID[failing.id.rawValue])
            #expect(retried[WireFormat.Header.deadReason]?.text == "retries_exhausted")
            #expect(retried[WireFormat.Header.originalExchange]?.text == Topology.exchange)
            #expect(retried[WireFormat.Header.originalRoutingKey]?.text == "\(name).high")
            #expect(retried[WireFormat.Header.deadAttempts] == .int(3))
            let errors = try #require(WireFormat.errors(retried[WireFormat.Header.errors]))
            #expect(errors.map(\.attempt) == [1, 2, 3])
            #expect(errors.allSatisfy { $0.message.hasPrefix("…") })
            #expect(errors.last?.message.hasSuffix("error: attempt 3 cannot reach the database") == true)
            let rejected = try #require(byID[rejecting.id.rawValue])
            #expect(rejected[WireFormat.Header.deadReason]?.text == "rejected")
            #expect(rejected[WireFormat.Header.deadAttempts] == .int(1), "the handler ran once")
            #expect(rejected[WireFormat.Header.originalRoutingKey]?.text == "\(name).high")
            pool.shutdown()
            await runner.value
            await broker.close()
            try TestBroker.deleteQueues([name])
        }
    }

    /// `x-warren-delay`: the job goes through the delay cascade and starts no sooner than asked;
    /// a delay of 0 runs at once.
    @Test(.timeLimit(.minutes(4)))
    func delayHeaderDelaysTheJob() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let starts = Locked<[Int: Date]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw("wire.ok") { payload, _ in
                if let object = try? JSONSerialization.jsonObject(with: payload) as? [String: Int], let n = object["n"] {
                    starts.withLock { $0[n] = Date() }
                }
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let runner = Task { await pool.run() }
            let producer = try TestBroker.publisher()
            let published = Date()
            try await producer.publish(raw(name, type: "wire.ok", headers: [WireFormat.Header.delay: .int(1_500)], body: #"{"n":1}"#))
            try await producer.publish(raw(name, type: "wire.ok", headers: [WireFormat.Header.delay: .int(0)], body: #"{"n":0}"#))
            try await waitUntil("the undelayed job ran", within: 20) { starts.withLock { $0[0] } != nil }
            // Not held here meanwhile (unacked): the message is in the cascade, acked.
            let held = await broker.statistics()
            #expect(held.enqueued == 1 && starts.withLock { $0[1] } == nil)
            try await waitUntil("both jobs ran", within: 30) { starts.withLock { $0.count } == 2 }
            let delayed = try #require(starts.withLock { $0[1] }).timeIntervalSince(published)
            let immediate = try #require(starts.withLock { $0[0] }).timeIntervalSince(published)
            #expect(delayed >= 1.5 && delayed < 10, "the delayed job started after \(delayed) s")
            #expect(immediate < delayed, "a zero delay runs at once (after \(immediate) s)")
            #expect(broker.malformedCount == 0)
            pool.shutdown()
            await runner.value
            await broker.close()
            await producer.close()
            try TestBroker.deleteQueues([name])
        }
    }

    /// Messages leaving the shared delay cascade for a queue that does not exist (deleted since, or
    /// a routing key no Warren queue has) once held every delayed job and retry on the vhost behind
    /// them: at-least-once dead-lettering retries an unroutable message forever.
    @Test(.timeLimit(.minutes(4)))
    func delayedMessagesForAMissingQueueDoNotHoldBackTheCascade() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let broker = try await makeBroker(name)
            let producer = try TestBroker.publisher()
            let gone = "gone-\(UUID().uuidString).normal"
            for index in 0..<200 {
                try await producer.publish(OutgoingMessage(
                    exchange: Topology.delayEntry(seconds: 1), routingKey: Topology.delayRoutingKey(seconds: 1, destination: gone),
                    properties: MessageProperties(contentType: "application/json", deliveryMode: 2, messageID: "lost-\(index)"),
                    body: Array("{}".utf8)))
            }
            var registry = HandlerRegistry()
            try registry.registerRaw("wire.ok") { payload, _ in payload }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 2))
            let runner = Task { await pool.run() }
            let delayed = Job(id: JobID(UUID().uuidString), name: "wire.ok", notBefore: Date().addingTimeInterval(1))
            try await broker.enqueue([delayed])
            let sent = Date()
            let outcome = try await onOutcome(broker, delayed.id, within: 20)
            #expect(outcome != nil, "the delayed job never came out of the cascade")
            #expect(Date().timeIntervalSince(sent) < 10)
            pool.shutdown()
            await runner.value
            await broker.close()
            await producer.close()
            try TestBroker.deleteQueues([name])
        }
    }

    func onOutcome(_ broker: AMQPBroker, _ id: JobID, within seconds: Double) async throws -> JobOutcome? {
        let outcome = Locked<JobOutcome?>(nil)
        let waiting = Task { let value = await broker.outcome(of: id); outcome.withLock { $0 = value } }
        do {
            try await waitUntil("the outcome of \(id)", within: seconds) { outcome.withLock { $0 } != nil }
        } catch {
            waiting.cancel()
            return nil
        }
        return outcome.withLock { $0 }
    }
}
