import Foundation
import Warren
#if canImport(Glibc)
import Glibc
#endif
import Testing
@_exported import WarrenTestSupport
@testable import WarrenAMQP

/// The private RabbitMQ that `make test` starts (scripts/test.sh).
enum TestBroker {
    struct NotConfigured: Error, CustomStringConvertible {
        var description: String {
            "WARREN_TEST_AMQP_URL is not set: run the tests with `make test`, which starts a private RabbitMQ"
        }
    }

    static func url(heartbeat: Int? = nil) throws -> AMQPURL {
        guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_AMQP_URL"] else { throw NotConfigured() }
        var url = try AMQPURL(text)
        if let heartbeat { url.heartbeat = heartbeat }
        return url
    }

    /// A broker on the test broker's queue `queue`, connected (its topology declared).
    static func broker(
        _ queue: String, queueType: QueueType = .classic, prefetch: UInt16 = 50, heartbeat: Int? = nil,
        _ configure: (inout AMQPBroker.Configuration) -> Void = { _ in }
    ) async throws -> AMQPBroker {
        var configuration = AMQPBroker.Configuration(url: try url(heartbeat: heartbeat), queue: queue, queueType: queueType, prefetch: prefetch)
        configure(&configuration)
        let broker = AMQPBroker(configuration)
        try await broker.waitUntilReady(timeout: .seconds(20))
        return broker
    }

    /// A plain publisher, as another language's client would be.
    static func publisher() throws -> AMQPConnection {
        AMQPConnection(.init(url: try url(), name: "producer"), setup: { _ throws(AMQPError) in }, onMessage: { _, _ in })
    }

    /// The second broker of the test run: Debian's RabbitMQ 3.10, for the conformance suite.
    static func legacyURL() throws -> AMQPURL {
        guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_LEGACY_AMQP_URL"] else { throw NotConfigured() }
        return try AMQPURL(text)
    }

    /// The same broker's TLS listener (a throwaway CA made by scripts/rabbitmq.sh).
    static func tlsURL() throws -> AMQPURL {
        guard let text = ProcessInfo.processInfo.environment["WARREN_TEST_AMQPS_URL"] else { throw NotConfigured() }
        return try AMQPURL(text)
    }

    /// A name no other test uses.
    static func unique(_ base: String = #function) -> String {
        let stem = base.prefix { $0 != "(" }.lowercased()
        return "t-\(stem)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36))"
    }

    /// Removes the broker queues of the Warren queues `names` (five priorities and the dead
    /// letters), so that a broker kept across runs does not pile them up.
    static func deleteQueues(_ names: [String], at broker: AMQPURL? = nil) throws {
        let cleaner = try RawConnection(url: try broker ?? url())
        defer { cleaner.close() }
        for name in names {
            let topology = Topology(queue: name)
            for priority in JobPriority.allCases { try cleaner.deleteQueue(topology.brokerQueue(priority)) }
            try cleaner.deleteQueue(topology.deadQueue)
        }
    }

    /// Takes every message off the Warren queue's dead-letter queue once `count` are there, on
    /// connections of its own (basic.get on a consuming channel would interleave with deliveries).
    static func takeDeadLetters(_ queue: String, count: Int) async throws -> [IncomingMessage] {
        let dead = Topology(queue: queue).deadQueue
        try await waitUntil("\(count) dead letters", within: 30) {
            guard let counter = try? RawConnection(url: try url()) else { return false }
            defer { counter.close() }
            return ((try? counter.declareQueue(dead, passive: true))?.messages ?? 0) >= count
        }
        let inspector = try RawConnection(url: try url())
        defer { inspector.close() }
        var messages: [IncomingMessage] = []
        while let message = try inspector.get(dead, autoAck: true) { messages.append(message) }
        return messages
    }

    /// Restarts the broker (stop, then start with the same data): for recovery tests.
    static func restart() async throws {
        guard let dir = ProcessInfo.processInfo.environment["WARREN_TEST_RABBITMQ_DIR"] else { throw NotConfigured() }
        let script = try ChildProcess("/bin/bash", ["scripts/rabbitmq.sh", "restart", dir], keepStderr: true)
        let exit = try await script.exit(within: 180)
        guard exit == .exited(0) else {
            throw AMQPError.library(status: -1, text: "scripts/rabbitmq.sh restart ended \(exit): \(script.output)", during: "restarting the test broker")
        }
    }
}

/// Collects what a connection delivers, and lets a test wait for it with a time limit.
final class Received: Sendable {
    private let messages = Locked<[(IncomingMessage, UInt64)]>([])
    private let arrivals = Locked<[Date]>([])

    /// Called on the connection's thread: the arrival time is taken there, not when a busy test
    /// process gets round to looking.
    func add(_ message: IncomingMessage, _ generation: UInt64) {
        arrivals.withLock { $0.append(Date()) }
        messages.withLock { $0.append((message, generation)) }
    }
    var all: [(IncomingMessage, UInt64)] { messages.withLock { $0 } }
    var arrivalTimes: [Date] { arrivals.withLock { $0 } }

    func wait(count: Int, within seconds: Double = 10) async throws -> [(IncomingMessage, UInt64)] {
        try await waitUntil("\(count) messages", within: seconds) { self.all.count >= count }
        return all
    }
}

/// A connection that declares `queues` (classic, durable) and consumes them into `received`.
func consumingConnection(
    _ queues: [String], url: AMQPURL, prefetch: UInt16 = 100, received: Received
) -> AMQPConnection {
    AMQPConnection(
        .init(url: url, name: "test"),
        setup: { session throws(AMQPError) in
            try session.raw.setPrefetch(prefetch)
            for queue in queues {
                try session.raw.declareQueue(queue)
                try session.raw.consume(queue, consumerTag: "\(queue)-\(session.generation)")
            }
        },
        onMessage: { burst, generation in for message in burst { received.add(message, generation) } })
}
