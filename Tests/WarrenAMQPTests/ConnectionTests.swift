import Foundation
import Testing
import Warren
import WarrenIO
@testable import WarrenAMQP

@Suite("AMQP basics")
struct AMQPBasicsTests {
    @Test func urlsParseWithDefaults() throws {
        let plain = try AMQPURL("amqp://localhost")
        #expect(plain.host == "localhost" && plain.port == 5672 && plain.user == "guest" && plain.vhost == "/" && !plain.tls)
        let full = try AMQPURL("amqps://app:p%40ss@rabbit.internal:5999/prod%2Fjobs?heartbeat=30&connection_timeout=2500")
        #expect(full.tls && full.host == "rabbit.internal" && full.port == 5999)
        #expect(full.user == "app" && full.password == "p@ss" && full.vhost == "prod/jobs")
        #expect(full.heartbeat == 30 && full.connectTimeout == 2.5)
        #expect(!full.description.contains("p@ss"), "the password never shows")
        #expect(try AMQPURL("amqps://h").port == 5671)
        #expect(try AMQPURL("amqp://h/%2f").vhost == "/")
        #expect(throws: AMQPError.self) { try AMQPURL("http://localhost") }
        #expect(throws: AMQPError.self) { try AMQPURL("amqp://h?heartbeat=-1") }
        // A % that starts no escape is taken as it is (URLComponents encodes it); escapes that are
        // not UTF-8 are refused, never replaced (by "guest" or U+FFFD).
        #expect(try AMQPURL("amqp://app:p%ZZss@h/").password == "p%ZZss")
        #expect(try AMQPURL("amqp://app:p%@h/").password == "p%")
        for bad in ["amqp://app:p%C3@h/", "amqp://%FF:p@h/", "amqp://h/v%C3"] {
            if let url = try? AMQPURL(bad) {
                Issue.record("\(bad) parsed as user \(url.user), vhost \(url.vhost)")
            }
        }
        #expect(try AMQPURL("amqp://%C3%A9t%C3%A9:%E2%82%AC@h/").user == "été")
    }

    @Test func delayRoutingCarriesOneBitPerLevel() {
        let key = Topology.delayRoutingKey(seconds: 5, destination: "jobs.high")
        let words = key.split(separator: ".")
        #expect(words.count == Topology.delayLevels + 2)
        #expect(words.suffix(2) == ["jobs", "high"])
        #expect(words.prefix(Topology.delayLevels).joined() == String(repeating: "0", count: 25) + "101")
        #expect(Topology.delayEntry(seconds: 5) == "warren.delay.2")
        #expect(Topology.delayEntry(seconds: 1) == "warren.delay.0")
        #expect(Topology.delayEntry(seconds: (1 << 28) - 1) == "warren.delay.27")
        #expect(Topology.delaySeconds(2.2) == 3, "rounded up: never early")
        #expect(Topology.delaySeconds(0) == 0)
        #expect(Topology.delaySeconds(1e12) == (1 << 28) - 1)
    }

    @Test func acksCoalesceContiguousTagsAndDoNotWaitBehindALongJob() {
        var tracker = AckTracker()
        for tag in 1...6 { tracker.delivered(UInt64(tag)) }
        tracker.finish(2)
        tracker.finish(3)
        #expect(tracker.flush().isEmpty, "1 is still running: 2 and 3 wait")
        tracker.finish(1)
        #expect(tracker.flush().map { "\($0.tag)\($0.multiple ? "m" : "")" } == ["3m"], "one multiple ack for 1…3")
        tracker.finish(5)
        for round in 1...AckTracker.roundsBeforeAckingAlone {
            #expect(tracker.flush().isEmpty, "5 waits behind 4, round \(round)")
        }
        #expect(tracker.flush().map { "\($0.tag)\($0.multiple ? "m" : "")" } == ["5"], "5 waited its rounds behind 4: acked alone")
        tracker.finish(4)
        tracker.finish(6)
        #expect(tracker.flush().map { "\($0.tag)\($0.multiple ? "m" : "")" } == ["6m"], "4…6, skipping the one acked alone")
        #expect(tracker.isEmpty)
        tracker.delivered(7)
        tracker.delivered(8)
        tracker.settledElsewhere(7)
        tracker.finish(8)
        #expect(tracker.flush().map { "\($0.tag)\($0.multiple ? "m" : "")" } == ["8m"], "a rejected tag is never acked")
    }

    @Test func recurringStringsAreReusedAndNeverConfused() {
        var recurring = RecurringStrings()
        func read(_ text: String) -> String { Array(text.utf8).withUnsafeBytes { recurring.string($0) } }
        let key = "warren-bench.normal.with-a-long-routing-key"
        func storage(_ string: String) -> UnsafeRawPointer? {
            string.utf8.withContiguousStorageIfAvailable { UnsafeRawPointer($0.baseAddress) } ?? nil
        }
        let first = read(key), again = read(key)
        #expect(first == key && again == key, "the same bytes again")
        #expect(storage(first) != nil && storage(first) == storage(again), "the same bytes again give the kept string, not a new copy")
        #expect(read("warren-bench.normal.with-a-long-routing-kex") == "warren-bench.normal.with-a-long-routing-kex", "same length, other bytes")
        #expect(read("") == "")
        #expect(read("é ✓") == "é ✓")
        // Past its capacity it forgets the oldest and still answers right.
        for index in 0..<(RecurringStrings.capacity * 2) { #expect(read("type-\(index)") == "type-\(index)") }
        #expect(read(key) == key)
        let long = String(repeating: "x", count: RecurringStrings.longest + 1)
        #expect(read(long) == long, "long strings are not kept, but read right")
    }

    /// The I/O thread's waits: a signal ends one at once, and without one a wait shorter than a
    /// millisecond (the delivery linger) lasts at least as long as asked.
    @Test func eventWaitsEndOnASignalOrAfterTheirTimeout() {
        let wake = EventFD()
        let clock = ContinuousClock()
        wake.signal()
        let signalled = clock.measure { wake.wait(socket: nil, for: .seconds(30)) }
        #expect(signalled < .seconds(10), "a pending signal ends the wait")
        // The signal was consumed: the next wait runs its course.
        let quiet = clock.measure { wake.wait(socket: nil, for: .microseconds(300)) }
        #expect(quiet >= .microseconds(300) && quiet < .seconds(10))
    }
}

@Suite("AMQP connection against RabbitMQ", .serialized)
struct AMQPConnectionTests {
    @Test(.timeLimit(.minutes(4)))
    func publishesWithConfirmsConsumesAndAcks() async throws {
        try await usingBroker {
            let queue = TestBroker.unique()
            let received = Received()
            let connection = consumingConnection([queue], url: try TestBroker.url(), prefetch: 500, received: received)
            try await waitUntil("connected") { if case .connected = connection.status { true } else { false } }
            for index in 0..<200 {
                var properties = MessageProperties(contentType: "application/json", headers: ["x-attempt": .int(Int64(index)), "nested": .table(["a": .array([.bool(true), .string("x")])])])
                properties.messageID = "m\(index)"
                try await connection.publish(OutgoingMessage(exchange: "", routingKey: queue, properties: properties, body: Array(#"{"n":\#(index)}"#.utf8)))
            }
            let messages = try await received.wait(count: 200)
            #expect(messages.map { $0.0.properties.messageID } == (0..<200).map { "m\($0)" }, "in order, none lost")
            #expect(messages[7].0.properties.headers["x-attempt"] == .int(7))
            #expect(messages[0].0.properties.headers["nested"] == .table(["a": .array([.bool(true), .string("x")])]))
            #expect(String(decoding: messages[199].0.body, as: UTF8.self) == #"{"n":199}"#)
            for (message, generation) in messages.reversed() { connection.ack(message.deliveryTag, generation: generation) }
            try await waitUntil("every ack to land") {
                let counts = try? await connection.perform { session throws(AMQPError) in try session.raw.declareQueue(queue, passive: true) }
                return counts?.messages == 0
            }
            let unacked = try await connection.perform { session throws(AMQPError) in try session.raw.declareQueue(queue, passive: true) }
            #expect(unacked.messages == 0)
            try await connection.perform { session throws(AMQPError) in try session.raw.deleteQueue(queue) }
            await connection.close()
            #expect(connection.status == .closed)
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func topologyIsIdempotentAndConflictsSayWhatToDo() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let connection = AMQPConnection(.init(url: try TestBroker.url()), setup: { _ throws(AMQPError) in }, onMessage: { _, _ in })
            let topology = Topology(queue: name, queueType: .classic)
            try await connection.perform { session throws(AMQPError) in _ = try topology.declare(session.raw) }
            try await connection.perform { session throws(AMQPError) in _ = try topology.declare(session.raw) }
            for priority in JobPriority.allCases {
                try await connection.perform { session throws(AMQPError) in _ = try session.raw.declareQueue(topology.brokerQueue(priority), passive: true) }
            }
            let quorum = Topology(queue: name, queueType: .quorum)
            do {
                try await connection.perform { session throws(AMQPError) in _ = try quorum.declare(session.raw) }
                Issue.record("a conflicting declaration was accepted")
            } catch {
                guard case let .conflictingQueue(queue, detail)? = error as? AMQPError else { Issue.record("expected conflictingQueue, got \(error)"); return }
                #expect(queue.hasPrefix(name))
                #expect(detail.contains("x-queue-type"), "names the argument: \(detail)")
                #expect(detail.contains("configure queue.type"), "says how to fix it: \(detail)")
            }
            // The channel error is behind us: the connection carries on.
            try await deleteQueues(of: topology, on: connection)

            // Quorum queues declared by an older Warren (no delivery limit, no dead-letter
            // exchange) are used as they are, with a note; a changed delivery limit is refused.
            let older = TestBroker.unique()
            let current = Topology(queue: older, queueType: .quorum)
            try await connection.perform { session throws(AMQPError) in
                for priority in JobPriority.allCases {
                    try session.raw.declareQueue(current.brokerQueue(priority), arguments: ["x-queue-type": .string("quorum")])
                }
            }
            let notes = try await connection.perform { session throws(AMQPError) in try current.declare(session.raw) }
            #expect(notes.contains { $0.contains("\(older).normal") && $0.contains("older Warren") }, "\(notes)")
            let changed = TestBroker.unique()
            try await connection.perform { session throws(AMQPError) in _ = try Topology(queue: changed, queueType: .quorum).declare(session.raw) }
            do {
                try await connection.perform { session throws(AMQPError) in
                    _ = try Topology(queue: changed, queueType: .quorum, deliveryLimit: 5).declare(session.raw)
                }
                Issue.record("a changed delivery limit was accepted")
            } catch {
                #expect("\(error)".contains("queue.delivery_limit differs"), "\(error)")
            }
            try await deleteQueues(of: current, on: connection)
            try await deleteQueues(of: Topology(queue: changed, queueType: .quorum), on: connection)
            await connection.close()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aDelayedMessageWaitsItsTimeInTheCascade() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let topology = Topology(queue: name)
            let received = Received()
            let connection = AMQPConnection(
                .init(url: try TestBroker.url()),
                setup: { session throws(AMQPError) in
                    try topology.declare(session.raw)
                    try session.raw.consume(topology.brokerQueue(.high), consumerTag: "c\(session.generation)")
                },
                onMessage: { burst, generation in for message in burst { received.add(message, generation) } })
            try await waitUntil("connected") { if case .connected = connection.status { true } else { false } }
            let sent = Date()
            let key = Topology.delayRoutingKey(seconds: 2, destination: topology.routingKey(.high))
            try await connection.publish(OutgoingMessage(exchange: Topology.delayEntry(seconds: 2), routingKey: key, body: Array("later".utf8)))
            let message = try await received.wait(count: 1, within: 10)[0]
            let waited = received.arrivalTimes[0].timeIntervalSince(sent)
            #expect(waited >= 2.0 && waited < 3.5, "arrived after \(waited) s")
            #expect(message.0.body == Array("later".utf8))
            #expect(message.0.properties.headers["x-death"] != nil, "it travelled through the cascade")
            connection.ack(message.0.deliveryTag, generation: message.1)
            try await deleteQueues(of: topology, on: connection)
            await connection.close()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func unreachableBrokersAndBadLoginsAreNamed() async throws {
        try await usingBroker {
            var nowhere = try TestBroker.url()
            nowhere.port = 1
            nowhere.connectTimeout = 2
            #expect {
                _ = try RawConnection(url: nowhere)
            } throws: { error in
                guard case let .unreachable(host, port, _) = error as? AMQPError else { return false }
                return host == "127.0.0.1" && port == 1 && "\(error)".contains("127.0.0.1:1")
            }
            var wrong = try TestBroker.url()
            wrong.password = "not-the-password"
            #expect {
                _ = try RawConnection(url: wrong)
            } throws: { error in
                if case .accessRefused = error as? AMQPError { return true }
                return false
            }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func tlsConnectionsVerifyTheServerAndCarryJobs() async throws {
        try await usingBroker {
            let url = try TestBroker.tlsURL()
            #expect(url.tls && url.caCertificate != nil)
            let queue = TestBroker.unique()
            let received = Received()
            let connection = consumingConnection([queue], url: url, received: received)
            try await waitUntil("connected over TLS") { if case .connected = connection.status { true } else { false } }
            for index in 0..<50 {
                try await connection.publish(OutgoingMessage(exchange: "", routingKey: queue, body: Array("m\(index)".utf8)))
            }
            let messages = try await received.wait(count: 50)
            #expect(messages.map { String(decoding: $0.0.body, as: UTF8.self) } == (0..<50).map { "m\($0)" })
            for (message, generation) in messages { connection.ack(message.deliveryTag, generation: generation) }
            try await connection.perform { session throws(AMQPError) in try session.raw.deleteQueue(queue) }
            await connection.close()

            // The same server, not trusted: refused, saying so.
            var untrusted = url
            untrusted.caCertificate = nil
            untrusted.connectTimeout = 5
            #expect { _ = try RawConnection(url: untrusted) } throws: { "\($0)".contains("verification failed") }
            // A CA file that does not exist is named.
            var missing = url
            missing.caCertificate = "/nonexistent/ca.pem"
            #expect { _ = try RawConnection(url: missing) } throws: { "\($0)".contains("/nonexistent/ca.pem") }
            // Verification off (a private network's choice): it connects.
            var unverified = untrusted
            unverified.verifyPeer = false
            let plain = try RawConnection(url: unverified)
            plain.close()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func anUnroutableMandatoryMessageIsReported() async throws {
        try await usingBroker {
            let connection = AMQPConnection(.init(url: try TestBroker.url()), setup: { _ throws(AMQPError) in }, onMessage: { _, _ in })
            var properties = MessageProperties()
            properties.messageID = "lost"
            let key = TestBroker.unique()
            await #expect(throws: AMQPError.unroutable(exchange: "", routingKey: key, text: "312 NO_ROUTE")) {
                try await connection.publish(OutgoingMessage(exchange: "", routingKey: key, properties: properties, body: [1], mandatory: true))
            }
            await connection.close()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func heartbeatsKeepAnIdleConnection() async throws {
        try await usingBroker {
            let queue = TestBroker.unique()
            let received = Received()
            let connection = consumingConnection([queue], url: try TestBroker.url(heartbeat: 1), received: received)
            try await waitUntil("connected") { if case .connected = connection.status { true } else { false } }
            let changes = Locked<[AMQPConnection.Status]>([])
            let watcher = Task { for await status in connection.statusUpdates { changes.withLock { $0.append(status) } } }
            // Six heartbeat intervals with nothing to do: idling is what this test is about, so it
            // sleeps; the I/O thread must keep answering the broker meanwhile.
            try await Task.sleep(for: .seconds(6))
            let lost = changes.withLock { $0 }.filter { if case .connected = $0 { false } else { $0 != .connecting } }
            #expect(lost.isEmpty, "the connection dropped while idle: \(lost)")
            #expect(connection.status == .connected(generation: 1))
            try await connection.publish(OutgoingMessage(exchange: "", routingKey: queue, body: [42]))
            let message = try await received.wait(count: 1)[0]
            connection.ack(message.0.deliveryTag, generation: message.1)
            try await connection.perform { session throws(AMQPError) in try session.raw.deleteQueue(queue) }
            await connection.close()
            watcher.cancel()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func recoversFromABrokerRestart() async throws {
        try await usingBroker(exclusive: true) {
            let queue = TestBroker.unique()
            let received = Received()
            let connection = consumingConnection([queue], url: try TestBroker.url(heartbeat: 2), received: received)
            try await waitUntil("connected") { connection.status == .connected(generation: 1) }
            try await connection.publish(OutgoingMessage(exchange: "", routingKey: queue, properties: MessageProperties(deliveryMode: 2), body: [1]))
            _ = try await received.wait(count: 1)
            // Not acked: the broker must redeliver it after the restart, on the new connection.
            try await TestBroker.restart()
            try await waitUntil("reconnected", within: 60) {
                if case let .connected(generation) = connection.status { return generation > 1 } else { return false }
            }
            let again = try await received.wait(count: 2, within: 20)
            #expect(again[1].0.redelivered && again[1].0.body == [1], "redelivered after the restart")
            #expect(again[1].1 > again[0].1, "on a newer generation")
            connection.ack(again[0].0.deliveryTag, generation: again[0].1)  // stale: must be dropped, not sent
            connection.ack(again[1].0.deliveryTag, generation: again[1].1)
            try await connection.publish(OutgoingMessage(exchange: "", routingKey: queue, properties: MessageProperties(deliveryMode: 2), body: [2]))
            let third = try await received.wait(count: 3)[2]
            connection.ack(third.0.deliveryTag, generation: third.1)
            try await waitUntil("the queue to drain") {
                let counts = try? await connection.perform { session throws(AMQPError) in try session.raw.declareQueue(queue, passive: true) }
                return counts?.messages == 0
            }
            #expect(connection.status == .connected(generation: again[1].1), "the stale ack did not break the channel")
            try await connection.perform { session throws(AMQPError) in try session.raw.deleteQueue(queue) }
            await connection.close()
        }
    }
}

/// Removes a test's Warren queues from the shared test broker.
func deleteQueues(of topology: Topology, on connection: AMQPConnection) async throws {
    try await connection.perform { session throws(AMQPError) in
        for priority in JobPriority.allCases { try session.raw.deleteQueue(topology.brokerQueue(priority)) }
        try session.raw.deleteQueue(topology.deadQueue)
    }
}
