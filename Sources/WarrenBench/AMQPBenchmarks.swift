import Foundation
import Warren
import WarrenIO
import WarrenAMQP

/// Measurements against a real broker, for `warren bench --amqp-url`: the ceiling (a bare
/// rabbitmq-c consume-and-ack loop) and fast filling of a queue.
enum AMQPBenchmarks {
    /// How long a drain may go without a message before it gives up (another process draining or
    /// purging the same queue, a broker that stopped delivering): a benchmark never waits forever.
    static let stallLimit: Duration = .seconds(30)

    struct Stalled: Error, CustomStringConvertible {
        let queue: String
        let received: Int
        let expected: Int

        var description: String {
            "the drain of queue '\(queue)' stalled: \(received) of \(expected) messages, then none for \(AMQPBenchmarks.stallLimit) "
                + "(did something else consume or purge it?)"
        }
    }

    /// Claims the broker for one benchmark run: every run uses the same queue names, so a second
    /// warren-bench against the same RabbitMQ would drain and purge the first one's queues (both
    /// then print nonsense or stall). The claim is an exclusive queue held by a connection of its
    /// own (no heartbeats, so a long run does not lose it); closing the connection gives it up.
    static func claim(url: AMQPURL) throws -> RawConnection {
        var quiet = url
        quiet.heartbeat = 0
        let raw = try RawConnection(url: quiet)
        do {
            _ = try raw.declareQueue(claimQueue, exclusive: true)
        } catch {
            raw.close()
            if case let .channelClosed(code, _, _) = error, code == 405 { throw Busy() }
            throw error
        }
        return raw
    }

    static let claimQueue = "warren-bench.running"

    struct Busy: Error, CustomStringConvertible {
        var description: String {
            "another warren-bench is measuring against this RabbitMQ (it holds the exclusive queue '\(AMQPBenchmarks.claimQueue)'); "
                + "run one at a time: both would use the same queues"
        }
    }

    /// Publishes `count` messages to `routingKey` on `exchange` with publisher confirms, keeping at
    /// most `window` unconfirmed. Returns messages per second.
    static func fill(
        url: AMQPURL, exchange: String, routingKey: String, count: Int, properties: MessageProperties = MessageProperties(),
        body: (Int) -> [UInt8], window: Int = 1_000
    ) throws(AMQPError) -> Double {
        let raw = try RawConnection(url: url)
        defer { raw.close() }
        try raw.selectConfirms()
        let wake = EventFD()
        let started = ContinuousClock.now
        var confirmed: UInt64 = 0
        for index in 0..<count {
            var message = properties
            message.messageID = message.messageID.map { "\($0)-\(index)" }
            try raw.publish(OutgoingMessage(exchange: exchange, routingKey: routingKey, properties: message, body: body(index)))
            while UInt64(index + 1) - confirmed >= UInt64(window) { confirmed = try awaitConfirms(raw, confirmed, wake) }
        }
        while confirmed < UInt64(count) { confirmed = try awaitConfirms(raw, confirmed, wake) }
        return Double(count) / (ContinuousClock.now - started).timeInterval
    }

    private static func awaitConfirms(_ raw: RawConnection, _ confirmed: UInt64, _ wake: EventFD) throws(AMQPError) -> UInt64 {
        switch try raw.nextEvent(waitingUntil: .now + .milliseconds(100), wake: wake) {
        case let .control(.confirmAck(tag, multiple))?: multiple ? tag : max(confirmed, tag)
        case .control(.confirmNack)?: throw .publishRefused("the broker nacked a benchmark message")
        case .control?, .delivery?, nil: confirmed
        }
    }

    /// Drains `count` messages from `queue` in a bare loop: consume with `prefetch`, ack with
    /// `multiple = true` every `ackEvery`. Deliberately its own loop on rabbitmq-c's calls (it acks
    /// when the socket runs dry, which `nextEvent` hides): it is the ceiling Warren is measured by. Returns messages per second (the ceiling Warren is
    /// measured against) and the loop thread's CPU seconds per message.
    static func rawDrain(
        url: AMQPURL, queue: String, count: Int, prefetch: UInt16, ackEvery: Int = 500
    ) throws -> (rate: Double, cpuPerMessage: Double) {
        let cpuBefore = cpuSeconds(thisThreadOnly: true)
        let raw = try RawConnection(url: url)
        defer { raw.close() }
        try raw.setPrefetch(prefetch)
        try raw.consume(queue, consumerTag: "ceiling")
        let wake = EventFD()
        var received = 0
        var unacked = 0
        var lastTag: UInt64 = 0
        var started: ContinuousClock.Instant?
        var lastMessage = ContinuousClock.now
        while received < count {
            switch try raw.poll() {
            case let .message(message):
                if started == nil { started = .now }
                lastMessage = .now
                received += 1
                unacked += 1
                lastTag = message.deliveryTag
                if unacked >= ackEvery || received == count {
                    try raw.ack(lastTag, multiple: true)
                    unacked = 0
                }
            case .frameWaiting:
                _ = try raw.readFrame()
            case .nothing:
                if unacked > 0 {
                    try raw.ack(lastTag, multiple: true)
                    unacked = 0
                }
                guard ContinuousClock.now - lastMessage < stallLimit else { throw Stalled(queue: queue, received: received, expected: count) }
                wake.wait(socket: raw.socketDescriptor, for: .milliseconds(100))
            }
        }
        let cpu = cpuSeconds(thisThreadOnly: true) - cpuBefore
        return (Double(count) / (ContinuousClock.now - (started ?? .now)).timeInterval, cpu / Double(count))
    }

    /// CPU time used so far, in seconds: by the whole process, or by the calling thread alone
    /// (the raw loop runs on one thread).
    static func cpuSeconds(thisThreadOnly: Bool = false) -> Double {
        var now = timespec()
        clock_gettime(thisThreadOnly ? CLOCK_THREAD_CPUTIME_ID : CLOCK_PROCESS_CPUTIME_ID, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// Declares (if needed) and empties a plain queue.
    static func prepare(url: AMQPURL, queue: String, type: QueueType = .classic) throws(AMQPError) {
        let raw = try RawConnection(url: url)
        defer { raw.close() }
        try raw.declareQueue(queue, arguments: ["x-queue-type": .string(type.rawValue)])
        _ = try raw.purgeQueue(queue)
    }

    /// Declares a Warren queue's topology and empties its queues.
    static func prepare(url: AMQPURL, topology: Topology) throws(AMQPError) {
        let raw = try RawConnection(url: url)
        defer { raw.close() }
        _ = try topology.declare(raw)
        for priority in JobPriority.allCases { _ = try raw.purgeQueue(topology.brokerQueue(priority)) }
        _ = try raw.purgeQueue(topology.deadQueue)
    }
}


