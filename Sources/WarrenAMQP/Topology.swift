import Foundation
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

    public init(queue: String, queueType: QueueType = .classic, maxLength: Int? = nil) {
        self.queue = queue
        self.queueType = queueType
        self.maxLength = maxLength
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

    /// Declares this queue's topology and the shared exchanges and cascade.
    func declare(_ raw: RawConnection) throws(AMQPError) {
        try raw.declareExchange(Self.exchange, type: "direct")
        try raw.declareExchange(Self.deadExchange, type: "direct")
        try raw.declareExchange(Self.eventsExchange, type: "topic")
        try declareCascade(raw)
        for priority in JobPriority.allCases {
            let name = brokerQueue(priority)
            var arguments = queueArguments
            if let maxLength {
                arguments["x-max-length"] = .int(Int64(maxLength))
                arguments["x-overflow"] = .string("reject-publish")
            }
            try declareQueue(raw, name, arguments: arguments)
            try raw.bindQueue(name, exchange: Self.exchange, routingKey: routingKey(priority))
            try raw.bindQueue(name, exchange: Self.deliverExchange, routingKey: "#." + routingKey(priority))
        }
        try raw.bindQueue(brokerQueue(.normal), exchange: Self.exchange, routingKey: queue)
        try declareQueue(raw, deadQueue, arguments: queueArguments)
        try raw.bindQueue(deadQueue, exchange: Self.deadExchange, routingKey: deadRoutingKey)
    }

    private var queueArguments: [String: AMQPValue] {
        ["x-queue-type": .string(queueType.rawValue)]
    }

    /// The cascade is shared by every Warren queue on the vhost, whatever their type. Level queues
    /// are quorum queues with at-least-once dead-lettering, so a delayed message is not lost between
    /// levels; a cascade already declared otherwise (an older broker, an operator's choice) is used
    /// as it is.
    private func declareCascade(_ raw: RawConnection) throws(AMQPError) {
        try raw.declareExchange(Self.deliverExchange, type: "topic")
        // A message leaving the cascade for a queue that no longer exists (deleted, renamed, or a
        // routing key no Warren queue has) is unroutable, and at-least-once dead-lettering retries
        // it forever while every message behind it waits: one such message stalled every delay
        // and retry on the vhost (measured: 3,266 messages stuck behind it in warren.delay.0).
        // The sink takes a copy of everything the last hop delivers and keeps none, so every
        // message is routed and the cascade always moves; a message with no queue is dropped.
        _ = try raw.declareQueue(Self.delaySink, arguments: ["x-max-length": .int(0)])
        try raw.bindQueue(Self.delaySink, exchange: Self.deliverExchange, routingKey: "#")
        for level in 0..<Self.delayLevels {
            let name = Self.delayName(level)
            try raw.declareExchange(name, type: "topic")
            let arguments: [String: AMQPValue] = [
                "x-message-ttl": .int(Int64(1_000) << level),
                "x-dead-letter-exchange": .string(level == 0 ? Self.deliverExchange : Self.delayName(level - 1)),
                "x-queue-type": .string("quorum"),
                "x-dead-letter-strategy": .string("at-least-once"),
                "x-overflow": .string("reject-publish"),
            ]
            do {
                try raw.declareQueue(name, arguments: arguments)
            } catch let error {
                guard case let .channelClosed(code, _, _) = error, code == 406 else { throw error }
                try raw.openChannel()
                try raw.declareQueue(name, passive: true)
            }
            let prefix = Array(repeating: "*", count: Self.delayLevels - 1 - level)
            try raw.bindQueue(name, exchange: name, routingKey: (prefix + ["1", "#"]).joined(separator: "."))
            let next = level == 0 ? Self.deliverExchange : Self.delayName(level - 1)
            try raw.bindExchange(next, to: name, routingKey: (prefix + ["0", "#"]).joined(separator: "."))
        }
    }

    private func declareQueue(_ raw: RawConnection, _ name: String, arguments: [String: AMQPValue]) throws(AMQPError) {
        do {
            try raw.declareQueue(name, arguments: arguments)
        } catch let error {
            guard case let .channelClosed(code, text, _) = error, code == 406 else { throw error }
            try raw.openChannel()
            // PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs.high' …
            throw .conflictingQueue(queue: name, detail: """
                \(text). Warren declares it with \(arguments.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")); \
                either configure the same queue type as the existing queue, or delete it (after moving its messages) so Warren can declare it again
                """)
        }
    }
}
