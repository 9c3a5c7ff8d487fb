#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
public import Warren

/// The kind of RabbitMQ queue Warren declares.
public enum QueueType: String, Sendable, CaseIterable {
    /// Single-node, supports everything; lost with its node.
    case classic
    /// Replicated (Raft), crash-safe; no per-message priorities in 3.10 (Warren does not need them).
    case quorum
}

/// Names and declarations of everything Warren uses on the broker. Every declaration is idempotent;
/// one that conflicts with an existing queue's arguments fails saying which argument and how to fix it.
public struct Topology: Sendable, Equatable {
    /// The work exchange (direct): routing keys `<queue>.<priority>`, and `<queue>` for normal.
    public static let exchange = "warren"
    /// Dead letters (direct): routing key `<queue>`, into `<queue>.dead`.
    public static let deadExchange = "warren.dead"
    /// Job lifecycle events (topic): `<queue>.<event>.<job name>`.
    public static let eventsExchange = "warren.events"
    /// The delay cascade's exchanges and queues are `warren.delay.<level>`; the last hop is this one.
    public static let deliverExchange = "warren.delay.deliver"
    /// Keeps nothing: it makes every message leaving the cascade routable (see `declareCascade`).
    static let delaySink = "warren.delay.sink"
    /// Levels 0 … 27: delays up to 2^28 − 1 s (8.5 years) in whole seconds.
    public static let delayLevels = 28

    /// The Warren queue's name (the prefix of its five broker queues).
    public let queue: String
    public let queueType: QueueType
    /// `x-max-length` of the priority queues, with `reject-publish` overflow.
    public let maxLength: Int?
    /// Quorum queues: how often a message may be returned to its priority queue (a consumer
    /// that died or lost its connection holding it) before RabbitMQ dead-letters it into
    /// `<queue>.dead` with reason `delivery_limit`. RabbitMQ 4 defaults to 20 and, without a
    /// dead-letter exchange, drops the message.
    public let deliveryLimit: Int

    public static let defaultDeliveryLimit = 20
    public static let deliveryLimits = 1...1_000_000

    public init(queue: String, queueType: QueueType = .classic, maxLength: Int? = nil, deliveryLimit: Int = Topology.defaultDeliveryLimit) {
        self.queue = queue
        self.queueType = queueType
        self.maxLength = maxLength
        self.deliveryLimit = min(max(deliveryLimit, Self.deliveryLimits.lowerBound), Self.deliveryLimits.upperBound)
    }

    public func brokerQueue(_ priority: JobPriority) -> String { "\(queue).\(priority.name)" }
    public func routingKey(_ priority: JobPriority) -> String { brokerQueue(priority) }
    public var deadQueue: String { "\(queue).dead" }
    public var deadRoutingKey: String { queue }

    static func delayName(_ level: Int) -> String { "warren.delay.\(level)" }

    /// The routing key that carries a delay of `seconds` through the cascade to `destination` (a
    /// routing key of the work exchange): one word per level, most significant first, then the
    /// destination. Each level's exchange sends the message into its queue (TTL 2^level s) when
    /// its bit is 1, otherwise on down the cascade.
    static func delayRoutingKey(seconds: Int, destination: String) -> String {
        let bits = (0..<delayLevels).reversed().map { (seconds >> $0) & 1 == 1 ? "1" : "0" }
        return bits.joined(separator: ".") + "." + destination
    }

    /// Where to publish a message delayed by `seconds` (≥ 1): the level of its highest bit.
    static func delayEntry(seconds: Int) -> String {
        delayName(min(delayLevels - 1, Int.bitWidth - 1 - seconds.leadingZeroBitCount))
    }

    /// Delays are whole seconds, rounded up so a job never starts early; capped at the cascade's reach
    /// (compared before the conversion, so no interval can trap; NaN is no delay).
    static func delaySeconds(_ interval: TimeInterval) -> Int {
        guard interval > 0 else { return 0 }
        let cap = (1 << delayLevels) - 1
        guard interval < Double(cap) else { return cap }
        return Int(interval.rounded(.up))
    }

    /// The message for one of this queue's priority queues, through the delay cascade when it is
    /// not due until `notBefore`: how every job and delayed copy is published.
    func message(
        to priority: JobPriority, notBefore: Date?, properties: MessageProperties, body: [UInt8]
    ) -> OutgoingMessage {
        let destination = routingKey(priority)
        let delay = Self.delaySeconds(notBefore.map { $0.timeIntervalSinceNow } ?? 0)
        guard delay > 0 else {
            return OutgoingMessage(exchange: Self.exchange, routingKey: destination, properties: properties, body: body, mandatory: true)
        }
        return OutgoingMessage(
            exchange: Self.delayEntry(seconds: delay), routingKey: Self.delayRoutingKey(seconds: delay, destination: destination),
            properties: properties, body: body, mandatory: true)
    }

    /// Where a message was first sent: a message that came through the delay cascade (exchange
    /// `warren.delay.…`, routing key `<28 bits>.<destination>`) was bound for the work exchange with
    /// its destination key; anything else is returned as it is.
    static func originalDestination(exchange: String, routingKey: String) -> (exchange: String, routingKey: String) {
        guard exchange.hasPrefix("warren.delay.") else { return (exchange, routingKey) }
        let words = routingKey.split(separator: ".", maxSplits: delayLevels, omittingEmptySubsequences: false)
        guard words.count == delayLevels + 1, words.dropLast().allSatisfy({ $0 == "0" || $0 == "1" }) else {
            return (exchange, routingKey)
        }
        return (Self.exchange, String(words[delayLevels]))
    }

    // MARK: Declaring

    /// Everything this queue needs on the broker, in order: the shared exchanges and delay cascade,
    /// the five priority queues and the dead queue with their bindings.
    func declarations(on version: BrokerVersion) -> [Declaration] {
        var batch: [Declaration] = [
            .exchange(Self.exchange, type: "direct"),
            .exchange(Self.deadExchange, type: "direct"),
            .exchange(Self.eventsExchange, type: "topic"),
            .exchange(Self.deliverExchange, type: "topic"),
            // A message leaving the cascade for a queue that no longer exists (deleted, renamed, or
            // a routing key no Warren queue has) is unroutable, and at-least-once dead-lettering
            // retries it forever while every message behind it waits: one such message stalled
            // every delay and retry on the vhost (measured: 3,266 messages stuck behind it in
            // warren.delay.0). The sink takes a copy of everything the last hop delivers and keeps
            // none, so every message is routed and the cascade always moves. A quorum queue, so
            // that in a cluster it is there while any majority of nodes is (a sink lost with its
            // node would stall the cascade again; one declared classic earlier is kept).
            .queue(Self.delaySink, arguments: ["x-max-length": .int(0), "x-queue-type": .string("quorum")]),
            .bindQueue(Self.delaySink, exchange: Self.deliverExchange, routingKey: "#"),
        ]
        for level in 0..<Self.delayLevels {
            let name = Self.delayName(level)
            let next = level == 0 ? Self.deliverExchange : Self.delayName(level - 1)
            let prefix = Array(repeating: "*", count: Self.delayLevels - 1 - level)
            batch += [
                .exchange(name, type: "topic"),
                .queue(name, arguments: Self.cascadeArguments(level)),
                .bindQueue(name, exchange: name, routingKey: (prefix + ["1", "#"]).joined(separator: ".")),
                .bindExchange(next, source: name, routingKey: (prefix + ["0", "#"]).joined(separator: ".")),
            ]
        }
        for priority in JobPriority.allCases {
            let name = brokerQueue(priority)
            batch += [
                .queue(name, arguments: priorityQueueArguments),
                .bindQueue(name, exchange: Self.exchange, routingKey: routingKey(priority)),
                .bindQueue(name, exchange: Self.deliverExchange, routingKey: "#." + routingKey(priority)),
            ]
        }
        batch += [
            .bindQueue(brokerQueue(.normal), exchange: Self.exchange, routingKey: queue),
            .queue(deadQueue, arguments: deadQueueArguments(on: version)),
            .bindQueue(deadQueue, exchange: Self.deadExchange, routingKey: deadRoutingKey),
        ]
        return batch
    }

    /// Declares this queue's topology and the shared exchanges and cascade, all in one pipelined
    /// batch (one round trip when it exists already). When the broker refuses something, the
    /// declarations are made again one by one to find it: a cascade or a quorum queue declared
    /// otherwise by an older Warren or an operator is used as it is (returned as a note for the
    /// log), any other conflict is an error that says which argument and how to fix it.
    @discardableResult
    package func declare(_ raw: RawConnection) throws(AMQPError) -> [String] {
        let batch = declarations(on: raw.serverVersion)
        do {
            try raw.declare(batch)
            return []
        } catch let error {
            guard case .channelClosed = error else { throw error }
            try raw.openChannel()
        }
        var notes: [String] = []
        for declaration in batch {
            switch declaration {
            case let .exchange(name, type): try raw.declareExchange(name, type: type)
            case let .bindQueue(name, exchange, key): try raw.bindQueue(name, exchange: exchange, routingKey: key)
            case let .bindExchange(destination, source, key): try raw.bindExchange(destination, to: source, routingKey: key)
            case let .queue(name, arguments):
                if let note = try declareQueue(raw, name, arguments: arguments) { notes.append(note) }
            }
        }
        return notes
    }

    /// Delay levels are quorum queues with at-least-once dead-lettering, so a delayed message is
    /// not lost between levels; shared by every Warren queue on the vhost, whatever their type.
    private static func cascadeArguments(_ level: Int) -> [String: AMQPValue] {
        [
            "x-message-ttl": .int(Int64(1_000) << level),
            "x-dead-letter-exchange": .string(level == 0 ? deliverExchange : delayName(level - 1)),
            "x-queue-type": .string("quorum"),
            "x-dead-letter-strategy": .string("at-least-once"),
            "x-overflow": .string("reject-publish"),
        ]
    }

    /// Quorum priority queues dead-letter a message returned `deliveryLimit` times into
    /// `<queue>.dead` (at least once: kept until the dead queue confirms it), instead of RabbitMQ
    /// 4's default of dropping it after 20 returns.
    var priorityQueueArguments: [String: AMQPValue] {
        var arguments: [String: AMQPValue] = ["x-queue-type": .string(queueType.rawValue)]
        if let maxLength {
            // A quorum queue refuses a publish once it holds more than x-max-length (it checks
            // after each enqueue), so it takes one more than a classic queue does.
            arguments["x-max-length"] = .int(Int64(queueType == .quorum ? maxLength - 1 : maxLength))
            arguments["x-overflow"] = .string("reject-publish")
        }
        if queueType == .quorum {
            arguments["x-delivery-limit"] = .int(Int64(deliveryLimit))
            arguments["x-dead-letter-exchange"] = .string(Self.deadExchange)
            arguments["x-dead-letter-routing-key"] = .string(deadRoutingKey)
            arguments["x-dead-letter-strategy"] = .string("at-least-once")
            arguments["x-overflow"] = .string("reject-publish")
        }
        return arguments
    }

    /// A quorum dead queue has no delivery limit where the broker allows that (4.0 and later;
    /// 3.x has none by default), so reading dead letters without acking them never drops one.
    func deadQueueArguments(on version: BrokerVersion) -> [String: AMQPValue] {
        var arguments: [String: AMQPValue] = ["x-queue-type": .string(queueType.rawValue)]
        if queueType == .quorum, version.quorumTakesUnlimitedDeliveries { arguments["x-delivery-limit"] = .int(-1) }
        return arguments
    }

    /// The arguments a conflict about which is survivable: an older Warren declared quorum queues
    /// without them, and RabbitMQ refuses to change a queue's arguments.
    private static let safetyArguments = ["x-delivery-limit", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-dead-letter-strategy", "x-overflow"]

    /// Whether a refused declaration (RabbitMQ's text) is only about the arguments an older
    /// Warren did not give its quorum queues: the queue is then used as it is.
    static func tolerates(conflict text: String, arguments: [String: AMQPValue]) -> Bool {
        // "… received the value 'warren.dead' of type 'longstr' but current is none": absent, not
        // different (a different delivery limit is a changed setting, refused like any other).
        arguments["x-queue-type"] == .string("quorum") && text.hasSuffix("but current is none")
            && safetyArguments.contains { text.contains("'\($0)'") }
    }

    /// What to do about a refused declaration, by the argument RabbitMQ names
    /// (`inequivalent arg 'x-queue-type' for queue …`).
    static func advice(forConflict text: String) -> String {
        let argument = text.firstRange(of: "inequivalent arg '").flatMap { start in
            text[start.upperBound...].firstIndex(of: "'").map { String(text[start.upperBound..<$0]) }
        }
        let fix = "RabbitMQ cannot change an existing queue's arguments"
        switch argument {
        case "x-queue-type":
            return "configure queue.type as the existing queue's type, or delete the queue (after moving its messages) so Warren can declare it again"
        case "x-max-length":
            return "queue.max_length differs from the existing queue's (on a quorum queue Warren declares it one lower, as such a queue takes one message more); \(fix): set it back, or delete the queue (after moving its messages)"
        case "x-delivery-limit":
            return "queue.delivery_limit differs from the existing queue's; \(fix): set it back, or change the limit with a RabbitMQ policy (delivery-limit), which applies only where the queue has no argument, so delete and redeclare the queue for that"
        default:
            return "\(fix): configure Warren as it was when the queue was declared, or delete the queue (after moving its messages) so Warren can declare it again"
        }
    }

    private func declareQueue(_ raw: RawConnection, _ name: String, arguments: [String: AMQPValue]) throws(AMQPError) -> String? {
        do {
            try raw.declareQueue(name, arguments: arguments)
            return nil
        } catch let error {
            guard case let .channelClosed(code, text, _) = error, code == 406 else { throw error }
            try raw.openChannel()
            if name.hasPrefix("warren.delay.") {
                try raw.declareQueue(name, passive: true)
                guard name == Self.delaySink else { return nil }
                return """
                    queue '\(name)' exists as declared by an older Warren (\(text)); it keeps no messages: delete it so that \
                    Warren declares it again as a quorum queue (in a cluster a classic one is lost with its node and stalls every \
                    delay and retry), and starts declare the topology in one batch again
                    """
            }
            if Self.tolerates(conflict: text, arguments: arguments) {
                try raw.declareQueue(name, passive: true)
                return """
                    queue '\(name)' exists without \(arguments.keys.filter(Self.safetyArguments.contains).sorted().joined(separator: ", ")) \
                    (declared by an older Warren); it is used as it is, and RabbitMQ drops a message returned more often than its \
                    delivery limit (20 by default on 4.x) instead of dead-lettering it. Set them with a policy, or move the messages \
                    and delete the queue so Warren declares it again
                    """
            }
            // PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs.high' …
            throw .conflictingQueue(queue: name, detail: """
                \(text). Warren declares it with \(arguments.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")): \
                \(Self.advice(forConflict: text))
                """)
        }
    }
}
