#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import Warren
import WarrenIO

/// Operations on a Warren queue's broker queues, each on a short connection of its own (never on
/// a worker's consuming channel): depths, publishing a job and waiting for its result, and
/// dead-letter inspection, replay and purge that never lose a message.
///
/// The tools declare nothing: the worker (`warren serve`, or an `AMQPBroker`) owns the topology.
/// They check that the queues they use exist, and that the configured queue type and arguments
/// match the queues' (a declaration with the same arguments changes nothing; RabbitMQ names any
/// argument that differs), and say what is wrong.
public struct AMQPTools: Sendable {
    /// Tried in order until one connects.
    public let urls: [AMQPURL]
    public let topology: Topology

    public init(urls: [AMQPURL], topology: Topology) {
        precondition(!urls.isEmpty, "the tools need a broker address")
        self.urls = urls
        self.topology = topology
    }

    public init(url: AMQPURL, queue: String, queueType: QueueType = .classic) {
        self.init(urls: [url], topology: Topology(queue: queue, queueType: queueType))
    }

    // Each operation runs on a thread of its own: rabbitmq-c blocks (connecting, declaring, waiting
    // for a confirm or a reply), and the cooperative pool's few threads must not wait with it.

    /// Ready messages and consumers of the five priority queues and the dead-letter queue.
    public func depths() async throws(AMQPError) -> [QueueDepth] { try await blocking { () throws(AMQPError) in try blockingDepths() } }

    /// Publishes a job (confirmed), through the delay cascade when it is not due yet. With `wait`,
    /// asks for the result on a private reply queue and waits for it up to `wait`: nil if none came.
    /// Without `statesMaxRetries` the message carries no retry count: the worker's default for the
    /// job's name applies.
    public func submit(_ job: Job, wait: Duration? = nil, statesMaxRetries: Bool = true) async throws(AMQPError) -> JobOutcome? {
        try await blocking { () throws(AMQPError) in try blockingSubmit(job, wait: wait, statesMaxRetries: statesMaxRetries) }
    }

    /// The dead letters that match, oldest first. Every message stays in the queue: they are
    /// taken unacked and handed back when the channel closes.
    public func deadLetters(_ filter: Filter = Filter()) async throws(AMQPError) -> [DeadLetter] {
        try await blocking { () throws(AMQPError) in try blockingDeadLetters(filter) }
    }

    /// Republishes matching dead letters to their priority queue with the attempt count reset and
    /// the dead-letter headers removed; each is confirmed before its dead copy is acked (removed).
    /// Returns how many were replayed.
    public func replay(_ filter: Filter) async throws(AMQPError) -> Int { try await blocking { () throws(AMQPError) in try blockingReplay(filter) } }

    /// Removes matching dead letters. Returns how many.
    public func purge(_ filter: Filter) async throws(AMQPError) -> Int { try await blocking { () throws(AMQPError) in try blockingPurge(filter) } }

    /// Runs one of the blocking operations below on a thread of its own.
    private func blocking<T: Sendable>(_ work: @escaping @Sendable () throws(AMQPError) -> T) async throws(AMQPError) -> T {
        try await onThread(named: "warren-tools", work)
    }

    /// A connection to the first address that answers.
    private func connect() throws(AMQPError) -> RawConnection {
        var failure: AMQPError = .closed
        for url in urls {
            do {
                return try RawConnection(url: url, name: "warren tools (pid \(getpid()))")
            } catch {
                // A refused login is the same everywhere: say it at once.
                if case .accessRefused = error { throw error }
                failure = error
            }
        }
        throw failure
    }

    /// Checks that `queue` exists, then that it was declared as this configuration declares it;
    /// returns its ready messages and consumers.
    @discardableResult
    private func check(_ raw: RawConnection, _ queue: String, arguments: [String: AMQPValue]) throws(AMQPError) -> (messages: Int, consumers: Int) {
        guard try raw.queueAvailable(queue) else {
            throw .missingTopology("""
                queue '\(queue)' does not exist on vhost '\(raw.url.vhost)' (or its node is down): start `warren serve` \
                for queue '\(topology.queue)' once so it declares its queues, or check queue.name
                """)
        }
        do {
            // Declaring with the same arguments changes nothing, and answers the counts.
            return try raw.declareQueue(queue, arguments: arguments)
        } catch let error {
            guard case let .channelClosed(code, text, _) = error, code == 406 else { throw error }
            try raw.openChannel()
            if Topology.tolerates(conflict: text, arguments: arguments) { return try raw.declareQueue(queue, passive: true) }
            throw .conflictingQueue(queue: queue, detail: """
                \(text). Configure these tools as the worker is configured (the same file, WARREN_… variables or flags as \
                warren serve; queue.type \(topology.queueType.rawValue) was given)
                """)
        }
    }

    // MARK: Depths

    public struct QueueDepth: Sendable, Equatable {
        public let name: String
        /// nil for the dead-letter queue.
        public let priority: JobPriority?
        public let messages: Int
        public let consumers: Int
    }

    private func blockingDepths() throws(AMQPError) -> [QueueDepth] {
        let raw = try connect()
        defer { raw.close() }
        var depths: [QueueDepth] = []
        for priority in JobPriority.allCases {
            let counts = try check(raw, topology.brokerQueue(priority), arguments: topology.priorityQueueArguments)
            depths.append(QueueDepth(name: topology.brokerQueue(priority), priority: priority, messages: counts.messages, consumers: counts.consumers))
        }
        let dead = try check(raw, topology.deadQueue, arguments: topology.deadQueueArguments(on: raw.serverVersion))
        depths.append(QueueDepth(name: topology.deadQueue, priority: nil, messages: dead.messages, consumers: dead.consumers))
        return depths
    }

    // MARK: Submitting

    private func blockingSubmit(_ job: Job, wait: Duration?, statesMaxRetries: Bool) throws(AMQPError) -> JobOutcome? {
        let raw = try connect()
        defer { raw.close() }
        try check(raw, topology.brokerQueue(job.priority), arguments: topology.priorityQueueArguments)
        try raw.selectConfirms()
        var job = job
        var replyQueue: String?
        if wait != nil {
            let queue = try raw.declareTemporaryQueue()
            try raw.consume(queue, consumerTag: "warren-submit", noAck: true)
            job.metadata[WireFormat.replyToKey] = queue
            job.metadata[WireFormat.correlationIDKey] = job.id.rawValue
            replyQueue = queue
        }
        var (properties, body) = WireFormat.encode(job)
        if !statesMaxRetries { properties.headers[WireFormat.Header.maxRetries] = nil }
        let message = topology.message(to: job.priority, notBefore: job.notBefore, properties: properties, body: body)
        // A fast worker's reply can arrive before the confirm (the broker confirms persistent
        // messages once they are on disk): keep what arrives meanwhile.
        var early: [IncomingMessage] = []
        try publishConfirmed(raw, message, arrived: &early)
        guard let wait, replyQueue != nil else { return nil }
        let deadline = ContinuousClock.now + wait
        let wake = EventFD()
        while true {
            let next = early.isEmpty ? try raw.nextEvent(waitingUntil: deadline, wake: wake) : .delivery(early.removeFirst())
            switch next {
            case let .delivery(reply)? where reply.properties.correlationID == job.id.rawValue:
                let status = reply.properties.headers["x-warren-status"]?.stringValue
                if status == "completed" { return .completed(Data(reply.body)) }
                let code = reply.properties.headers[WireFormat.Header.deadReason]?.stringValue ?? "unknown"
                let text = (try? JSONDecoder().decode(ErrorReply.self, from: Data(reply.body)))?.error ?? code
                return .deadLettered(.rejected("\(code): \(text)"), errors: [])
            case .delivery?, .control?:
                continue
            case nil:
                return nil
            }
        }
    }

    // MARK: Dead letters

    /// A message in `<queue>.dead`, as the dead-letter headers describe it.
    public struct DeadLetter: Sendable {
        public let id: String
        public let name: String
        public let reason: String
        public let error: String
        public let attempts: Int
        public let deadAt: Date?
        public let originalRoutingKey: String
        public let priority: JobPriority
        public let body: [UInt8]
        let properties: MessageProperties

        init(_ message: IncomingMessage, queue: String) {
            let headers = message.properties.headers
            properties = message.properties
            id = message.properties.messageID ?? ""
            name = message.properties.type ?? headers[WireFormat.Header.job]?.stringValue ?? queue
            // A quorum queue dead-letters a message returned past its delivery limit itself: what
            // happened is only in RabbitMQ's headers (x-first-death-*, and x-death with the time).
            let death: [String: AMQPValue]? = if case let .array(deaths)? = headers["x-death"], case let .table(first)? = deaths.first {
                first
            } else {
                nil
            }
            let brokerReason = headers["x-last-death-reason"]?.stringValue ?? headers["x-first-death-reason"]?.stringValue
            reason = headers[WireFormat.Header.deadReason]?.stringValue ?? brokerReason ?? "unknown"
            error = headers[WireFormat.Header.deadError]?.stringValue ?? (brokerReason == "delivery_limit"
                ? "RabbitMQ dead-lettered it: it went back to its queue more often than the queue's delivery limit (its worker died or lost its connection while holding it)"
                : brokerReason.map { "RabbitMQ dead-lettered it (\($0))" } ?? "")
            attempts = Int(headers[WireFormat.Header.deadAttempts]?.intValue ?? 0)
            let brokerTime: Date? = if case let .timestamp(time)? = death?["time"] { time } else { nil }
            deadAt = headers[WireFormat.Header.deadAt].flatMap(WireFormat.date) ?? brokerTime
            let deathKey: String? = if case let .array(keys)? = death?["routing-keys"], case let .string(key)? = keys.first { key } else { nil }
            originalRoutingKey = headers[WireFormat.Header.originalRoutingKey]?.stringValue ?? deathKey ?? ""
            let named = headers[WireFormat.Header.priority]?.stringValue.flatMap { JobPriority(name: $0) }
            let keyed = originalRoutingKey.split(separator: ".").last.flatMap { JobPriority(name: String($0)) }
            let dropped = headers["x-first-death-queue"]?.stringValue?.split(separator: ".").last.flatMap { JobPriority(name: String($0)) }
            priority = named ?? keyed ?? dropped ?? .normal
            body = message.body
        }
    }

    /// Which dead letters an operation takes.
    public struct Filter: Sendable {
        public var name: String?
        public var reason: String?
        public var id: String?
        public var limit: Int

        public init(name: String? = nil, reason: String? = nil, id: String? = nil, limit: Int = .max) {
            self.name = name
            self.reason = reason
            self.id = id
            self.limit = limit
        }

        func matches(_ letter: DeadLetter) -> Bool {
            (name == nil || letter.name == name) && (reason == nil || letter.reason == reason) && (id == nil || letter.id == id)
        }
    }

    private func blockingDeadLetters(_ filter: Filter) throws(AMQPError) -> [DeadLetter] {
        var found: [DeadLetter] = []
        try walkDeadLetters { raw, message, letter throws(AMQPError) in
            guard filter.matches(letter) else { return .keep }
            found.append(letter)
            return found.count >= filter.limit ? .stop : .keep
        }
        return found
    }

    private func blockingReplay(_ filter: Filter) throws(AMQPError) -> Int {
        var replayed = 0
        try walkDeadLetters { raw, message, letter throws(AMQPError) in
            guard filter.matches(letter) else { return .keep }
            var properties = letter.properties
            properties.headers = properties.headers.filter { key, _ in
                !key.hasPrefix("x-warren-dead-") && key != WireFormat.Header.errors && key != WireFormat.Header.firstFailure
                    && key != WireFormat.Header.lastFailure && key != WireFormat.Header.originalExchange
                    && key != WireFormat.Header.originalRoutingKey && !WireFormat.brokerDeathHeaders.contains(key)
            }
            properties.headers[WireFormat.Header.attempt] = .int(1)
            properties.headers[WireFormat.Header.replayed] = .timestamp(Date())
            properties.deliveryMode = 2
            try publishConfirmed(raw, OutgoingMessage(
                exchange: Topology.exchange, routingKey: topology.routingKey(letter.priority), properties: properties,
                body: letter.body, mandatory: true))
            try raw.ack(message.deliveryTag, multiple: false)
            replayed += 1
            return replayed >= filter.limit ? .stop : .keep
        }
        return replayed
    }

    private func blockingPurge(_ filter: Filter) throws(AMQPError) -> Int {
        var purged = 0
        try walkDeadLetters { raw, message, letter throws(AMQPError) in
            guard filter.matches(letter) else { return .keep }
            try raw.ack(message.deliveryTag, multiple: false)
            purged += 1
            return purged >= filter.limit ? .stop : .keep
        }
        return purged
    }

    private enum Step { case keep, stop }

    /// Takes every message of the dead-letter queue once, unacked, and hands each to `body`; what
    /// it does not ack returns to the queue, in its place, when the connection closes. On a quorum
    /// dead queue each such look counts as a delivery: Warren declares it without a delivery limit
    /// on RabbitMQ 4 (3.x sets none), so looking never drops a dead letter.
    private func walkDeadLetters(_ body: (RawConnection, IncomingMessage, DeadLetter) throws(AMQPError) -> Step) throws(AMQPError) {
        let raw = try connect()
        defer { raw.close() }
        let queue = topology.deadQueue
        let count = try check(raw, queue, arguments: topology.deadQueueArguments(on: raw.serverVersion)).messages
        try raw.selectConfirms()
        for _ in 0..<count {
            guard let message = try raw.get(queue, autoAck: false) else { break }
            if try body(raw, message, DeadLetter(message, queue: topology.queue)) == .stop { break }
        }
    }

    /// Publishes one message and waits for its confirm (the channel must be in confirm mode, with
    /// nothing else unconfirmed).
    private func publishConfirmed(_ raw: RawConnection, _ message: OutgoingMessage) throws(AMQPError) {
        var ignored: [IncomingMessage] = []
        try publishConfirmed(raw, message, arrived: &ignored)
    }

    /// Publishes one message and waits for its confirm; deliveries that arrive meanwhile are kept in
    /// `arrived`.
    private func publishConfirmed(_ raw: RawConnection, _ message: OutgoingMessage, arrived: inout [IncomingMessage]) throws(AMQPError) {
        try raw.publish(message)
        let wake = EventFD()
        let deadline = ContinuousClock.now + .seconds(30)
        var returned: AMQPError?
        while let event = try raw.nextEvent(waitingUntil: deadline, wake: wake) {
            switch event {
            case .control(.confirmAck):
                if let returned { throw returned }
                return
            case .control(.confirmNack):
                throw .publishRefused("the broker refused the message")
            case let .control(.returned(code, text, exchange, key, _)):
                returned = .unroutable(exchange: exchange, routingKey: key, text: "\(code) \(text)")
            case .control:
                continue
            case let .delivery(delivery):
                arrived.append(delivery)
            }
        }
        throw .publishRefused("no confirm from the broker within 30 s")
    }
}

/// The body of a reply for a job that did not complete: `{"error": "…"}`.
private struct ErrorReply: Decodable {
    let error: String?
}
